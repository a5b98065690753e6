from typing import Annotated, Literal

import typer

from savi_cli import pipes
from savi_cli.common import model_config, report
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
def critique(
    input: InputArg = None,
    run: StageRunOpt = None,
    round: RoundOpt = None,
    mode: Annotated[Literal["critique", "judge"], typer.Option(
        help="critique: critique each answer, then revise it (VideoSAVi v3). judge: score the candidates 1-5 and "
             "pair the best with the worst (v1).")] = "critique",
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature (0: greedy).")] = 0.0,
    unchanged_similarity: Annotated[float, typer.Option(min=0.0, max=1.0, help="A revision this similar to the "
                                                                               "answer counts as unchanged.")] = 0.9,
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
    """The policy critiques its answers and proposes preference pairs for `savi filter`.

    Writes critiques.parquet, then candidates.parquet (every pair, the unusable ones with their reason).
    Prints the critiques table's path.

    Example:

        savi critique --run kitchen --round 1 --mode critique
    """
    from stages import critique as critique_stage

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = critique_stage.CritiqueConfig(mode=mode, temperature=temperature, max_new_tokens=max_new_tokens,
                                        unchanged_similarity=unchanged_similarity)
    with the_run.lock():
        result = critique_stage.run(the_run, the_round, cfg,
                                    model_config(model, load_in_4bit, dtype, device, batch_size, seed),
                                    prompts_dir=prompts, force=force,
                                    progress=lambda total: progress_bar(total, "critique", "answer"))
    report(result, "answers")
