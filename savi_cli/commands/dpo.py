from typing import Annotated, Literal

import typer

from savi_cli import pipes
from savi_cli.common import model_config, report
from savi_cli.errors import user_errors
from savi_cli.options import (
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    InputArg,
    ModelOpt,
    RoundOpt,
    SeedOpt,
    StageRunOpt,
    WorkspaceOpt,
)
from savi_cli.progress import progress_bar


@user_errors
def dpo(
    input: InputArg = None,
    run: StageRunOpt = None,
    round: RoundOpt = None,
    loss: Annotated[Literal["sigmoid", "clip-weighted"] | None, typer.Option(
        show_default="sigmoid",
        help="sigmoid: standard DPO. clip-weighted: -log σ(β·Δ - γ·(clip_chosen - clip_rejected)).")] = None,
    beta: Annotated[float | None, typer.Option(min=0.0, show_default="0.1", help="DPO β.")] = None,
    clip_gamma: Annotated[float | None, typer.Option(min=0.0, show_default="10", help="γ of clip-weighted.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", min=0.0, show_default="5e-6",
                                                        help="Learning rate.")] = None,
    epochs: Annotated[float | None, typer.Option(min=0.0, show_default="1", help="Passes over the pairs.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", min=1, show_default="1",
                                                   help="Pairs per device step.")] = None,
    grad_accum: Annotated[int | None, typer.Option(min=1, show_default="8",
                                                   help="Steps accumulated per optimizer step.")] = None,
    lora_r: Annotated[int | None, typer.Option(min=1, show_default="16",
                                               help="LoRA rank (round 1; later rounds continue its adapter).")] = None,
    lora_alpha: Annotated[int | None, typer.Option(min=1, show_default="32", help="LoRA alpha.")] = None,
    max_steps: Annotated[int | None, typer.Option(show_default="-1",
                                                  help="Stop after this many optimizer steps (-1: --epochs).")] = None,
    save_steps: Annotated[int | None, typer.Option(min=1, show_default="50",
                                                   help="Checkpoint every this many steps.")] = None,
    four_bit: Annotated[bool | None, typer.Option("--4bit/--no-4bit", show_default="--4bit",
                                                  help="QLoRA on a 4-bit NF4 base, or plain LoRA.")] = None,
    model: ModelOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Train round R's policy on the kept pairs: 4-bit QLoRA DPO with a video collator.

    Round 1 trains a LoRA adapter on the base model. Round R continues round R-1's adapter, with it as the
    reference. The adapter goes to round=R/adapter/, and the per-step log to train_log.parquet. After a crash,
    rerunning resumes from the last checkpoint. Settings not given as flags come from the [dpo] section of
    the run's savi.toml (for example lr = 1e-5), then from the defaults. Prints the adapter's path.

    Example:

        savi dpo --run kitchen --round 1 --loss clip-weighted --lr 5e-6
    """
    from stages import dpo as dpo_stage

    the_run, the_round = pipes.resolve(input, run, round, workspace)
    cfg = dpo_stage.resolve_config(the_run, dict(
        beta=beta, loss=loss, clip_gamma=clip_gamma, learning_rate=learning_rate, epochs=epochs,
        batch_size=batch_size, grad_accum=grad_accum, lora_r=lora_r, lora_alpha=lora_alpha, max_steps=max_steps,
        save_steps=save_steps, four_bit=four_bit))
    with the_run.lock():
        result = dpo_stage.run(the_run, the_round, cfg,
                               model_config(the_run, model=model, dtype=dtype, device=device, seed=seed),
                               force=force,
                               progress=lambda total: progress_bar(total, "dpo", "step"))
    report(result, "pairs")
