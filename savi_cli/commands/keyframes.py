from savi_cli import pipes
from savi_cli.errors import user_errors
from savi_cli.options import (
    CLIP_SCORING,
    ForceOpt,
    InputArg,
    PromptsOpt,
    RoundOpt,
    StageRunOpt,
    WorkspaceOpt,
    with_settings,
)
from savi_cli.output import report
from savi_cli.progress import progress_bar
from stages.core.launch import current as current_launch
from stages.core.settings import ClipConfig, KeyframesConfig, ModelConfig


@user_errors
@with_settings(KeyframesConfig, ModelConfig, ClipConfig, skip=CLIP_SCORING)  # CLIP's model and weights only
def keyframes(input: InputArg = None, run: StageRunOpt = None, round: RoundOpt = None, prompts: PromptsOpt = None,
              force: ForceOpt = False, workspace: WorkspaceOpt = None, *, settings: dict) -> None:
    """Find each question's keyframes (SeViLA's localizer): score every sampled frame, keep the top k in time order.

    --localizer policy asks the policy of each frame whether it holds what the question needs and scores P(yes);
    --localizer clip takes the cosine between the question and each frame's cached CLIP embedding. `savi answer
    --keyframes` then answers from the chosen frames. Options not given come from the run's savi.toml
    ([keyframes], [model] and [clip]), then the defaults. Prints the keyframes table's path.

    Example:

        savi keyframes --run kitchen --round 1 --localizer clip --top-k 4
    """
    from stages import keyframes as keyframes_stage
    from stages.core.config import resolve, resolve_model

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = resolve(the_run, KeyframesConfig, settings[KeyframesConfig])
    clip_cfg = resolve(the_run, ClipConfig, settings[ClipConfig])
    with the_run.lock(current_launch()):
        result = keyframes_stage.run(the_run, the_round, cfg, resolve_model(the_run, settings[ModelConfig]),
                                     clip_cfg, prompts_dir=prompts, force=force,
                                     progress=lambda total: progress_bar(total, "keyframes", "question"))
    report(result, "keyframes")
