from savi_cli import pipes
from savi_cli.errors import user_errors
from savi_cli.options import ForceOpt, InputArg, PromptsOpt, RoundOpt, StageRunOpt, WorkspaceOpt, with_settings
from savi_cli.output import report
from savi_cli.progress import progress_bar
from stages.core.settings import AskConfig, ModelConfig


@user_errors
@with_settings(AskConfig, ModelConfig)
def ask(input: InputArg = None, run: StageRunOpt = None, round: RoundOpt = None, prompts: PromptsOpt = None,
        force: ForceOpt = False, workspace: WorkspaceOpt = None, *, settings: dict) -> None:
    """The policy writes questions about each sampled video.

    Round r's policy is the base model plus round r-1's adapter. Options not given come from the run's
    savi.toml ([ask] and [model]), then the defaults. Prints the questions table's path.

    Example:

        savi ask --run kitchen --round 1 --model Qwen/Qwen2.5-VL-7B-Instruct --load-in-4bit
    """
    from stages import ask as ask_stage
    from stages.core.config import resolve, resolve_model

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = resolve(the_run, AskConfig, settings[AskConfig])
    with the_run.lock():
        result = ask_stage.run(the_run, the_round, cfg, resolve_model(the_run, settings[ModelConfig]),
                               prompts_dir=prompts, force=force,
                               progress=lambda total: progress_bar(total, "ask", "video"))
    report(result, "videos")
