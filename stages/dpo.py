"""Stage `dpo`: train round r's policy on the kept pairs with 4-bit DPO (QLoRA) and a video collator.

The setup:
- The base model is loaded in 4-bit NF4 (bitsandbytes); `--no-4bit` loads it in full precision instead.
- LoRA (peft) goes on the language model's linear layers only, so the vision tower stays frozen.
  `--tune full` trains every weight of the language model's layers and of the projector instead (peft's
  `modules_to_save`: the adapter then holds full copies of them), for models small enough to afford it.
- trl's stock DPOTrainer runs with savi's video collator (trl's own collator handles images only).
- Gradient checkpointing is on, with paged 8-bit AdamW on CUDA (plain AdamW on CPU, where paged memory does not
  exist).
- Each video is encoded once per step. trl's step runs the model twice (the policy, then the reference) on
  [chosen rows | rejected rows], and the stock path would run the vision tower on every row of both: four times
  per pair. With LoRA the whole vision tower is frozen and shared by the policy and the reference, so savi runs it
  once per distinct video of the batch, without gradients, and hands the features to every row and pass through
  the model's own entry point for precomputed encoder outputs (`mm_encoder_outputs`). `--tune full` trains the
  projector, whose policy and reference copies differ, so it keeps the stock path.
- Each pair's prompt runs once (prefix sharing, `share_prompts`): trl's step gives the chosen and the rejected
  reply a row each, both holding the whole prompt with its thousands of video tokens. savi runs one sequence per
  pair, [prompt | chosen | the prompt's last token again | rejected], with a mask that hides the chosen reply from
  the rejected one and the positions each token has in its own row, so each reply scores as in its own row, to
  float tolerance, at about half the language model's work (and, under `--tune full`, half the encodings). It
  needs an attention that takes a mask (sdpa or eager, not flash attention); `--no-shared-prompts` turns it off.

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

VistaDPO's hierarchy (`--levels instance,temporal,perceptive`, weights of extra terms of the same loss):
- instance: the chosen reply over the rejected one, for the same video: the loss above.
- temporal: the chosen reply under the true video over the same reply under a perturbed one,
      L_t = -log σ(β·([log π(y_w|v) - log π_ref(y_w|v)] - [log π(y_w|v') - log π_ref(y_w|v')]))
  where v' is v with its temporal patches reversed or shuffled (`--level-perturbation`, seeded by the pair).
- perceptive: the same, with v' the true video with the question's keyframes masked (their visual tokens zeroed):
  the round's `keyframes.parquet`, or else CLIP's top frames for the question.
Both perturb the features of the one encoding of each video (`encode_videos_once`), so they cost no second pass of
the vision tower: each adds one row per pair (the chosen reply again) to the policy's and the reference's pass.
Unlike VistaDPO's released loss, which detaches the policy's log-probabilities in these terms (so they train
nothing), both give gradients; and v' is the video perturbed, not `torch.rand_like(video)`. Each term's reward margin
and accuracy is logged at every step. The levels train with `--loss sigmoid` and `--tune lora`.

A crash resumes from the last checkpoint (`round=<r>/.checkpoints/`). The training log (loss, reward accuracy and
margins per step) is a table, `round=<r>/train_log.parquet`, that `savi query` sees.

This module imports trl and transformers at the top: it is the training script, imported only to train.
"""

from __future__ import annotations

import functools
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

