from savi_cli import pipes
from savi_cli.errors import user_errors
from savi_cli.options import ForceOpt, InputArg, PromptsOpt, RoundOpt, StageRunOpt, WorkspaceOpt, with_settings
from savi_cli.output import report
from savi_cli.progress import progress_bar
from stages.core.launch import current as current_launch
from stages.core.settings import AnswerConfig, ModelConfig


@user_errors
@with_settings(AnswerConfig, ModelConfig)
def answer(input: InputArg = None, run: StageRunOpt = None, round: RoundOpt = None, prompts: PromptsOpt = None,
           force: ForceOpt = False, workspace: WorkspaceOpt = None, *, settings: dict) -> None:
    """The policy answers each question of a round, once or several times.

    One candidate (the default) gives VideoSAVi v3's initial answer; five give v1's spread of temperatures
    for `savi critique --mode judge`. Options not given come from the run's savi.toml ([answer] and [model]),
    then the defaults. Prints the answers table's path.

    Example:

        savi answer --run kitchen --round 1 --candidates 5
    """
    from stages import answer as answer_stage
    from stages.core.config import resolve, resolve_model

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = resolve(the_run, AnswerConfig, settings[AnswerConfig])
    with the_run.lock(current_launch()):
        result = answer_stage.run(the_run, the_round, cfg, resolve_model(the_run, settings[ModelConfig]),
                                  prompts_dir=prompts, force=force,
                                  progress=lambda total: progress_bar(total, "answer", "answer"))
    report(result, "answers")
