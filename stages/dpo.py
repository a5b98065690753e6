"""Stage `dpo`: train round r's policy on the kept pairs with 4-bit DPO (QLoRA) and a video collator.

The setup:
- The base model is loaded in 4-bit NF4 (bitsandbytes); `--no-4bit` loads it in full precision instead.
- LoRA (peft) goes on the language model's linear layers only, so the vision tower stays frozen.
  `--tune full` trains every weight of the language model's layers and of the projector instead (peft's
  `modules_to_save`: the adapter then holds full copies of them), for models small enough to afford it.
- trl's stock DPOTrainer runs with savi's video collator (trl's own collator handles images only).
- Gradient checkpointing is on, with paged 8-bit AdamW on CUDA (plain AdamW on CPU, where paged memory does not
  exist).

One adapter per run, continued round after round. Round 1 trains a new LoRA adapter against the base model
(adapters disabled). Round r > 1 loads round r-1's adapter as the trainable one, and trl keeps a frozen copy of
it as the reference. So the reference is always the starting policy M(r-1), and only one copy of the base weights
is ever in memory. The adapter saved in `round=<r>/adapter/` is the whole of M(r).

Losses:
- `sigmoid` is standard DPO: L = -log σ(β·Δ), where Δ = [log π(y_w) - log π_ref(y_w)] - [log π(y_l) - log π_ref(y_l)].
- `clip-weighted` is a CLIP-adjusted DPO that adds a grounding margin:
      L = -log σ(β·Δ - γ·(s_w - s_l))
  where s_w and s_l are the CLIP scores of the chosen and rejected texts (after the filter's swap, s_w >= s_l
  up to the swap margin). A pair whose chosen answer is much better grounded than its rejected one must be won
  by a wider reward margin before its loss vanishes. γ = 0 gives back standard DPO.

A crash resumes from the last checkpoint (`round=<r>/.checkpoints/`). The training log (loss, reward accuracy and
margins per step) is a table, `round=<r>/train_log.parquet`, that `savi query` sees.

This module imports trl and transformers at the top: it is the training script, imported only to train.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, SchedulerType, TrainerCallback, TrainerState
from trl import DPOTrainer

from stages.core.errors import SaviError
from stages.core.model import (
    adapter_fingerprint,
    adapter_for_round,
    load_adapter,
    load_model,
    load_video,
    preference_row,
    reply_batch,
    resolve_device,
    resolve_dtype,
)
from stages.core.records import Pair, Sample, TrainStep
from stages.core.settings import LOSSES, TUNES, ModelConfig, TrainConfig
from stages.core.store import ArtifactWriter, Progress, Run, StageResult, atomic_dir, file_sha256

log = logging.getLogger("savi")

# The frozen vision tower of each family (Qwen's includes its merger; LLaVA's projector is frozen too).
VISION_TOWERS = ("model.visual", "model.vision_tower")
# The language model's projections; the vision tower and the output head are left alone (trl refuses lm_head).
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# What `--tune full` trains whole: the decoder layers and final norm of the language model, and the projector from
# the vision encoder to it (inside Qwen's vision tower, beside it in LLaVA). The encoder stays frozen.
FULL_TUNE_PARTS = (r"model\.language_model\.layers\.\d+", r"model\.language_model\.norm", r"model\.visual\.merger",
                   r"model\.visual\.deepstack_merger_list\.\d+", r"model\.multi_modal_projector")
# peft trains the modules above as `modules_to_save`, which it allows only beside a LoRA somewhere else. A LoRA on the
# input embeddings is that host, frozen at its initial zero (`freeze_the_host_lora`), so it changes nothing.
FULL_TUNE_LORA = r".*language_model\.embed_tokens"


def run(run: Run, round: int, cfg: TrainConfig, model_cfg: ModelConfig, *, force: bool = False,
        progress: Progress | None = None) -> StageResult:
    if cfg.loss not in LOSSES:
        raise SaviError(f"unknown --loss {cfg.loss!r}: use {', '.join(LOSSES)}")
    if cfg.tune not in TUNES:
        raise SaviError(f"unknown --tune {cfg.tune!r}: use {', '.join(TUNES)}")
    if cfg.tune == "full" and cfg.four_bit:
        raise SaviError("--tune full trains the language model's own weights, which 4-bit NF4 cannot hold: add "
                        "--no-4bit (or use --tune lora)")
    schedulers = [s.value for s in SchedulerType]
    if cfg.lr_scheduler not in schedulers:
        raise SaviError(f"unknown lr_scheduler {cfg.lr_scheduler!r} in [dpo]; use one of {', '.join(schedulers)}")
    pairs_art = run.require("pairs", round)
    pairs = [p for p in pairs_art.read() if p.kept]
    if not pairs:
        raise SaviError(f"round {round} of run '{run.name}' kept no pairs to train on (see `savi query \"select "
                        f"drop_reason, count(*) from pairs where round = {round} group by 1\"`)")
    previous = adapter_for_round(run, round)
    model_cfg = replace(model_cfg, load_in_4bit=cfg.four_bit)

    round_dir = run.round_dir(round)
    adapter_dir, checkpoints = round_dir / "adapter", round_dir / ".checkpoints"
    params = {**asdict(cfg), "model": model_cfg.id, "seed": model_cfg.seed,
              "starts_from": adapter_fingerprint(previous)}
    inputs = {"pairs": file_sha256(pairs_art.path)}
    log_art = run.artifact("train_log", round)
    if force:  # the checkpoints of an earlier training; its finished adapter stays until the new one is saved
        shutil.rmtree(checkpoints, ignore_errors=True)
    writer = ArtifactWriter(log_art, params=params, inputs=inputs, force=force)
    if writer.up_to_date and (adapter_dir / "adapter_config.json").is_file():
        return StageResult(adapter_dir, 0, 0, True, log_art.manifest()["counts"])

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # checkpointing renames
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    trainer = build_trainer(run, samples, pairs, cfg, model_cfg, previous, checkpoints, writer, progress)
    last = _last_checkpoint(checkpoints)
    try:
        if last and _finished(last):
            _restore_finished(trainer, last)
        else:
            trainer.train(resume_from_checkpoint=str(last) if last else None)
    finally:
        writer.close()
    final = trainer.evaluate(eval_dataset=trainer.train_dataset, metric_key_prefix="final")
    _save_adapter(trainer.model, adapter_dir)

    steps = writer.records()
    counts = {"pairs": len(pairs), "steps": max((s.step for s in steps), default=0),
              "final_reward_accuracy": _metric(final, "rewards/accuracies"),
              "final_reward_margin": _metric(final, "rewards/margins"),
              "final_loss": _metric(final, "loss")}
    writer.finish(counts=counts, notes={"adapter": str(adapter_dir), "resumed_from_checkpoint": str(last or "")})
    shutil.rmtree(checkpoints, ignore_errors=True)
    return StageResult(adapter_dir, len(pairs), len(steps), False, counts)


def build_trainer(run: Run, samples: dict[str, Sample], pairs: list[Pair], cfg: TrainConfig,
                  model_cfg: ModelConfig, previous: Path | None, output_dir: Path, writer: ArtifactWriter | None,
                  progress: Progress | None = None):
    """The DPOTrainer for these pairs, ready to `train()`. Separate from `run` so tests can inspect it."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig

    device = resolve_device(model_cfg.device)
    on_gpu = device.startswith("cuda")
    model, processor = load_model(model_cfg, training=True, run=run)

    peft_config = None
    if previous is None:
        full = cfg.tune == "full"
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=FULL_TUNE_LORA if full else LORA_TARGETS,
                                 modules_to_save=full_tune_modules(model) if full else None, task_type="CAUSAL_LM")
    else:
        # The trainable adapter starts as M(r-1); trl copies it into a frozen "ref" adapter for the reference.
        model = load_adapter(model, previous, trainable=True)

    with_gap = cfg.loss == "clip-weighted"
    dataset = Dataset.from_list([_training_row(p, with_gap) for p in pairs])
    args = DPOConfig(
        output_dir=str(output_dir),
        beta=cfg.beta,
        # rpo: trl's sigmoid loss plus its "sft" loss, the NLL of the chosen reply, which keeps DPO from lowering
        # the likelihood of every reply at once (iterative RPO's remedy).
        loss_type=["sigmoid", "sft"] if cfg.loss == "rpo" else ["sigmoid"],
        loss_weights=[1.0, cfg.rpo_alpha] if cfg.loss == "rpo" else None,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        gradient_checkpointing=cfg.gradient_checkpointing,
        optim="paged_adamw_8bit" if on_gpu else "adamw_torch",
        bf16=on_gpu and resolve_dtype(model_cfg.dtype, device) == torch.bfloat16,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        remove_unused_columns=False,  # the collator needs video_id (and clip_gap)
        max_length=None,  # truncating would cut video tokens out of the prompt
        report_to=[],
        seed=model_cfg.seed,
        disable_tqdm=True,
        use_cpu=not on_gpu,
        # trl would set every dropout to 0, LoRA's too; `keep_dropout_on_the_trained_adapter` decides instead.
        disable_dropout=False,
    )
    callbacks = [TrainLogCallback(writer, progress)] if writer is not None else []
    trainer = VideoDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                              peft_config=peft_config, data_collator=VideoPreferenceCollator(processor, run, samples),
                              callbacks=callbacks, clip_gamma=cfg.clip_gamma if with_gap else 0.0)
    trainer.remove_callback(PrinterCallback)  # it prints metric dicts to stdout, which carries only the path
    if cfg.tune == "full":
        freeze_the_host_lora(trainer.model)
    keep_the_vision_tower_out_of_autograd(trainer.model)
    train_lora_in_float32(trainer.model)
    keep_dropout_on_the_trained_adapter(trainer.model, cfg.lora_dropout)
    return trainer