from stages.core import launch as launches
from stages.core.clip import ClipScorer
from stages.core.errors import SaviError
from stages.core.model import (
    Video,
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
from stages.core.packing import pack_replies, takes_a_mask
from stages.core.records import Pair, Sample, TrainStep
from stages.core.settings import (
    LEVELS,
    LOSSES,
    PATCH_PERTURBATIONS,
    TUNES,
    ClipConfig,
    KeyframesConfig,
    ModelConfig,
    TrainConfig,
)
from stages.core.store import ArtifactWriter, Progress, Run, StageResult, atomic_dir, file_sha256, fingerprint
from stages.core.temporal import frame_order
from stages.keyframes import clip_scores, top_k

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


def run(run: Run, round: int, cfg: TrainConfig, model_cfg: ModelConfig, clip_cfg: ClipConfig | None = None, *,
        force: bool = False, progress: Progress | None = None) -> StageResult:
    """Train round `round`'s adapter (`clip_cfg`: the CLIP that finds keyframes for the perceptive level when the
    round has no keyframes table)."""
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
    check_levels(cfg)
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
    keyframes: dict[str, list[int]] = {}
    if hierarchical(cfg):
        params["levels"] = list(cfg.levels)
        if cfg.levels[2] > 0:
            keyframes = masked_keyframes(run, round, pairs, clip_cfg)
            inputs["keyframes"] = fingerprint(sorted(keyframes.items()))
    else:  # tables made before the levels existed stay up to date
        del params["levels"], params["level_perturbation"]
    log_art = run.artifact("train_log", round)
    # Under `accelerate launch` every process trains (DDP, or DeepSpeed from accelerate's config), and the main one
    # alone clears, logs and saves: it decides what is up to date and tells the others.
    launch = launches.current()
    writer = None
    if launch.is_main:
        if force:  # the checkpoints of an earlier training; its finished adapter stays until the new one is saved
            shutil.rmtree(checkpoints, ignore_errors=True)
        writer = ArtifactWriter(log_art, params=params, inputs=inputs, force=force)
    if launch.from_main(writer is not None and writer.up_to_date and (adapter_dir / "adapter_config.json").is_file()):
        return StageResult(adapter_dir, 0, 0, True, log_art.manifest()["counts"])

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # checkpointing renames
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    trainer = build_trainer(run, samples, pairs, cfg, model_cfg, previous, checkpoints, writer, progress,
                            keyframes=keyframes)
    last = _last_checkpoint(checkpoints)
    try:
        if last and _finished(last):
            _restore_finished(trainer, last)
        else:
            trainer.train(resume_from_checkpoint=str(last) if last else None)
    finally:
        if writer is not None:
            writer.close()
    final = trainer.evaluate(eval_dataset=trainer.train_dataset, metric_key_prefix="final")
    # Under FSDP or ZeRO-3 each process holds a shard of every weight: all of them gather the whole state.
    state = trainer.accelerator.get_state_dict(trainer.model) if launches.shards_parameters() else None
    if writer is None:  # another process of the launch saves the adapter and the log
        launch.wait_for_everyone()
        return StageResult(adapter_dir, len(pairs), 0, False, {})
    _save_adapter(trainer.model, adapter_dir, state)

    steps = writer.records()
    counts = {"pairs": len(pairs), "steps": max((s.step for s in steps), default=0),
              # What one optimizer step sees; the learning rate is used as given, whatever the number of processes.
              "effective_batch": cfg.batch_size * cfg.grad_accum * launch.size, "processes": launch.size,
              "final_reward_accuracy": _metric(final, "rewards/accuracies"),
              "final_reward_margin": _metric(final, "rewards/margins"),
              "final_loss": _metric(final, "loss")}
    for level in LEVELS[1:] if hierarchical(cfg) else ():
        counts[f"final_{level}_margin"] = _metric(final, f"{level}/margins")
        counts[f"final_{level}_accuracy"] = _metric(final, f"{level}/accuracies")
    writer.finish(counts=counts, notes={"adapter": str(adapter_dir), "resumed_from_checkpoint": str(last or "")})
    shutil.rmtree(checkpoints, ignore_errors=True)
    launch.wait_for_everyone()
    return StageResult(adapter_dir, len(pairs), len(steps), False, counts)


def build_trainer(run: Run, samples: dict[str, Sample], pairs: list[Pair], cfg: TrainConfig,
                  model_cfg: ModelConfig, previous: Path | None, output_dir: Path, writer: ArtifactWriter | None,
                  progress: Progress | None = None, keyframes: dict[str, list[int]] | None = None):
    """The DPOTrainer for these pairs, ready to `train()`. Separate from `run` so tests can inspect it.
    `keyframes` (by question) are the frames the perceptive level masks."""
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
    views = [level for level, weight in zip(LEVELS[1:], cfg.levels[1:]) if weight > 0]
    collator = VideoPreferenceCollator(processor, run, samples, views=views, perturbation=cfg.level_perturbation,
                                       seed=model_cfg.seed, keyframes=keyframes or {})
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
        # Under DDP every trainable weight takes part in every step (the frozen tower runs without autograd), so
        # DDP need not search the graph for unused ones each step.
        ddp_find_unused_parameters=False,
        # trl would set every dropout to 0, LoRA's too; `keep_dropout_on_the_trained_adapter` decides instead.
        disable_dropout=False,
    )
    callbacks = [TrainLogCallback(writer, progress)] if writer is not None else []
    trainer = VideoDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                              peft_config=peft_config, data_collator=collator, callbacks=callbacks,
                              clip_gamma=cfg.clip_gamma if with_gap else 0.0, encode_once=cfg.tune == "lora",
                              shared_prompts=cfg.shared_prompts,
                              levels=dict(zip(LEVELS, cfg.levels)))
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
    """trl's preference row, plus what the collator needs: the video's id (and the pair's and the question's, for
    the levels) and, for clip-weighted, the CLIP gap. The empty `images` list only tells trl that this is a vision
    dataset (so it keeps the raw rows for the collator); the frames come from the run, by video_id."""
    row = {**preference_row(pair), "images": [], "video_id": pair.video_id, "pair_id": pair.pair_id,
           "question_id": pair.question_id}
    if with_gap:
        row["clip_gap"] = float((pair.chosen_clip or 0.0) - (pair.rejected_clip or 0.0))
    return row


