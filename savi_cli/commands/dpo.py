from savi_cli import pipes
from savi_cli.errors import user_errors
from savi_cli.options import CLIP_SCORING, ForceOpt, InputArg, RoundOpt, StageRunOpt, WorkspaceOpt, with_settings
from savi_cli.output import report
from savi_cli.progress import progress_bar
from stages.core.launch import current as current_launch
from stages.core.settings import ClipConfig, ModelConfig, TrainConfig


@user_errors
# Training has its own 4-bit switch (--4bit) and batch size (pairs, not prompts).
# Of CLIP, which finds keyframes for the perceptive level when the round has none, the model and weights.
@with_settings(TrainConfig, ModelConfig, ClipConfig,
               skip=("ModelConfig.load_in_4bit", "ModelConfig.batch_size", *CLIP_SCORING))
def dpo(input: InputArg = None, run: StageRunOpt = None, round: RoundOpt = None, force: ForceOpt = False,
        workspace: WorkspaceOpt = None, *, settings: dict) -> None:
    """Train round R's policy on the kept pairs: 4-bit QLoRA DPO with a video collator.

    Round 1 trains a LoRA adapter on the base model (--tune full trains the language model's layers and the
    projector whole instead, for small models, with --no-4bit). Round R continues round R-1's adapter, with it as
    the reference. The adapter goes to round=R/adapter/, and the per-step log to train_log.parquet. After a crash,
    rerunning resumes from the last checkpoint. Settings not given as flags come from the [dpo] section of
    the run's savi.toml (for example lr = 1e-5), then from the defaults. Prints the adapter's path.

    --levels 1,0.5,0.5 adds VistaDPO's temporal term (the chosen reply under the true video over a reversed one)
    and perceptive term (over the question's keyframes masked: keyframes.parquet, else CLIP's), with their
    margins in the log.

    Example:

        savi dpo --run kitchen --round 1 --loss clip-weighted --lr 5e-6
    """
    from stages import dpo as dpo_stage
    from stages.core.config import resolve, resolve_model

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = resolve(the_run, TrainConfig, settings[TrainConfig])
    with the_run.lock(current_launch()):
        result = dpo_stage.run(the_run, the_round, cfg, resolve_model(the_run, settings[ModelConfig]),
                               resolve(the_run, ClipConfig, settings[ClipConfig]), force=force,
                               progress=lambda total: progress_bar(total, "dpo", "step"))
    report(result, "pairs")