def full_tune_modules(model: Any) -> list[str]:
    """The full names of the modules `--tune full` trains whole (`FULL_TUNE_PARTS`), as peft matches them."""
    import re

    names = [name for name, _ in model.named_modules()
             if any(re.fullmatch(part, name) for part in FULL_TUNE_PARTS)]
    if not any(".layers." in name for name in names):
        raise SaviError(f"--tune full does not know where the language model's layers are in a "
                        f"{type(model).__name__}; use --tune lora")
    return names


def freeze_the_host_lora(model: Any) -> None:
    """Freeze the LoRA on the input embeddings that a full tune needs as a host (`FULL_TUNE_LORA`). Its B starts at
    zero, so frozen it adds nothing; and trl, copying the adapter into its reference, misses the embedding LoRA's
    weights (their names end in ".default", not ".default."), so a trained one would make the reference differ."""
    for name, param in model.named_parameters():
        if "lora_embedding_" in name:
            param.requires_grad = False


def keep_the_vision_tower_out_of_autograd(model: Any) -> None:
    """Run the frozen vision tower without autograd.

    With gradient checkpointing on a PEFT model, trl calls `enable_input_require_grads()`, and transformers 5 hooks
    the input embeddings of every sub-model, the vision tower's patch embedding included; Trainer.train() and every
    reference pass of trl's DPO step call it again. Left alone, the frozen tower enters the autograd graph of every
    step: its blocks' inputs are kept for backward (about 2.9 GB at 7B and 32 frames of 448 px) and the blocks are
    recomputed and back-propagated through, for no gradient (LoRA is on the language model only). Under no_grad the
    hook has nothing to attach a graph to, whoever adds it.

    Under `--tune full` the projector trains, and Qwen's sits inside the tower: then the tower's other parts (patch
    embedding and blocks) run without autograd one by one instead, and the projector's inputs need no gradient.
    """
    import torch

    tower = next(m for name, m in model.named_modules() if name.endswith(VISION_TOWERS))
    if not any(p.requires_grad for p in tower.parameters()):
        tower.forward = torch.no_grad()(tower.forward)
        return
    for child in tower.children():
        # A ModuleList is iterated, never called: its blocks are.
        for part in child if isinstance(child, torch.nn.ModuleList) else [child]:
            if not any(p.requires_grad for p in part.parameters()):
                part.forward = torch.no_grad()(part.forward)


