from pathlib import Path
from typing import Annotated

import typer

from savi_cli import pipes
from savi_cli.errors import user_errors
from savi_cli.options import ForceOpt, InputArg, PromptsOpt, RoundOpt, StageRunOpt, WorkspaceOpt, with_settings
from savi_cli.output import report
from savi_cli.progress import progress_bar
from stages.core.launch import current as current_launch
from stages.core.settings import AskConfig, ModelConfig


@user_errors
@with_settings(AskConfig, ModelConfig)
def ask(input: InputArg = None, run: StageRunOpt = None, round: RoundOpt = None, prompts: PromptsOpt = None,
        benchmark: Annotated[str | None, typer.Option(
            "--from", help="Take the questions, with their known answers, from this benchmark instead of asking "
                           "the policy (a probe of the judge: see savi filter).", show_default=False)] = None,
        data: Annotated[Path | None, typer.Option(help="With --from: the benchmark's folder (or annotation file).",
                                                  show_default=False)] = None,
        split: Annotated[str | None, typer.Option(help="With --from: the benchmark's split. [default: its usual "
                                                       "one]", show_default=False)] = None,
        force: ForceOpt = False, workspace: WorkspaceOpt = None, *, settings: dict) -> None:
    """The policy writes questions about each sampled video.

    Round r's policy is the base model plus round r-1's adapter. Options not given come from the run's
    savi.toml ([ask] and [model]), then the defaults. Prints the questions table's path.

    With --from, the questions come from a benchmark with answers instead, for every video of it the run
    sampled, each with its right answer: `savi filter` then reports how often its judge agrees with the truth.

    Example:

        savi ask --run kitchen --round 1 --model Qwen/Qwen2.5-VL-7B-Instruct --load-in-4bit

        savi ask --run probe --round 1 --from world --data world --split pool
    """
    from stages import ask as ask_stage
    from stages.core.config import resolve, resolve_model

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    if benchmark is not None or data is not None:
        from stages.benchmarks import read_benchmark
        from stages.core.errors import SaviError

        if benchmark is None or data is None:
            raise SaviError("--from and --data go together: `savi ask --from BENCHMARK --data PATH`")
        bench = read_benchmark(benchmark, data, split)
        if not current_launch().is_main:  # no model here: the main process of a launch does it alone
            return
        with the_run.lock():
            result = ask_stage.from_benchmark(the_run, the_round, bench, force=force)
        report(result, "videos")
        return
    cfg = resolve(the_run, AskConfig, settings[AskConfig])
    with the_run.lock(current_launch()):
        result = ask_stage.run(the_run, the_round, cfg, resolve_model(the_run, settings[ModelConfig]),
                               prompts_dir=prompts, force=force,
                               progress=lambda total: progress_bar(total, "ask", "video"))
    report(result, "videos")
