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
    mode: Annotated[Literal["critique", "judge"] | None, typer.Option(
        show_default="critique",
        help="critique: critique each answer, then revise it (VideoSAVi v3). judge: score the candidates 1-5 and "
             "pair the best with the worst (v1).")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, show_default="0.0",
                                                      help="Sampling temperature (0: greedy).")] = None,
    unchanged_similarity: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, show_default="0.9", help="A revision this similar to the answer counts as unchanged.")] =
    None,
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
    """The policy critiques its answers and proposes preference pairs for `savi filter`.

    Writes critiques.parquet, then candidates.parquet (every pair, the unusable ones with their reason).
    Options not given come from the run's savi.toml ([critique] and [model]), then the defaults. Prints the
    critiques table's path.

    Example:

        savi critique --run kitchen --round 1 --mode critique
    """
    from stages import critique as critique_stage
    from stages.core.config import resolve

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = resolve(the_run, "critique", critique_stage.CritiqueConfig, dict(
        mode=mode, temperature=temperature, max_new_tokens=max_new_tokens,
        unchanged_similarity=unchanged_similarity))
    with the_run.lock():
        result = critique_stage.run(the_run, the_round, cfg,
                                    model_config(the_run, model=model, load_in_4bit=load_in_4bit, dtype=dtype,
                                                 device=device, batch_size=batch_size, seed=seed),
                                    prompts_dir=prompts, force=force,
                                    progress=lambda total: progress_bar(total, "critique", "answer"))
    report(result, "answers")
