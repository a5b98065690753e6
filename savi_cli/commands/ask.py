from typing import Annotated

import typer

from savi_cli import pipes
from savi_cli.common import model_config, report, split_list
from savi_cli.errors import user_errors
from savi_cli.options import (
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    InputArg,
    Load4bitOpt,
    MaxNewTokensOpt,
    ModelOpt,
    PromptsOpt,
    RoundOpt,
    SeedOpt,
    StageRunOpt,
    WorkspaceOpt,
)
from savi_cli.progress import progress_bar


@user_errors
def ask(
    input: InputArg = None,
    run: StageRunOpt = None,
    round: RoundOpt = None,
    per_video: Annotated[int | None, typer.Option(min=1, show_default="6",
                                                  help="Questions per video, split across the kinds.")] = None,
    kinds: Annotated[str | None, typer.Option(show_default="spatial,temporal",
                                              help="Question kinds: spatial,temporal (VideoSAVi v3) or what,why,how "
                                                   "(v1).")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, show_default="0.7",
                                                      help="Sampling temperature (0: greedy).")] = None,
    max_new_tokens: MaxNewTokensOpt = None,
    model: ModelOpt = None,
    load_in_4bit: Load4bitOpt = None,
    batch_size: BatchSizeOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    prompts: PromptsOpt = None,
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """The policy writes questions about each sampled video.

    Round r's policy is the base model plus round r-1's adapter. Options not given come from the run's
    savi.toml ([ask] and [model]), then the defaults. Prints the questions table's path.

    Example:

        savi ask --run kitchen --round 1 --model Qwen/Qwen2.5-VL-7B-Instruct --load-in-4bit
    """
    from stages import ask as ask_stage
    from stages.core.config import resolve

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = resolve(the_run, "ask", ask_stage.AskConfig, dict(
        per_video=per_video, kinds=split_list(kinds) if kinds else None, temperature=temperature,
        max_new_tokens=max_new_tokens))
    with the_run.lock():
        result = ask_stage.run(the_run, the_round, cfg,
                               model_config(the_run, model=model, load_in_4bit=load_in_4bit, dtype=dtype,
                                            device=device, batch_size=batch_size, seed=seed),
                               prompts_dir=prompts, force=force,
                               progress=lambda total: progress_bar(total, "ask", "video"))
    report(result, "videos")
