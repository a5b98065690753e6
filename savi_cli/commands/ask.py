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
    per_video: Annotated[int, typer.Option(min=1, help="Questions per video, split across the kinds.")] = 6,
    kinds: Annotated[str, typer.Option(help="Question kinds: spatial,temporal (VideoSAVi v3) or what,why,how "
                                            "(v1).")] = "spatial,temporal",
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature (0: greedy).")] = 0.7,
    max_new_tokens: MaxNewTokensOpt = 256,
    model: ModelOpt = None,
    load_in_4bit: Load4bitOpt = False,
    batch_size: BatchSizeOpt = 4,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    prompts: PromptsOpt = None,
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """The policy writes questions about each sampled video.

    Round r's policy is the base model plus round r-1's adapter. Prints the questions table's path.

    Example:

        savi ask --run kitchen --round 1 --model Qwen/Qwen2.5-VL-7B-Instruct --load-in-4bit
    """
    from stages import ask as ask_stage

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = ask_stage.AskConfig(per_video=per_video, kinds=tuple(split_list(kinds)), temperature=temperature,
                              max_new_tokens=max_new_tokens)
    with the_run.lock():
        result = ask_stage.run(the_run, the_round, cfg,
                               model_config(model, load_in_4bit, dtype, device, batch_size, seed),
                               prompts_dir=prompts, force=force,
                               progress=lambda total: progress_bar(total, "ask", "video"))
    report(result, "videos")