def train_lora_in_float32(model: Any) -> None:
    """trl casts the trainable weights of a quantised model to bf16, where most of an update at lr 5e-6 rounds
    away; master weights stay in float32 (the forward pass still computes in the compute dtype)."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def keep_dropout_on_the_trained_adapter(model: Any, p: float) -> None:
    """LoRA dropout `p` on the adapter being trained, and none anywhere else: not in the base model, and not in
    trl's frozen "ref" adapter, whose log-probabilities must be the same on every pass."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p if name.endswith("lora_dropout.default") else 0.0


def _training_row(pair: Pair, with_gap: bool) -> dict[str, Any]:
    """trl's preference row, plus what the collator needs: the video's id and, for clip-weighted, the CLIP gap.
    The empty `images` list only tells trl that this is a vision dataset (so it keeps the raw rows for the
    collator); the frames come from the run, by video_id."""
    row = {**preference_row(pair), "images": [], "video_id": pair.video_id}
    if with_gap:
        row["clip_gap"] = float((pair.chosen_clip or 0.0) - (pair.rejected_clip or 0.0))
    return row


class VideoPreferenceCollator:
    """Turns preference rows into a DPO batch: [chosen rows | rejected rows], each prompt with its video.

    It does for videos what trl's vision collator does for images. The prompt (with the video) is processed once
    for each half, left-padded. The completions are tokenized alone, right-padded, and appended. A
    completion_mask marks the answer tokens, whose log-probabilities DPO compares.
    """

    def __init__(self, processor: Any, run: Run, samples: dict[str, Sample]):
        self.processor, self.run, self.samples = processor, run, samples

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        videos = [load_video(self.run, self.samples[e["video_id"]]) for e in examples] * 2
        prompts = [e["prompt"] for e in examples] * 2
        replies = [e[key][0]["content"][0]["text"] for key in ("chosen", "rejected") for e in examples]
        batch = reply_batch(self.processor, videos, prompts, replies)
        if "clip_gap" in examples[0]:
            batch["clip_gap"] = torch.tensor([e["clip_gap"] for e in examples], dtype=torch.float32)
        return batch


