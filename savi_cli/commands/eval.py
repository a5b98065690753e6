import re
from pathlib import Path
from typing import Annotated, Literal

import typer

from savi_cli.common import model_config
from savi_cli.errors import user_errors
from savi_cli.options import (
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    Load4bitOpt,
    ModelOpt,
    WorkspaceOpt,
)
from savi_cli.pipes import DEFAULT_RUN
from savi_cli.progress import progress_bar

BENCHMARK_NAMES = "egoschema, mvbench, nextqa, perceptiontest, tempcompass, longvideobench, videomme"


@user_errors
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
    mode: Annotated[Literal["likelihood", "generate"] | None, typer.Option(
        show_default="likelihood",
        help="likelihood: score each option's label (never unparsed). generate: write a reply and parse it.")] =
    None,
    frames: Annotated[int | None, typer.Option(min=1, show_default="32", help="Frames sampled per question.")] =
    None,
    max_side: Annotated[int | None, typer.Option(min=16, show_default="448",
                                                 help="Longest frame side in pixels.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    allow_missing: Annotated[bool | None, typer.Option(
        "--allow-missing/--no-allow-missing", show_default="off",
        help="Evaluate the questions whose video exists, instead of stopping at missing videos.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, show_default="16",
                                                       help="Longest reply in generate mode.")] = None,
    model: ModelOpt = None,
    load_in_4bit: Load4bitOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Evaluate a round's model on a video QA benchmark, read in its real published layout.

    Writes one row per question to round=R/eval/BENCH.parquet, the accuracy (overall and per category) to
    BENCH.summary.json, and for hidden-answer splits the leaderboard's submission file. Rerunning resumes.
    Options not given come from the run's savi.toml ([eval] and [model]). Compare rounds with `savi report`.
    Prints the table's path.

    Example:

        savi eval egoschema --data ~/data/egoschema --run kitchen --round 1
    """
    from stages import eval as eval_stage
    from stages.core.config import resolve
    from stages.core.store import existing_run, open_run

    if run is None and model is not None:
        the_run = open_run("eval-" + re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/").split("/")[-1]), workspace)
    elif model is None:
        the_run = existing_run(run or DEFAULT_RUN, workspace)
    else:
        the_run = open_run(run, workspace)
    if round is None:
        round = eval_stage.latest_trained_round(the_run)
    source = eval_stage.BenchmarkSource(benchmark, data, split, videos)
    cfg = resolve(the_run, "eval", eval_stage.EvalConfig, dict(
        mode=mode, frames=frames, max_side=max_side, limit=limit, allow_missing=allow_missing,
        max_new_tokens=max_new_tokens))
    with the_run.lock():
        outcome = eval_stage.run(the_run, round, source, cfg,
                                 model_config(the_run, model=model, load_in_4bit=load_in_4bit, dtype=dtype,
                                              device=device, batch_size=batch_size), force=force,
                                 progress=lambda total: progress_bar(total, f"eval {benchmark}", "question"))
    s = outcome.summary
    accuracy = "n/a (answers hidden)" if s["accuracy"] is None else \
        f"{100 * s['accuracy']:.1f}% ({s['correct']}/{s['questions']})"
    extras = [f"{s[k]} {k.replace('_', ' ')}" for k in ("unparsed", "video_errors", "missing_videos") if s[k]]
    typer.echo(f"{outcome.table} round {round} ({s['mode']}): accuracy {accuracy}"
               + (f"; {', '.join(extras)}" if extras else "") + f"; summary {outcome.summary_path}", err=True)
    if outcome.submission_path:
        typer.echo(f"submission file for the leaderboard: {outcome.submission_path}", err=True)
    typer.echo(str(outcome.result.path))
