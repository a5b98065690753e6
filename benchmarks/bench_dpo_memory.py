"""Peak GPU memory and time per step of one `savi dpo` round on Qwen2.5-VL-7B: 4-bit QLoRA against bf16 LoRA.

Run from the repository root:

    # GPU only: random-weight Qwen2.5-VL-7B (the published config), 32 frames at 448x448, 3 optimizer steps per mode
    .venv/bin/python benchmarks/bench_dpo_memory.py
    # = --modes qlora,bf16-lora --steps 3 --frames 32 --size 448 --answer-tokens 80 --pairs 4 --videos 2
    #   --cache /tmp/savi-bench-dpo-memory/models --work /tmp/savi-bench-dpo-memory/work
    #   --json /tmp/savi-bench-dpo-memory.json

    # The same code path end to end on CPU, with the 7B config shrunk (a smoke test, not a measurement)
    .venv/bin/python benchmarks/bench_dpo_memory.py --dry-run-cpu

Without CUDA (and without --dry-run-cpu) it prints one line and exits with status 2.

The first GPU run writes the 16.6 GB model folder (minutes); later runs reuse it. Where one command may only run
for a few minutes, run the modes one at a time (``--modes qlora``, then ``--modes bf16-lora``, each with its own
``--json``); the ratio is then computed by hand from the two files.

What it measures
----------------
One DPO round as ``savi dpo`` trains it: ``stages.dpo.build_trainer`` (savi's trl DPOTrainer subclass, its video
collator, its LoRA targets, ``stages.core.model.quantization_config``, paged 8-bit AdamW, gradient checkpointing)
loads the model from a model folder with ``from_pretrained`` exactly as it loads a user's model, then ``train()``
runs ``--steps`` optimizer steps of one preference pair each (batch 1, no gradient accumulation). Nothing of the
training path is reimplemented here; the benchmark only builds the inputs and watches.

Two modes, each in a fresh child process so that each peak belongs to one mode alone:

* ``qlora``: ``ModelConfig(load_in_4bit=True)``, as ``savi dpo`` runs by default (NF4 language model, bf16 compute).
* ``bf16-lora``: ``ModelConfig(load_in_4bit=False, dtype="bfloat16")``, i.e. ``savi dpo --no-4bit`` on a GPU.

Per mode, on CUDA:

* peak allocated / peak reserved: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` over ``train()``.
  The peak counters are reset after the model is loaded and the allocator's cache is emptied, so the peak
  includes the resident weights (they stay allocated) but not the transient buffers of loading; the loading
  peak is in the JSON as ``load_peak_*``.
* peak device used: ``total - free`` from ``torch.cuda.mem_get_info``, sampled every 50 ms during ``train()``. It
  also sees what PyTorch's counters do not: the CUDA context and bitsandbytes' paged optimizer states (managed
  memory). It is the figure closest to "does it fit on the card" (it is device-wide: run on an otherwise idle
  GPU).
* s/step: wall time between the ends of consecutive optimizer steps (the GPU synchronised at each end), which
  includes collating the batch (decoding the frames and running the processor on the CPU) and logging. The first
  step also pays for creating the optimizer states and CUDA kernels' first launches, so with ``--steps`` > 1 it is
  excluded as warm-up and s/step is the mean of the others; every step's time is in the JSON.
* video tokens: counted in the batch the collator really built (``<|video_pad|>`` tokens in one row), with the
  sequence length and the answer (completion) tokens.
* trainable params: the LoRA parameters that require gradients.

The table also gives QLoRA / bf16 ratios of the peaks and whether QLoRA's peak reserved memory is under
``--target-gib`` (16 GiB: a round should fit a 24 GB card with room to spare).

The model
---------
The published Qwen2.5-VL-7B-Instruct architecture (constants below; 8,292,166,656 parameters, checked on the meta
device before anything is built) with random bf16 weights: memory and time do not depend on the values. The
weights are initialised directly on the GPU, saved once with ``save_pretrained`` into ``--cache`` (about 16.6 GB,
keyed by the config, reused by later runs) and loaded back by ``build_trainer``. The tokenizer, chat template and
processor are those of ``stages.core.tiny_model`` (a byte-level BPE of 384 tokens, with its special-token ids in
the config); the embedding and output head keep the real 152,064 rows, whose ids past 384 are simply never used.
The video processor gets the published per-frame pixel budget (min 3,136, max 12,845,056 pixels), so 448x448
frames reach the model unresized: 32 frames -> 16 x 32 x 32 patches, merged 2x2 -> 4,096 video tokens.

The inputs
----------
A scratch run in ``--work``: ``--videos`` synthetic clips of 2 x ``--frames`` frames at ``--size`` x ``--size``,
sampled by ``stages.sample.run`` (``--frames`` frames, max side ``--size``, as ``savi sample --frames 32
--max-side 448`` does), and ``--pairs`` kept ``Pair`` rows in round 1's pairs table whose chosen answers are
``--answer-tokens`` tokens long and rejected answers 12 tokens shorter (counted with the tokenizer in use).

Caveats
-------
* Random weights, tiny tokenizer: the text of a prompt tokenises into more tokens than with Qwen's real tokenizer,
  but the answers are cut to a token count, and the ~4,100-token sequence is dominated by the 4,096 video tokens.
* DPO batches hold the chosen and the rejected sequence of each pair, each with its own copy of the video, and run
  the policy and the reference (adapter disabled) on both: memory and time are for that, as ``savi dpo`` does it.
* Attention is transformers' default for Qwen2.5-VL (SDPA): ``build_trainer`` does not choose one.
* Peak reserved depends on the allocator's fragmentation; PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True usually
  lowers it. The benchmark leaves the allocator as savi leaves it.
* The step count is small: three steps show the steady state of memory (optimizer states exist after step 1),
  not long-run fragmentation.
* ``--dry-run-cpu`` runs every function above on CPU with the config shrunk (2 text layers of width 256 with the
  real head_dim 128, 2 vision blocks of width 64, the tiny vocabulary) and 8 frames at 64x64, and reports peak
  resident memory (RSS) instead of GPU memory. Its numbers say nothing about the GPU; it exists so that this code
  is exercised where there is no GPU. The parameter-count check of the full 7B config runs in both.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import qwen_7b
import torch
from transformers import TrainerCallback

from stages import sample as sample_stage
from stages.core import synthetic
from stages.core.model import ModelConfig
from stages.core.records import Pair
from stages.core.store import ArtifactWriter, Run, open_run

GIB = 1024**3


# The dry run's shrink: 2 heads keep head_dim at 128, so the real M-RoPE sections stay valid.
DRY_RUN_TEXT: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_window_layers": 2,
    "layer_types": ["full_attention"] * 2,
}
DRY_RUN_VISION: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 64,
    "num_heads": 2,
    "intermediate_size": 128,
    "out_hidden_size": 256,
    "fullatt_block_indexes": [1],  # one windowed block, one full-attention block, as the real tower alternates
}

# The two ways `savi dpo` can load the base model; everything else about training is the same.
MODES: dict[str, dict[str, Any]] = {
    "qlora": {"load_in_4bit": True},  # dtype "auto": bf16 on a GPU that has it, as `savi dpo` runs
    "bf16-lora": {"load_in_4bit": False, "dtype": "bfloat16"},  # `savi dpo --no-4bit`
}


@dataclass(frozen=True)
class Setup:
    """What differs between the GPU measurement and the CPU dry run; the code path is the same."""

    dry_run: bool
    text: dict[str, Any]  # overrides of the tiny model's text_config
    vision: dict[str, Any]  # overrides of its vision_config
    frames: int
    size: int

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


def make_setup(args: argparse.Namespace) -> Setup:
    text, vision = dict(qwen_7b.TEXT), dict(qwen_7b.VISION)
    if args.dry_run_cpu:
        text.update(DRY_RUN_TEXT)
        del text["vocab_size"]  # keep the tiny vocabulary: the 152,064-row head would dominate a model this small
        vision.update(DRY_RUN_VISION)
    return Setup(dry_run=args.dry_run_cpu, text=text, vision=vision,
                 frames=args.frames or (8 if args.dry_run_cpu else 32),
                 size=args.size or (64 if args.dry_run_cpu else 448))


# ---------------------------------------------------------------------------------------------------------------
# The model folder


def model_config(tiny: Path, text: dict[str, Any], vision: dict[str, Any]) -> dict[str, Any]:
    return {**qwen_7b.config_from_tiny(tiny, text, vision), "dtype": "bfloat16"}  # as the checkpoint is stored


def model_folder(setup: Setup, cache: Path) -> tuple[Path, dict[str, Any]]:
    """Where the benchmark model is (or will be) saved, and its config. The name is keyed by config and pixels."""
    config = model_config(qwen_7b.tiny_folder(cache), setup.text, setup.vision)
    key = hashlib.sha256(json.dumps([config, qwen_7b.PIXELS], sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"qwen2.5-vl-7b{'-dry-run' if setup.dry_run else ''}-{key}", config


def build_model(folder: Path, config: dict[str, Any], device: str, tiny: Path) -> None:
    """Save random bf16 weights of `config` and the tiny processor (with the real pixel budget) into `folder`.

    Runs in a child process, so that the 16.6 GB this holds on the GPU is gone before anything is measured.
    The marker file is written last: a folder without it is a half-written one and is rebuilt.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLConfig
    from transformers.utils import logging as hf_logging

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # Initialising 8 B parameters takes minutes on a CPU and seconds on a GPU; save_pretrained copies them out.
    with torch.device(device):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(Qwen2_5_VLConfig(**config), dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    hf_logging.disable_progress_bar()
    model.save_pretrained(folder)
    del model

    processor = AutoProcessor.from_pretrained(tiny)
    # The tiny processor pins every frame to 56x56; the real budget lets 448x448 frames through unresized.
    processor.video_processor.size = dict(qwen_7b.PIXELS)
    processor.image_processor.size = dict(qwen_7b.PIXELS)
    processor.save_pretrained(folder)
    (folder / "bench-model.json").write_text(json.dumps({"params": params, "pixels": qwen_7b.PIXELS}, indent=2))


# ---------------------------------------------------------------------------------------------------------------
# The scratch run: sampled videos and a pairs table, made with savi's own stages and writers

QUESTION = "Describe how the object moves in this video: where it starts, where it ends, and what else changes."
# Shaped like the revised (chosen) and original (rejected) answers of a critique round.
CHOSEN_SENTENCES = (
    "The red square starts near the left edge of the frame and moves steadily to the right.",
    "It keeps the same size and colour the whole time, and no other object enters the scene.",
    "By the last frames it has reached the right side, close to the edge, where it stops.",
    "The background stays dark grey throughout and the camera does not move at all.",
    "Nothing else changes: there is no text, no second shape and no change of lighting.",
)
REJECTED_SENTENCES = (
    "A blue circle falls from the top of the frame and bounces twice near the bottom.",
    "Halfway through the clip a second, larger square appears on the left and turns green.",
    "The camera slowly zooms in while the background changes from black to white.",
    "At the end both shapes disappear and the frame is empty for the last second.",
    "The circle leaves a yellow trail that fades out before the clip ends.",
)
CLIPS = (("square", "red", "left_to_right"), ("circle", "blue", "top_to_bottom"), ("square", "green", "right_to_left"))


def text_of_tokens(tokenizer: Any, sentences: tuple[str, ...], tokens: int) -> str:
    """A text of exactly `tokens` tokens (for this tokenizer), cut from the sentences, repeated as needed."""
    ids: list[int] = []
    count = 0
    while len(ids) < tokens:
        count += 1
        text = " ".join(sentences[i % len(sentences)] for i in range(count))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:tokens])