class VideoDPOTrainer(DPOTrainer):
    """trl's DPOTrainer, plus the clip-weighted loss. With clip_gamma = 0 it is the stock trainer."""

    def __init__(self, *args, clip_gamma: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.clip_gamma = clip_gamma

    def _compute_loss(self, model, inputs, return_outputs):
        gap = inputs.pop("clip_gap", None)
        if gap is None or self.clip_gamma == 0:
            return super()._compute_loss(model, inputs, return_outputs)
        return self._clip_margin_loss(model, inputs, gap, return_outputs)

    def _clip_margin_loss(self, model, inputs, gap, return_outputs):
        import torch
        import torch.nn.functional as F
        from trl.trainer.utils import use_adapter

        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        model_inputs = {k: v for k, v in inputs.items() if k != "completion_mask"}
        seq_len = completion_mask.size(1) - 1
        # trl's fused head returns each label token's log-probability (0 where the label is masked).
        logps = model(**model_inputs, labels=labels, use_cache=False, fused_lm_head=True).log_probs
        logps = logps[:, -seq_len:].sum(dim=1)
        unwrapped = self.accelerator.unwrap_model(self.model)
        with torch.no_grad(), use_adapter(unwrapped, "ref" if "ref" in unwrapped.peft_config else None):
            ref = self.model(**model_inputs, labels=labels, use_cache=False, fused_lm_head=True).log_probs
        ref = ref[:, -seq_len:].sum(dim=1)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        delta = (chosen - ref_chosen) - (rejected - ref_rejected)
        loss = -F.logsigmoid(self.beta * delta - self.clip_gamma * gap.to(delta.device, delta.dtype)).mean()

        chosen_rewards = self.beta * (chosen - ref_chosen).detach()
        rejected_rewards = self.beta * (rejected - ref_rejected).detach()
        self._metrics[mode]["rewards/chosen"].append(chosen_rewards.mean().item())
        self._metrics[mode]["rewards/rejected"].append(rejected_rewards.mean().item())
        self._metrics[mode]["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        self._metrics[mode]["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        self._metrics[mode]["clip_gap"].append(gap.mean().item())
        return (loss, None) if return_outputs else loss


class TrainLogCallback(TrainerCallback):
    """Writes every logged training step to the round's train_log table as it happens."""

    def __init__(self, writer: ArtifactWriter, progress: Callable[[int], Callable[[], None]] | None):
        self.writer, self.progress, self.tick = writer, progress, None

    def on_train_begin(self, args, state, control, **kwargs):
        # A kill can land after a checkpoint is written but before on_save flushes the steps it covers; the
        # checkpoint's own log history holds them, so a resumed training puts them back.
        for logs in state.log_history:
            self._add(logs.get("step", 0), logs)
        if self.progress:
            self.tick = self.progress(max(0, state.max_steps - state.global_step))

    def on_save(self, args, state, control, **kwargs):
        # A resumed run restarts after this checkpoint, so every step up to it must be on disk now.
        self.writer.flush()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._add(state.global_step, logs or {}) and self.tick:
            self.tick()

    def _add(self, step: int, logs: dict) -> bool:
        if "loss" not in logs or step in self.writer.done_items:
            return False
        self.writer.add(TrainStep(step=step, epoch=float(logs.get("epoch") or 0.0),
                                  loss=logs.get("loss"), reward_accuracy=logs.get("rewards/accuracies"),
                                  reward_margin=logs.get("rewards/margins"), chosen_reward=logs.get("rewards/chosen"),
                                  rejected_reward=logs.get("rewards/rejected"),
                                  learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm")))
        return True


def _metric(metrics: dict[str, float], key: str) -> float | None:
    """A metric of the final pass over the training pairs (trl names its own metrics eval_*)."""
    value = metrics.get(f"final_{key}", metrics.get(f"eval_{key}"))
    return None if value is None else round(float(value), 4)


def _last_checkpoint(folder: Path) -> Path | None:
    checkpoints = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[1]), default=None)


def _finished(checkpoint: Path) -> bool:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return state["global_step"] >= state["max_steps"]


def _restore_finished(trainer: Any, checkpoint: Path) -> None:
    """Take the weights and logged steps of a training that ended at `checkpoint` (killed before its adapter was
    saved). Resuming it would train on: transformers checks the step count only after a step, and an epoch that
    `max_steps` ends midway is begun again."""
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    # The train log callback puts back the steps of the checkpoint's log history that were not yet flushed.
    trainer.callback_handler.on_train_begin(trainer.args, trainer.state, trainer.control)


def _save_adapter(model: Any, adapter_dir: Path) -> None:
    """Save the trained adapter only (not trl's "ref" copy), into place in one rename."""
    with atomic_dir(adapter_dir) as tmp:
        # No copy of the embedding matrix: peft would add one because a full tune's host LoRA sits there.
        model.save_pretrained(str(tmp), selected_adapters=["default"], save_embedding_layers=False)
