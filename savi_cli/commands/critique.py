from savi_cli import pipes
from savi_cli.errors import user_errors
from savi_cli.options import ForceOpt, InputArg, PromptsOpt, RoundOpt, StageRunOpt, WorkspaceOpt, with_settings
from savi_cli.output import report
from savi_cli.progress import progress_bar
from stages.core.launch import current as current_launch
from stages.core.settings import CritiqueConfig, ModelConfig


@user_errors
@with_settings(CritiqueConfig, ModelConfig)
def critique(input: InputArg = None, run: StageRunOpt = None, round: RoundOpt = None, prompts: PromptsOpt = None,
             force: ForceOpt = False, workspace: WorkspaceOpt = None, *, settings: dict) -> None:
    """The policy critiques its answers and proposes preference pairs for `savi filter`.

    Writes critiques.parquet, then candidates.parquet (every pair, the unusable ones with their reason).
    Options not given come from the run's savi.toml ([critique] and [model]), then the defaults. Prints the
    critiques table's path.

    Example:

        savi critique --run kitchen --round 1 --mode critique
    """
    from stages import critique as critique_stage
    from stages.core.config import resolve, resolve_model

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = resolve(the_run, CritiqueConfig, settings[CritiqueConfig])
    with the_run.lock(current_launch()):
        result = critique_stage.run(the_run, the_round, cfg, resolve_model(the_run, settings[ModelConfig]),
                                    prompts_dir=prompts, force=force,
                                    progress=lambda total: progress_bar(total, "critique", "answer"))
    report(result, "answers")