class VideoPreferenceCollator:
    """Turns preference rows into a DPO batch: [chosen rows | rejected rows], each prompt with its video; with
    VistaDPO's levels on, a group of rows per level follows: the chosen reply again, under the view of its video
    that the level takes (`row_views`: the perturbation and its seed key, or the keyframes to mask).

    It does for videos what trl's vision collator does for images. The prompt (with the video) is processed once
    for each row, left-padded. The completions are tokenized alone, right-padded, and appended. A completion_mask
    marks the answer tokens, whose log-probabilities DPO compares.
    """

    def __init__(self, processor: Any, run: Run, samples: dict[str, Sample], views: list[str] | None = None,
                 perturbation: str = "reverse", seed: int = 0, keyframes: dict[str, list[int]] | None = None):
        self.processor, self.run, self.samples = processor, run, samples
        self.views, self.perturbation, self.seed, self.keyframes = views or [], perturbation, seed, keyframes or {}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        groups = 2 + len(self.views)
        videos = [load_video(self.run, self.samples[e["video_id"]]) for e in examples]
        chosen = [e["chosen"][0]["content"][0]["text"] for e in examples]
        rejected = [e["rejected"][0]["content"][0]["text"] for e in examples]
        batch = reply_batch(self.processor, videos * groups, [e["prompt"] for e in examples] * groups,
                            chosen + rejected + chosen * len(self.views))
        # Which distinct video each row shows (row i and row B + i always share one), for `encode_videos_once`.
        distinct: dict[str, int] = {}
        batch["video_rows"] = torch.tensor([distinct.setdefault(e["video_id"], len(distinct))
                                            for e in examples] * groups)
        if self.views:
            batch["row_views"] = [None] * (2 * len(examples)) + [
                self._view(level, e, video) for level in self.views for e, video in zip(examples, videos)]
        if "clip_gap" in examples[0]:
            batch["clip_gap"] = torch.tensor([e["clip_gap"] for e in examples], dtype=torch.float32)
        return batch

    def _view(self, level: str, example: dict[str, Any], video: Video) -> tuple:
        if level == "temporal":
            return ("perturb", self.perturbation, f"{self.seed}:{example['pair_id']}")
        return ("mask", tuple(self.keyframes.get(example["question_id"], ())), len(video.frames))


