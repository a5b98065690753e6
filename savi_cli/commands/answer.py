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
    candidates: Annotated[int | None, typer.Option(min=1, show_default="1", help="Answers per question.")] = None,
    temperatures: Annotated[str | None, typer.Option(show_default="0.3,0.5,0.7,0.9,1.0", help="Candidate k is "
                                                     "sampled at the k-th of these (cycling).")] = None,
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
    """The policy answers each question of a round, once or several times.

    One candidate (the default) gives VideoSAVi v3's initial answer; five give v1's spread of temperatures
    for `savi critique --mode judge`. Options not given come from the run's savi.toml ([answer] and [model]),
    then the defaults. Prints the answers table's path.

    Example:

        savi answer --run kitchen --round 1 --candidates 5
    """
    from stages import answer as answer_stage
    from stages.core.config import resolve
    from stages.core.errors import SaviError

    temps = None
    if temperatures is not None:
        try:
            temps = tuple(float(t) for t in split_list(temperatures))
        except ValueError:
            raise SaviError(f"--temperatures {temperatures!r} is not a comma-separated list of numbers") from None
    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = resolve(the_run, "answer", answer_stage.AnswerConfig,
                  dict(candidates=candidates, temperatures=temps, max_new_tokens=max_new_tokens))
    with the_run.lock():
        result = answer_stage.run(the_run, the_round, cfg,
                                  model_config(the_run, model=model, load_in_4bit=load_in_4bit, dtype=dtype,
                                               device=device, batch_size=batch_size, seed=seed),
                                  prompts_dir=prompts, force=force,
                                  progress=lambda total: progress_bar(total, "answer", "answer"))
    report(result, "answers")