def prepare_run(setup: Setup, work: Path, folder: Path, videos: int, pairs: int, answer_tokens: int) -> Run:
    """A fresh run with `videos` sampled clips and `pairs` kept pairs in round 1, as `savi filter` leaves them."""
    from transformers import AutoProcessor

    shutil.rmtree(work, ignore_errors=True)
    clips = work / "videos"
    clips.mkdir(parents=True)
    for i in range(videos):
        kind, color, direction = CLIPS[i % len(CLIPS)]
        shape = synthetic.Shape(kind, color, direction, size=max(4, setup.size // 8 // 2 * 2))
        synthetic.write_video(clips / f"clip{i}.mp4", num_frames=2 * setup.frames, fps=12.0,
                              size=(setup.size, setup.size), shapes=(shape,), seed=i)
    run = open_run("bench", work / "runs")
    sample_stage.run(run, [clips], sample_stage.SampleConfig(frames=setup.frames, max_side=setup.size))
    samples = [s for s in run.artifact("samples").read() if s.status == "ok"]
    if len(samples) != videos:
        raise SystemExit(f"sampling failed: {len(samples)} of {videos} videos sampled")

    tokenizer = AutoProcessor.from_pretrained(folder).tokenizer
    chosen = text_of_tokens(tokenizer, CHOSEN_SENTENCES, answer_tokens)
    rejected = text_of_tokens(tokenizer, REJECTED_SENTENCES, max(1, answer_tokens - 12))
    writer = ArtifactWriter(run.artifact("pairs", 1), params={"bench": True}, inputs={})
    for i in range(pairs):
        writer.add(Pair(pair_id=f"p{i}", video_id=samples[i % len(samples)].video_id, question_id=f"q{i}",
                        question=QUESTION, chosen=chosen, rejected=rejected, chosen_clip=0.31, rejected_clip=0.22,
                        swapped=False, mode="critique", kept=True, drop_reason=None))
    writer.finish()
    return run


# ---------------------------------------------------------------------------------------------------------------
# Measuring one mode (in a child process)


class PeakSampler:
    """The largest value `read()` returned, polled from a thread while the block runs.

    Used for what has no peak counter of its own: device memory as the driver sees it, and resident memory.
    """

    def __init__(self, read: Callable[[], int], interval_s: float = 0.05):
        self.read, self.interval_s, self.peak = read, interval_s, 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakSampler:
        self.peak = self.read()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


class StepClock(TrainerCallback):
    """Times each optimizer step, end to end, and notes the memory peak so far at the end of each."""

    def __init__(self, on_gpu: bool):
        self.on_gpu = on_gpu
        self.marks: list[float] = []
        self.peaks_gib: list[float] = []

    def _mark(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize()  # kernels run asynchronously; a step is over when the GPU is done with it
        self.marks.append(time.perf_counter())

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = []
        self._mark()

    def on_step_end(self, args, state, control, **kwargs):
        self._mark()
        if self.on_gpu:
            self.peaks_gib.append(torch.cuda.max_memory_allocated() / GIB)

    @property
    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def batch_shape(trainer: Any) -> dict[str, Any]:
    """Build one batch with the trainer's own collator and count what the model will see in its first row."""
    rows = [dict(trainer.train_dataset[0])]
    start = time.perf_counter()
    batch = trainer.data_collator(rows)
    collate_s = time.perf_counter() - start
    video_token = trainer.model.config.video_token_id
    return {
        "collate_s": round(collate_s, 3),
        "video_tokens": int((batch["input_ids"][0] == video_token).sum()),
        "video_grid_thw": batch["video_grid_thw"][0].tolist(),
        "rows_per_pair": int(batch["input_ids"].shape[0]),  # chosen and rejected
        "sequence_tokens": [int(n) for n in batch["attention_mask"].sum(dim=1)],
        "completion_tokens": [int(n) for n in batch["completion_mask"].sum(dim=1)],
    }


def train_mode(mode: str, folder: Path, workspace: Path, steps: int, dry_run: bool) -> dict[str, Any]:
    """Load the model through `build_trainer`, train `steps` steps, and return what was measured."""
    # trl is imported only here: the parent process never trains, and importing it costs seconds.
    from stages import dpo

    on_gpu = not dry_run
    run = open_run("bench", workspace)
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    pairs = [p for p in run.artifact("pairs", 1).read() if p.kept]
    model_cfg = ModelConfig(model=str(folder), device="cuda" if on_gpu else "cpu", **MODES[mode])
    cfg = dpo.TrainConfig(batch_size=1, grad_accum=1, max_steps=steps, gradient_checkpointing=True)
    # A real train_log writer, as `savi dpo` passes one (its callback runs every step); force: each mode rewrites it.
    writer = ArtifactWriter(run.artifact("train_log", 1), params={"bench_mode": mode, **asdict(cfg)}, inputs={},
                            force=True)
    result: dict[str, Any] = {"mode": mode, "model_config": asdict(model_cfg), "train_config": asdict(cfg)}

    start = time.perf_counter()
    trainer = dpo.build_trainer(run, samples, pairs, cfg, model_cfg, None, run.path / f"bench-{mode}", writer)
    result["load_s"] = round(time.perf_counter() - start, 1)
    result["trainable_params"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result["base_dtype"] = str(trainer.model.get_base_model().dtype)
    result.update(batch_shape(trainer))

    clock = StepClock(on_gpu)
    trainer.add_callback(clock)
    gc.collect()
    if on_gpu:
        torch.cuda.synchronize()
        result["load_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        result["load_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        # Drop the blocks loading left cached, so the reserved peak is what training itself needs.
        torch.cuda.empty_cache()
        result["weights_allocated_gib"] = torch.cuda.memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()
        free, total = torch.cuda.mem_get_info()
        result["device_total_gib"] = total / GIB

        def probe() -> int:
            free, total = torch.cuda.mem_get_info()
            return total - free
    else:
        import psutil

        process = psutil.Process()

        def probe() -> int:
            return process.memory_info().rss

    error = None
    start = time.perf_counter()
    with PeakSampler(probe) as sampled:
        try:
            trainer.train()
        except torch.OutOfMemoryError as e:  # the answer for this mode is then "does not fit", not a crash
            error = f"CUDA out of memory: {str(e).splitlines()[0][:200]}"
        finally:
            writer.close()
    result["train_wall_s"] = round(time.perf_counter() - start, 2)
    result["error"] = error
    if on_gpu:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        result["peak_device_used_gib"] = sampled.peak / GIB
        result["peak_allocated_gib_by_step"] = [round(p, 3) for p in clock.peaks_gib]
    else:
        result["peak_rss_gib"] = sampled.peak / GIB

    seconds = clock.step_seconds
    result["step_s"] = [round(s, 3) for s in seconds]
    timed = seconds[1:] if len(seconds) > 1 else seconds  # step 1 is warm-up (see the module docstring)
    result["s_per_step"] = sum(timed) / len(timed) if timed else None
    result["s_per_step_excludes_first"] = len(seconds) > 1
    result["losses"] = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
    return result


# ---------------------------------------------------------------------------------------------------------------
# The parent: build, prepare, run one child per mode, report


def child_env(dry_run: bool) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if dry_run:
        # bitsandbytes places a 4-bit model on the GPU whenever one is visible, whatever device savi asked for,
        # so the dry run hides any GPU to stay on the CPU.
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_child(argv: list[str], dry_run: bool) -> int:
    """Run this script as a child (its output goes to our stderr, so stdout carries only the report)."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], env=child_env(dry_run),
                          stdout=sys.stderr, check=False)
    return done.returncode


def say(message: str) -> None:
    print(f"[bench-dpo-memory] {message}", file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(results: list[dict[str, Any]], setup: Setup, target_gib: float) -> tuple[str, dict[str, Any]]:
    """The markdown table and the summary (ratios, verdict) for the JSON."""
    lines = []
    if setup.dry_run:
        lines += ["**DRY RUN on CPU with a shrunk config: memory is process RSS, not GPU memory; not a measurement.**",
                  "", "| mode | peak RSS (GiB) | s/step | video tokens | tokens per row | trainable params |",
                  "|---|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| mode | peak allocated (GiB) | peak reserved (GiB) | peak device used (GiB) | weights (GiB) "
                  "| s/step | video tokens | tokens per row | trainable params |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "video_tokens" not in r:
            lines.append(f"| {r['mode']} | failed: {r.get('error', 'no result')} |")
            continue
        note = f" ({r['error']})" if r.get("error") else ""
        seq = "/".join(str(n) for n in r["sequence_tokens"])
        common = f"{fmt(r['s_per_step'])} | {r['video_tokens']:,} | {seq} | {r['trainable_params']:,}"
        if setup.dry_run:
            lines.append(f"| {r['mode']}{note} | {fmt(r['peak_rss_gib'])} | {common} |")
        else:
            lines.append(f"| {r['mode']}{note} | {fmt(r['peak_allocated_gib'])} | {fmt(r['peak_reserved_gib'])} "
                         f"| {fmt(r['peak_device_used_gib'])} | {fmt(r['weights_allocated_gib'])} | {common} |")

    ok = {r["mode"]: r for r in results if "video_tokens" in r and not r.get("error")}
    summary: dict[str, Any] = {}
    keys = ("peak_rss_gib",) if setup.dry_run else ("peak_allocated_gib", "peak_reserved_gib", "peak_device_used_gib")
    if "qlora" in ok and "bf16-lora" in ok:
        summary["qlora_over_bf16"] = {k: ok["qlora"][k] / ok["bf16-lora"][k] for k in keys}
        labels = {"peak_rss_gib": "peak RSS", "peak_allocated_gib": "peak allocated",
                  "peak_reserved_gib": "peak reserved", "peak_device_used_gib": "peak device used"}
        ratios = ", ".join(f"{labels[k]} {v:.2f}" for k, v in summary["qlora_over_bf16"].items())
        lines += ["", f"QLoRA / bf16 LoRA: {ratios}"]
    if setup.dry_run:
        lines.append(f"Target (QLoRA peak < {target_gib:g} GiB on the GPU): not judged in a dry run.")
    elif "qlora" in ok:
        q = ok["qlora"]
        summary["qlora_under_target"] = q["peak_reserved_gib"] < target_gib
        lines.append(f"Target: QLoRA peak reserved {q['peak_reserved_gib']:.2f} GiB (device used "
                     f"{q['peak_device_used_gib']:.2f} GiB) < {target_gib:g} GiB: "
                     f"{'YES' if summary['qlora_under_target'] else 'NO'}")
    if any(r.get("s_per_step_excludes_first") for r in results):
        lines.append("s/step: mean over steps 2..N; step 1 (optimizer state creation, first kernel launches) "
                     "excluded as warm-up.")
    collate = ", ".join(f"{r['mode']} {r['collate_s']:.2f} s" for r in results if "collate_s" in r)
    if collate:
        lines.append(f"s/step includes collating the batch on the CPU (one batch, timed alone: {collate}).")
    return "\n".join(lines), summary


def parent(args: argparse.Namespace) -> int:
    setup = make_setup(args)
    if not setup.dry_run and not torch.cuda.is_available():
        print("bench_dpo_memory: this measurement needs a CUDA GPU (none found); use --dry-run-cpu to exercise "
              "the code path on CPU")
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}: use {', '.join(MODES)}")

    # The full config is checked against the published checkpoint even in a dry run: it is cheap on meta.
    full = model_config(qwen_7b.tiny_folder(args.cache), qwen_7b.TEXT, qwen_7b.VISION)
    full_params = qwen_7b.count_params_on_meta(full)
    if full_params != qwen_7b.PARAMS:
        raise SystemExit(f"the Qwen2.5-VL-7B config builds {full_params:,} parameters, not the published "
                         f"{qwen_7b.PARAMS:,}; fix the constants")
    say(f"Qwen2.5-VL-7B config checked on the meta device: {full_params:,} parameters")

    folder, config = model_folder(setup, args.cache)
    if (folder / "bench-model.json").is_file():
        say(f"reusing model folder {folder}")
    else:
        say(f"building the model folder {folder} (random bf16 weights on {setup.device}"
            f"{'' if setup.dry_run else '; about 16.6 GB to write, minutes'})")
        start = time.perf_counter()
        argv = ["--child", "build", "--folder", str(folder), "--cache", str(args.cache)]
        if run_child(argv + (["--dry-run-cpu"] if setup.dry_run else []), setup.dry_run) != 0:
            raise SystemExit("building the model folder failed (see above)")
        say(f"model folder built in {time.perf_counter() - start:.0f} s")
    params = json.loads((folder / "bench-model.json").read_text())["params"]

    say(f"sampling {args.videos} clip(s) at {setup.frames} frames, {setup.size}x{setup.size}; writing {args.pairs} "
        f"pairs with {args.answer_tokens}-token chosen answers")
    run = prepare_run(setup, args.work, folder, args.videos, args.pairs, args.answer_tokens)

    results = []
    for mode in modes:
        say(f"training {mode}: {args.steps} step(s) in a child process")
        out = args.work / f"result-{mode}.json"
        out.unlink(missing_ok=True)
        argv = ["--child", "train", "--mode", mode, "--folder", str(folder), "--workspace", str(run.path.parent),
                "--steps", str(args.steps), "--child-json", str(out)]
        status = run_child(argv + (["--dry-run-cpu"] if setup.dry_run else []), setup.dry_run)
        if out.is_file():
            results.append(json.loads(out.read_text()))
        else:
            results.append({"mode": mode, "error": f"child exited with status {status} (see its output above)"})

    table, summary = report(results, setup, args.target_gib)
    header = ("DRY RUN (CPU, shrunk config)" if setup.dry_run else
              f"{torch.cuda.get_device_name()}, Qwen2.5-VL-7B random weights")
    print(f"## savi dpo memory: {header}\n")
    text, vision = config["text_config"], config["vision_config"]
    print(f"model: {params:,} parameters (text: {text['num_hidden_layers']} layers x {text['hidden_size']}, "
          f"{text['num_attention_heads']} heads / {text['num_key_value_heads']} KV, MLP {text['intermediate_size']}, "
          f"vocab {text['vocab_size']:,}; vision: {vision['depth']} blocks x {vision['hidden_size']}); "
          f"{setup.frames} frames at {setup.size}x{setup.size}; batch 1 pair (2 rows: chosen, rejected); "
          f"{args.steps} optimizer steps per mode\n")
    print(table)

    payload = {
        "benchmark": "bench_dpo_memory",
        "dry_run": setup.dry_run,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
                 "gpu": None if setup.dry_run else torch.cuda.get_device_name()},
        "model_folder": str(folder),
        "model_params": params,
        "config": {"text": config["text_config"], "vision": config["vision_config"], "pixels": qwen_7b.PIXELS},
        "inputs": {"frames": setup.frames, "size": setup.size, "videos": args.videos, "pairs": args.pairs,
                   "answer_tokens": args.answer_tokens, "steps": args.steps},
        "target_gib": args.target_gib,
        "results": results,
        "summary": summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2))
    print(f"\nJSON: {args.json}")
    return 0 if all("video_tokens" in r and not r.get("error") for r in results) else 1


def child(args: argparse.Namespace) -> int:
    setup = make_setup(args)
    if args.child == "build":
        folder, config = model_folder(setup, args.cache)
        if folder != args.folder:
            raise SystemExit(f"child computed {folder}, parent asked for {args.folder}")
        build_model(folder, config, setup.device, qwen_7b.tiny_folder(args.cache))
        return 0
    result = train_mode(args.mode, args.folder, args.workspace, args.steps, setup.dry_run)
    args.child_json.write_text(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    default_root = Path("/tmp/savi-bench-dpo-memory")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="qlora,bf16-lora", help="comma-separated: qlora, bf16-lora")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per mode (step 1 is warm-up if > 1)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default 32; dry run 8)")
    parser.add_argument("--size", type=int, default=None, help="frame side in pixels (default 448; dry run 64)")
    parser.add_argument("--answer-tokens", type=int, default=80, help="tokens of each chosen answer")
    parser.add_argument("--pairs", type=int, default=4, help="preference pairs in the scratch run")
    parser.add_argument("--videos", type=int, default=2, help="videos the pairs are spread over")
    parser.add_argument("--target-gib", type=float, default=16.0, help="QLoRA peak to stay under")
    parser.add_argument("--cache", type=Path, default=default_root / "models", help="model folders, reused")
    parser.add_argument("--work", type=Path, default=default_root / "work", help="scratch run (recreated)")
    parser.add_argument("--json", type=Path, default=Path("/tmp/savi-bench-dpo-memory.json"))
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="run the same code on CPU with the 7B config shrunk (a smoke test, not a measurement)")
    # Internal: how the parent starts its children.
    parser.add_argument("--child", choices=("build", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.pairs < 1 or args.videos < 1 or args.answer_tokens < 1:
        parser.error("--steps, --pairs, --videos and --answer-tokens must be at least 1")
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