def encode_videos_once(model: Any, inputs: dict[str, Any], video_rows: Any,
                       row_views: list[tuple | None] | None = None) -> dict[str, Any]:
    """The step's inputs with each distinct video encoded once: the frozen vision tower runs (without gradients)
    on the first row of each video, and every row gets its video's features as `mm_encoder_outputs`, which the
    model takes in place of `pixel_values_videos` for the policy pass and the reference pass alike. A row with a
    view (`row_views`, the levels' rows) gets its video's features seen that way (`viewed`)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    core = base.model  # the multimodal model under the LM head: it owns get_video_features and the merge
    rows = video_rows.tolist()
    first: dict[int, int] = {}
    for row, video in enumerate(rows):
        first.setdefault(video, row)
    distinct = [first[video] for video in range(len(first))]
    pixels, grid = inputs["pixel_values_videos"], inputs.get("video_grid_thw")
    with torch.no_grad():
        views = row_views or [None] * len(rows)
        if grid is None:  # LLaVA-OneVision: a (frames, C, H, W) block per row, frames its temporal groups
            encoded = core.get_video_features(pixels[distinct], return_dict=True,
                                              vision_feature_layer=core.config.vision_feature_layer,
                                              vision_feature_select_strategy=core.config.vision_feature_select_strategy)
            encoded.pooler_output = torch.stack([viewed(encoded.pooler_output[video], pixels.shape[1], view)
                                                 for video, view in zip(rows, views)])
        else:  # Qwen: each row's patches in turn, t * h * w of them, t its temporal groups
            blocks = pixels.split(grid.prod(-1).tolist())
            encoded = core.get_video_features(torch.cat([blocks[r] for r in distinct]), grid[distinct],
                                              return_dict=True)
            times = grid[:, 0].tolist()
            encoded.pooler_output = tuple(viewed(encoded.pooler_output[video], t, view)
                                          for video, t, view in zip(rows, times, views))
            if getattr(encoded, "deepstack_features", None) is not None:  # Qwen3-VL's features of earlier layers
                encoded.deepstack_features = [tuple(viewed(layer[video], t, view)
                                                    for video, t, view in zip(rows, times, views))
                                              for layer in encoded.deepstack_features]
    return {**{k: v for k, v in inputs.items() if k != "pixel_values_videos"}, "mm_encoder_outputs": {"video": encoded}}


def viewed(features: Any, groups: int, view: tuple | None) -> Any:
    """One row's video features (tokens, dim) as a level sees them. The tokens come in `groups` temporal groups of
    equal size (Qwen's temporal patches of two frames, LLaVA-OneVision's frames), then any tokens of the whole
    video (LLaVA-OneVision's closing newline). ("perturb", kind, key): the groups in `temporal.frame_order`'s
    order; ("mask", positions, frames): the groups holding those sampled frames zeroed."""
    import torch

    if view is None:
        return features
    per = features.shape[0] // groups
    blocks, rest = features[:per * groups].view(groups, per, -1), features[per * groups:]
    if view[0] == "perturb":
        blocks = blocks[frame_order(view[1], groups, view[2])]
    else:
        positions, frames = view[1], view[2]
        blocks = blocks.clone()
        blocks[sorted({p * groups // frames for p in positions})] = 0
    return torch.cat([blocks.reshape(per * groups, -1), rest])


# The per-token fields of trl's fused head's output (`FusedCausalLMOutput`).
PER_TOKEN_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def share_prompts(model: Any) -> None:
    """Lets the model's forward (trl's fused one, on the base model under peft) take a step's rows as one sequence
    per pair, when its inputs say `shared_prompts=B`: rows [B chosen | B rejected | any other rows], each flushed
    left as the collator makes them. Each pair runs as [prompt | chosen reply | the prompt's last token again |
    rejected reply]: the prompt, video tokens and all, once instead of twice. A mask keeps the rejected reply from
    seeing the chosen one (it sees the prompt, through the repeated last token where its first word is predicted),
    and every token keeps the position it has in its own row, so each reply's log-probabilities are those of its
    own row, to float tolerance. They come back in the rows' own layout, so trl's losses and savi's read them
    unchanged."""
    forward = model.forward

    @functools.wraps(forward)
    def forward_sharing_prompts(*args, shared_prompts: int | None = None, **kwargs):
        if not shared_prompts:
            return forward(*args, **kwargs)
        pairs, rows = shared_prompts, len(kwargs["input_ids"])  # [B chosen | B rejected | the levels' rows, alone]
        groups = [[i, pairs + i] for i in range(pairs)] + [[r] for r in range(2 * pairs, rows)]
        packed, unpack = pack_replies(model, kwargs, groups)
        outputs = forward(**packed)
        for field in PER_TOKEN_FIELDS:  # trl's metrics read the others (entropy, ...) beside the log-probabilities
            if getattr(outputs, field, None) is not None:
                setattr(outputs, field, unpack(getattr(outputs, field)))
        return outputs

    model.forward = forward_sharing_prompts


class VideoDPOTrainer(DPOTrainer):
    """trl's DPOTrainer, plus the clip-weighted loss and each video encoded once per step (`encode_videos_once`,
    where the vision tower is frozen for policy and reference alike). With clip_gamma = 0 and encode_once off it
    is the stock trainer."""

    def __init__(self, *args, clip_gamma: float = 0.0, encode_once: bool = True, shared_prompts: bool = True,
                 levels: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.clip_gamma, self.encode_once = clip_gamma, encode_once
        self.levels = levels or {"instance": 1.0}
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        # The packed rows need a mask of their own, which flash attention cannot take.
        self.shared_prompts = shared_prompts and takes_a_mask(base)
        if shared_prompts and not self.shared_prompts:
            log.info("each reply gets a row of its own: sharing the prompt needs sdpa or eager attention (this model "
                     "has %s)", base.config.get_text_config()._attn_implementation)
        share_prompts(base)

    def _compute_loss(self, model, inputs, return_outputs):
        gap = inputs.pop("clip_gap", None)
        video_rows = inputs.pop("video_rows", None)
        row_views = inputs.pop("row_views", None)
        if self.encode_once and video_rows is not None and "pixel_values_videos" in inputs:
            inputs = encode_videos_once(self.accelerator.unwrap_model(self.model), inputs, video_rows, row_views)
        if self.shared_prompts and video_rows is not None:
            # rows [chosen | rejected | a group per level]: the chosen and rejected rows have no view
            inputs["shared_prompts"] = (len(video_rows) if row_views is None else row_views.count(None)) // 2
        if row_views is not None:
            if not self.encode_once:  # the levels' views exist only as features of the one encoding
                raise ValueError("VistaDPO's levels need each video encoded once (--tune lora)")
            return self._hierarchical_loss(model, inputs, return_outputs)
        if gap is None or self.clip_gamma == 0:
            return super()._compute_loss(model, inputs, return_outputs)
        return self._clip_margin_loss(model, inputs, gap, return_outputs)

    def _reply_logps(self, model, inputs):
        """Each row's reply log-probability under the policy and under the reference: the two passes of a step."""
        import torch
        from trl.trainer.utils import use_adapter

        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        model_inputs = {k: v for k, v in inputs.items() if k != "completion_mask"}
        seq_len = completion_mask.size(1) - 1
        # trl's fused head returns each label token's log-probability (0 where the label is masked).
        logps = model(**model_inputs, labels=labels, use_cache=False, fused_lm_head=True).log_probs
        unwrapped = self.accelerator.unwrap_model(self.model)
        with torch.no_grad(), use_adapter(unwrapped, "ref" if "ref" in unwrapped.peft_config else None):
            ref = self.model(**model_inputs, labels=labels, use_cache=False, fused_lm_head=True).log_probs
        return logps[:, -seq_len:].sum(dim=1), ref[:, -seq_len:].sum(dim=1)

    def _hierarchical_loss(self, model, inputs, return_outputs):
        """VistaDPO's levels: the instance term on [chosen | rejected], then one term per level on the chosen
        reply under the true video against its group of rows (see the module docstring)."""
        import torch.nn.functional as F

        mode = "train" if self.model.training else "eval"
        groups = ["instance", *self.data_collator.views]  # the batch's groups of rows after the chosen ones
        logps, ref = self._reply_logps(model, inputs)
        rewards = [self.beta * (policy - reference) for policy, reference in zip(logps.chunk(1 + len(groups)),
                                                                             ref.chunk(1 + len(groups)))]
        chosen = rewards[0]
        loss = 0
        for level, against in zip(groups, rewards[1:]):
            margin = chosen - against
            loss = loss + self.levels.get(level, 0.0) * -F.logsigmoid(margin).mean()
            prefix = "rewards" if level == "instance" else level
            self._metrics[mode][f"{prefix}/margins"].append(margin.detach().mean().item())
            self._metrics[mode][f"{prefix}/accuracies"].append((margin.detach() > 0).float().mean().item())
        self._metrics[mode]["rewards/chosen"].append(chosen.detach().mean().item())
        self._metrics[mode]["rewards/rejected"].append(rewards[1].detach().mean().item())
        return (loss, None) if return_outputs else loss

    def _clip_margin_loss(self, model, inputs, gap, return_outputs):
        import torch.nn.functional as F

        mode = "train" if self.model.training else "eval"
        logps, ref = self._reply_logps(model, inputs)
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
                                  learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                                  temporal_margin=logs.get("temporal/margins"),
                                  temporal_accuracy=logs.get("temporal/accuracies"),
                                  perceptive_margin=logs.get("perceptive/margins"),
                                  perceptive_accuracy=logs.get("perceptive/accuracies")))
        return True


