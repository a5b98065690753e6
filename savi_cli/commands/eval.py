from pathlib import Path
from typing import Annotated

import typer

from savi_cli.errors import user_errors
from savi_cli.options import CLIP_SCORING, ForceOpt, WorkspaceOpt, with_settings
from savi_cli.progress import progress_bar
from stages.core.launch import current as current_launch
from stages.core.settings import ClipConfig, EvalConfig, ModelConfig

BENCHMARK_NAMES = "egoschema, mvbench, nextqa, perceptiontest, tempcompass, longvideobench, videomme, world"


@user_errors
# Greedy: nothing is sampled (no --seed). Of CLIP, which only --localizer clip uses, the model and weights: its
# scoring settings are `savi filter`'s, and its device follows savi.toml (--device is the policy's).
@with_settings(EvalConfig, ModelConfig, ClipConfig, skip=("ModelConfig.seed", *CLIP_SCORING))
def eval_command(
    benchmark: Annotated[str, typer.Argument(help=f"Benchmark: {BENCHMARK_NAMES}.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", "-d", help="The benchmark as downloaded: its folder (or "
                                                            "annotation file).", show_default=False)],
    run: Annotated[str | None, typer.Option("--run", "-r", help="Run whose model to evaluate. [default: "
                                                                "eval-<model> with --model, else default]")] = None,
    round: Annotated[int | None, typer.Option("--round", min=0, help="0: the base model; R: the model trained in "
                                                                     "round R. [default: latest trained]")] = None,
    split: Annotated[str | None, typer.Option(help="Split or task (egoschema: subset|full; nextqa: val|test; "
                                                   "tempcompass: multi-choice|yes_no|caption_matching; ...). "
                                                   "[default: the benchmark's usual one]")] = None,
    videos: Annotated[Path | None, typer.Option(help="Folder of the videos, if not where the benchmark's layout "
                                                     "puts them under --data.")] = None,
    rescore: Annotated[bool, typer.Option("--rescore", help="Read the stored replies of the finished eval again "
                                                           "with the current extractors and parser, without "
                                                           "loading the model.")] = False,
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
    *,
    settings: dict,
) -> None:
    """Evaluate a round's model on a video QA benchmark, read in its real published layout.

    Writes one row per question to round=R/eval/BENCH.parquet, the accuracy (overall and per category) to
    BENCH.summary.json, and for hidden-answer splits the leaderboard's submission file. Rerunning resumes.
    Options not given come from the run's savi.toml ([eval], [model], and [clip] for --localizer clip). Compare
    rounds with `savi report`. Prints the table's path (with --perturb, the true order's and the perturbed one's).

    --protocol lmms-eval (the default) generates replies and reads them as lmms-eval 0.7.3 does, so the accuracy
    can stand beside published figures; the strict accuracy of the same replies is printed beside it.

    --keyframes 4 answers each question from its 4 most relevant frames (SeViLA), found by --localizer policy
    or clip, into BENCH@keyframes4-policy.

    --perturb reverse (or shuffle, drop) evaluates the true order and then the frames perturbed in time, into
    BENCH@reverse, and prints the change: a model that ignores time loses nothing.

    Example:

        savi eval egoschema --data ~/data/egoschema --run kitchen --round 1
    """
    from stages import eval as eval_stage
    from stages.core.config import resolve, resolve_model
    from stages.report import true_order_change

    the_run = eval_stage.run_to_evaluate(run, settings[ModelConfig]["id"], workspace)
    if round is None:
        round = eval_stage.latest_trained_round(the_run)
    source = eval_stage.BenchmarkSource(benchmark, data, split, videos)
    cfg = resolve(the_run, EvalConfig, settings[EvalConfig])
    launch = current_launch()
    with the_run.lock(launch):
        if rescore:
            if not launch.is_main:  # no model: the main process of a launch rescores alone
                return
            outcomes = [eval_stage.rescore(the_run, round, source, cfg)]
        else:
            outcomes = eval_stage.evaluate(the_run, round, source, cfg,
                                           resolve_model(the_run, settings[ModelConfig]),
                                           resolve(the_run, ClipConfig, settings[ClipConfig]), force=force,
                                           progress=lambda total: progress_bar(total, f"eval {benchmark}",
                                                                               "question"))
    if not launch.is_main:  # its share is written; the main process reports the whole
        return
    for outcome in outcomes:
        drop = true_order_change(the_run, outcome.table, round)
        versus = f"; vs the true order {drop}" if drop else ""
        typer.echo(f"{outcome.table} round {round}: {eval_stage.summary_line(outcome.summary)}{versus}; summary "
                   f"{outcome.summary_path}", err=True)
        if outcome.submission_path:
            typer.echo(f"submission file for the leaderboard: {outcome.submission_path}", err=True)
        typer.echo(str(outcome.result.path))
