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
def answer(
    input: InputArg = None,
    run: StageRunOpt = None,
    round: RoundOpt = None,
    candidates: Annotated[int, typer.Option(min=1, help="Answers per question.")] = 1,
    temperatures: Annotated[str, typer.Option(help="Candidate k is sampled at the k-th of these (cycling).")] =
    "0.3,0.5,0.7,0.9,1.0",
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
    """The policy answers each question of a round, once or several times.

    One candidate (the default) gives VideoSAVi v3's initial answer; five give v1's spread of temperatures
    for `savi critique --mode judge`. Prints the answers table's path.

    Example:

        savi answer --run kitchen --round 1 --candidates 5
    """
    from stages import answer as answer_stage
    from stages.core.errors import SaviError

    try:
        temps = tuple(float(t) for t in split_list(temperatures))
    except ValueError:
        raise SaviError(f"--temperatures {temperatures!r} is not a comma-separated list of numbers") from None
    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = answer_stage.AnswerConfig(candidates=candidates, temperatures=temps, max_new_tokens=max_new_tokens)
    with the_run.lock():
        result = answer_stage.run(the_run, the_round, cfg,
                                  model_config(model, load_in_4bit, dtype, device, batch_size, seed),
                                  prompts_dir=prompts, force=force,
                                  progress=lambda total: progress_bar(total, "answer", "answer"))
    report(result, "answers")