def hierarchical(cfg: TrainConfig) -> bool:
    """Whether a level beyond the instance term is on."""
    return any(weight > 0 for weight in cfg.levels[1:])


def check_levels(cfg: TrainConfig) -> None:
    """`[dpo] levels` as the hierarchy can train it, or a one-line error."""
    if len(cfg.levels) != len(LEVELS) or not any(cfg.levels):
        raise SaviError(f"--levels takes {len(LEVELS)} weights ({', '.join(LEVELS)}), not all 0, e.g. 1,0.5,0.5; "
                        f"got {','.join(map(str, cfg.levels))}")
    if cfg.level_perturbation not in PATCH_PERTURBATIONS:
        raise SaviError(f"unknown --level-perturbation {cfg.level_perturbation!r}: use "
                        f"{' or '.join(PATCH_PERTURBATIONS)}")
    if hierarchical(cfg) and (cfg.loss != "sigmoid" or cfg.tune != "lora"):
        raise SaviError("the temporal and perceptive levels train the sigmoid loss with LoRA: use --loss sigmoid "
                        "--tune lora, or --levels 1,0,0")


def masked_keyframes(run: Run, round: int, pairs: list[Pair], clip_cfg: ClipConfig | None) -> dict[str, list[int]]:
    """The frames the perceptive level masks, by question: the round's keyframes table, or else the top frames of
    each question by CLIP (`stages/keyframes.py`, k as `savi keyframes` keeps)."""
    art = run.artifact("keyframes", round)
    if art.complete:
        found = {k.question_id: list(k.chosen) for k in art.read()}
        missing = sorted({p.question_id for p in pairs} - found.keys())
        if not missing:
            return found
        log.warning(f"{len(missing)} questions of the pairs have no keyframes in {art.path}; CLIP finds theirs")
    else:
        found, missing = {}, sorted({p.question_id for p in pairs})
    scorer = ClipScorer.load(clip_cfg or ClipConfig())
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    k = KeyframesConfig().top_k
    for pair in {p.question_id: p for p in pairs if p.question_id in set(missing)}.values():
        scores = clip_scores(scorer, scorer.frame_embeddings(run, samples[pair.video_id]), pair.question)
        found[pair.question_id] = top_k(scores, k)
    return found


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


def _save_adapter(model: Any, adapter_dir: Path, state: dict[str, Any] | None = None) -> None:
    """Save the trained adapter only (not trl's "ref" copy), into place in one rename; from `state`, the gathered
    weights, where the processes of a launch each hold a shard of them."""
    with atomic_dir(adapter_dir) as tmp:
        # No copy of the embedding matrix: peft would add one because a full tune's host LoRA sits there.
        model.save_pretrained(str(tmp), selected_adapters=["default"], save_embedding_layers=False,
                              **({"state_dict": state} if state is not None else {}))
