"""Peak GPU memory and time per step of one `savi dpo` step on Qwen2.5-VL-7B: 4-bit QLoRA, bf16 LoRA, and the
frozen vision tower in or out of autograd.

Run from the repository root:

    # GPU only: random-weight Qwen2.5-VL-7B (the published config), 32 frames at 448x448, 3 optimizer steps per mode
    .venv/bin/python benchmarks/bench_dpo_memory.py
    # = --modes qlora,bf16-lora --vision-in-autograd off --steps 3 --frames 32 --size 448 --answer-tokens 80
    #   --pairs 4 --videos 2 --target-gb 12 --cache /tmp/savi-bench-dpo-memory/models
    #   --work /tmp/savi-bench-dpo-memory/work --json /tmp/savi-bench-dpo-memory.json

    # What `benchmarks/gpu_check.sh` runs: QLoRA as trl's step runs it, with the vision tower out of autograd but
    # every row encoded on both passes, and as savi runs it (each video encoded once)
    .venv/bin/python benchmarks/bench_dpo_memory.py --modes qlora --vision-in-autograd all --steps 2

    # The same code path end to end on CPU, with the 7B config shrunk (a smoke test, not a measurement)
    .venv/bin/python benchmarks/bench_dpo_memory.py --dry-run-cpu

Without CUDA (and without --dry-run-cpu) it prints one line and exits with status 2.

The first GPU run writes the 16.6 GB model folder (``benchmarks/qwen_7b.py``; seconds to a minute on a GPU
machine); later runs, and the other GPU benchmarks, reuse it.

What it measures
----------------
One DPO step as ``savi dpo`` trains it: ``stages.dpo.build_trainer`` (savi's trl DPOTrainer subclass, its video
collator, its LoRA targets, ``stages.core.model.load_model`` with its 4-bit skip list, paged 8-bit AdamW, gradient
checkpointing, and savi's fixes on top of trl: the vision tower kept out of autograd, LoRA trained in float32)
loads the model from a model folder with ``from_pretrained`` exactly as it loads a user's model, then ``train()``
runs ``--steps`` optimizer steps of one preference pair each (batch 1, no gradient accumulation). Nothing of the
training path is reimplemented here; the benchmark only builds the inputs and watches.

Modes, each in a fresh child process so that each peak belongs to one mode alone:

* ``qlora``: ``ModelConfig(load_in_4bit=True)``, as ``savi dpo`` runs by default (NF4 language model, bf16 compute).
* ``bf16-lora``: ``ModelConfig(load_in_4bit=False, dtype="bfloat16")``, i.e. ``savi dpo --no-4bit`` on a GPU.

``--vision-in-autograd on`` (benchmark only) undoes savi's ``keep_the_vision_tower_out_of_autograd`` after
``build_trainer``: the tower runs with autograd again, with the hook of trl's ``enable_input_require_grads()`` on
its patch embedding, which is how trl leaves the model. The frozen tower then enters the autograd graph of every
step (its block inputs are kept for backward and the blocks recomputed, for no gradient); and, as in trl's step,
every row is encoded on both passes. ``both`` runs each mode twice, with the tower in autograd ("before") and as
``build_trainer`` leaves it ("after"), so the table shows what keeping it out saves. ``all`` adds, between the two,
the tower out of autograd with every row still encoded on both passes (``encode_once`` off: chosen and rejected,
policy and reference, four encodings per pair, and each reply in a row of its own), so the table also shows what
savi's step saves, in time per step and in peak memory: each video encoded once (``stages.dpo.encode_videos_once``)
and each pair's prompt run once for both replies (``stages.dpo.share_prompts``). Each result records whether the
vision tower's output required grad in the step, and how many 4-bit layers sit under the vision tower (none, when
the skip list works).

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
  includes collating the batch (reading the frames and running the processor on the CPU) and logging. The first
  step also pays for creating the optimizer states and CUDA kernels' first launches, so with ``--steps`` > 1 it is
  excluded as warm-up and s/step is the mean of the others; every step's time is in the JSON.
* video tokens: counted in the batch the collator really built (``<|video_pad|>`` tokens in one row), with the
  sequence length and the answer (completion) tokens.
* trainable params: the LoRA parameters that require gradients.

The report says whether the QLoRA peak reserved memory of the step with the vision tower out of autograd (savi's
default) is at most ``--target-gb`` (12 GB, decimal, by default).

The model
---------
The published Qwen2.5-VL-7B-Instruct config with random bf16 weights (``benchmarks/qwen_7b.py``; 8,292,166,656
parameters, checked on the meta device): memory and time do not depend on the values. The tokenizer, chat template,
processor and generation config are those of ``stages.offline.tiny_model`` (a byte-level BPE of 384 tokens, whose
special-token ids go into the config); the embedding and output head keep the real 152,064 rows. The processor has
the published per-frame pixel budget, so 448x448 frames reach the model unresized: 4,096 video tokens per prompt.

The inputs
----------
A scratch run in ``--work`` holding what ``savi sample`` and ``savi filter`` leave: ``--videos`` videos of
``--frames`` frames at ``--size`` x ``--size`` in the run's frame store (JPEGs written with savi's
``save_frames``, and a samples table), and ``--pairs`` kept ``Pair`` rows in round 1's pairs table whose chosen
answers are ``--answer-tokens`` tokens long and rejected answers 12 tokens shorter (counted with the tokenizer in
use). The frames are drawn with numpy rather than decoded from video files: the GPU machine has no video decoder,
and the training step reads the frame store either way.

Caveats
-------
* Random weights, tiny tokenizer: the text of a prompt tokenises into more tokens than with Qwen's real tokenizer,
  but the answers are cut to a token count, and the ~4,170-token sequence is dominated by the 4,096 video tokens.
* DPO batches hold the chosen and the rejected sequence of each pair, each with its own copy of the video, and run
  the policy and the reference (adapter disabled) on both: memory and time are for that, as ``savi dpo`` does it.
* Attention is transformers' default for Qwen2.5-VL (SDPA): ``build_trainer`` does not choose one.
* Peak reserved depends on the allocator's fragmentation; PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True usually
  lowers it. The benchmark leaves the allocator as savi leaves it.
* The step count is small: a few steps show the steady state of memory (optimizer states exist after step 1),
  not long-run fragmentation.
* ``--dry-run-cpu`` runs every function above on CPU with the config shrunk (``qwen_7b.SHRUNK_TEXT`` and
  ``SHRUNK_VISION``: 2 text layers of width 256 with the real head_dim 128, 2 vision blocks of width 64, the real
  vocabulary) and 8 frames at 112x112, and reports peak resident memory (RSS) instead of GPU memory. Its numbers
  say nothing about the GPU; it exists so that this code is exercised where there is no GPU. It also fails if
  anything imported duckdb, PyAV, decord or open_clip, which the GPU machine does not have.
"""

from __future__ import annotations

import argparse
import gc
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

from stages.core.model import ModelConfig
from stages.core.records import Pair, Sample
from stages.core.store import ArtifactWriter, Run, open_run
from stages.core.video import save_frames

GIB = 1024**3
GB = 1e9

# The two ways `savi dpo` can load the base model; everything else about training is the same.
MODES: dict[str, dict[str, Any]] = {
    "qlora": {"load_in_4bit": True},  # dtype "auto": bf16 on a GPU that has it, as `savi dpo` runs
    "bf16-lora": {"load_in_4bit": False, "dtype": "bfloat16"},  # `savi dpo --no-4bit`
}
# What the GPU machine lacks; a dry run fails if any of them was imported on this path.
NOT_ON_THE_GPU_MACHINE = ("duckdb", "av", "decord", "open_clip")


@dataclass(frozen=True)
class Setup:
    """What differs between the GPU measurement and the CPU dry run; the code path is the same."""

    dry_run: bool
    frames: int
    size: int

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


def make_setup(args: argparse.Namespace) -> Setup:
    return Setup(dry_run=args.dry_run_cpu, frames=args.frames or (8 if args.dry_run_cpu else 32),
                 size=args.size or (112 if args.dry_run_cpu else 448))


# How the vision tower is treated after build_trainer: in autograd as trl leaves it ("before"), out of autograd
# but run on every row of both passes, or as savi builds it ("after": under no_grad, each video encoded once).
VISION = {"trl": "vision tower in autograd (trl's hook)", "each": "tower out of autograd, every row encoded",
          "savi": "as savi builds it"}


def variants(modes: list[str], vision_in_autograd: str) -> list[tuple[str, str]]:
    """(mode, vision) pairs, in the order they run: "before" first, then savi's default."""
    visions = {"off": ["savi"], "on": ["trl"], "both": ["trl", "savi"], "all": ["trl", "each", "savi"]}[
        vision_in_autograd]
    return [(mode, vision) for mode in modes for vision in visions]


def label(mode: str, vision: str) -> str:
    return f"{mode}, {VISION[vision]}"


# ---------------------------------------------------------------------------------------------------------------
# The scratch run: a frame store, a samples table and a pairs table, written with savi's own writers

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


def text_of_tokens(tokenizer: Any, sentences: tuple[str, ...], tokens: int) -> str:
    """A text of exactly `tokens` tokens (for this tokenizer), cut from the sentences, repeated as needed."""
    ids: list[int] = []
    count = 0
    while len(ids) < tokens:
        count += 1
        text = " ".join(sentences[i % len(sentences)] for i in range(count))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:tokens])


def write_sampled_videos(run: Run, videos: int, frames: int, size: int) -> list[Sample]:
    """`videos` videos in the run's frame store and samples table, as `savi sample --frames F --max-side S`
    leaves them (2F source frames at 12 fps, every other one sampled)."""
    writer = ArtifactWriter(run.artifact("samples"), params={"bench": True}, inputs={})
    rows = []
    for i in range(videos):
        video_id = f"bench{i:03d}"
        save_frames(list(qwen_7b.frames(frames, size, seed=i)), run.path / "frames" / video_id)
        indices = [2 * k + 1 for k in range(frames)]
        rows.append(Sample(
            video_id=video_id, path=f"/bench/clip{i}.mp4", status="ok", error=None, size_bytes=0, mtime_ns=0,
            container="mp4", codec="h264", duration_s=2 * frames / 12.0, fps=12.0, num_frames=2 * frames,
            width=size, height=size, frames_requested=frames, frame_indices=indices,
            timestamps_s=[k / 12.0 for k in indices], frame_width=size, frame_height=size,
            frames_dir=f"frames/{video_id}"))
        writer.add(rows[-1])
    writer.finish()
    return rows


def prepare_run(setup: Setup, work: Path, folder: Path, videos: int, pairs: int, answer_tokens: int) -> Run:
    """A fresh run with `videos` sampled videos and `pairs` kept pairs in round 1, as `savi filter` leaves them."""
    from transformers import AutoTokenizer

    shutil.rmtree(work, ignore_errors=True)
    run = open_run("bench", work / "runs")
    samples = write_sampled_videos(run, videos, setup.frames, setup.size)
    tokenizer = AutoTokenizer.from_pretrained(folder)
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


def vision_tower(model: Any) -> torch.nn.Module:
    """The vision tower under a PEFT-wrapped Qwen2.5-VL (`...model.visual`)."""
    return next(m for name, m in model.named_modules() if name.endswith("model.visual"))


def requires_grad(output: Any) -> bool:
    """Whether any tensor of a module's output (a tensor, a tuple or a ModelOutput) requires grad."""
    values = output.values() if isinstance(output, dict) else output if isinstance(output, tuple) else [output]
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in values)


def sub_model_embeddings(model: Any) -> list[torch.nn.Module]:
    """The input embeddings of the sub-models other than the language model's (Qwen's vision patch embedding),
    as transformers finds them, whatever an instance may have overridden."""
    from transformers import PreTrainedModel

    base = model.get_base_model()
    text = type(base).get_input_embeddings(base)
    found = []
    for module in base.modules():
        if module is base or not isinstance(module, PreTrainedModel):
            continue
        try:
            embeddings = type(module).get_input_embeddings(module)
        except NotImplementedError:
            continue
        if embeddings is not None and embeddings is not text and embeddings not in found:
            found.append(embeddings)
    return found


def treat_the_vision_tower(trainer: Any, vision: str) -> None:
    """"trl": the tower as trl leaves it: savi's no_grad wrapper (`stages.dpo.keep_the_vision_tower_out_of_autograd`)
    undone, and trl's input-grad hook on its patch embedding (as a hook of the benchmark's own, so that it holds for
    the whole step). "trl" and "each": every row encoded on both passes, as trl's step does. "savi": nothing."""
    model = trainer.model
    if vision in ("trl", "each"):
        trainer.encode_once = False
    if vision == "trl":
        from stages.dpo import VISION_TOWERS

        def make_inputs_require_grads(module: Any, inputs: Any, output: Any) -> None:  # transformers' hook, verbatim
            output.requires_grad_(True)

        tower = next(m for name, m in model.named_modules() if name.endswith(VISION_TOWERS))
        vars(tower).pop("forward", None)  # back to the class's own forward, with autograd
        for embeddings in sub_model_embeddings(model):
            embeddings.register_forward_hook(make_inputs_require_grads)


def train_mode(mode: str, vision: str, folder: Path, workspace: Path, steps: int, dry_run: bool) -> dict[str, Any]:
    """Load the model through `build_trainer`, train `steps` steps, and return what was measured."""
    # trl is imported only here: the parent process never trains, and importing it costs seconds.
    from stages import dpo

    on_gpu = not dry_run
    run = open_run("bench", workspace)
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    pairs = [p for p in run.artifact("pairs", 1).read() if p.kept]
    model_cfg = ModelConfig(id=str(folder), device="cuda" if on_gpu else "cpu", **MODES[mode])
    cfg = dpo.TrainConfig(batch_size=1, grad_accum=1, max_steps=steps, gradient_checkpointing=True,
                          four_bit=model_cfg.load_in_4bit)
    # A real train_log writer, as `savi dpo` passes one (its callback runs every step); force: each mode rewrites it.
    writer = ArtifactWriter(run.artifact("train_log", 1), params={"bench_mode": mode, **asdict(cfg)}, inputs={},
                            force=True)
    result: dict[str, Any] = {"mode": mode, "vision": vision, "label": label(mode, vision),
                              "model_config": asdict(model_cfg), "train_config": asdict(cfg)}

    start = time.perf_counter()
    trainer = dpo.build_trainer(run, samples, pairs, cfg, model_cfg, None, run.path / "bench-checkpoints", writer)
    treat_the_vision_tower(trainer, vision)
    result["load_s"] = round(time.perf_counter() - start, 1)
    result["trainable_params"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result["base_dtype"] = str(trainer.model.get_base_model().dtype)
    tower = vision_tower(trainer.model)
    result["vision_tower_4bit_layers"] = sum(type(m).__name__ == "Linear4bit" for m in tower.modules())
    result.update(batch_shape(trainer))

    # Whether the tower's output needed grad in a training forward (the reference pass runs under no_grad).
    seen: list[bool] = []

    def note_requires_grad(module: Any, args: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            seen.append(requires_grad(output))

    watch = tower.register_forward_hook(note_requires_grad)

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
            watch.remove()
    result["train_wall_s"] = round(time.perf_counter() - start, 2)
    result["error"] = error
    result["vision_output_requires_grad"] = any(seen) if seen else None
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
    result["imported_but_absent_on_gpu_machine"] = [m for m in NOT_ON_THE_GPU_MACHINE if m in sys.modules]
    return result


# ---------------------------------------------------------------------------------------------------------------
# The parent: prepare, run one child per mode, report


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


def report(results: list[dict[str, Any]], setup: Setup, target_gb: float) -> tuple[str, dict[str, Any]]:
    """The markdown table and the summary (before/after and QLoRA/bf16 ratios, the verdict) for the JSON."""
    lines = []
    if setup.dry_run:
        lines += ["**DRY RUN on CPU with a shrunk config: memory is process RSS, not GPU memory; not a measurement.**",
                  "", "| mode | vision output requires grad | peak RSS (GiB) | s/step | video tokens | tokens per row "
                  "| trainable params |", "|---|---|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| mode | vision output requires grad | peak allocated (GiB) | peak reserved (GiB) "
                  "| peak device used (GiB) | weights (GiB) | s/step | video tokens | tokens per row "
                  "| trainable params |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "video_tokens" not in r:
            lines.append(f"| {r['label']} | failed: {r.get('error', 'no result')} |")
            continue
        note = f" ({r['error']})" if r.get("error") else ""
        seq = "/".join(str(n) for n in r["sequence_tokens"])
        grad = {True: "yes", False: "no", None: "-"}[r["vision_output_requires_grad"]]
        common = f"{fmt(r['s_per_step'])} | {r['video_tokens']:,} | {seq} | {r['trainable_params']:,}"
        if setup.dry_run:
            lines.append(f"| {r['label']}{note} | {grad} | {fmt(r['peak_rss_gib'])} | {common} |")
        else:
            lines.append(f"| {r['label']}{note} | {grad} | {fmt(r['peak_allocated_gib'])} "
                         f"| {fmt(r['peak_reserved_gib'])} | {fmt(r['peak_device_used_gib'])} "
                         f"| {fmt(r['weights_allocated_gib'])} | {common} |")

    ok = {(r["mode"], r["vision"]): r for r in results if "video_tokens" in r and not r.get("error")}
    summary: dict[str, Any] = {}
    keys = ("peak_rss_gib",) if setup.dry_run else ("peak_allocated_gib", "peak_reserved_gib", "peak_device_used_gib")
    names = {"peak_rss_gib": "peak RSS", "peak_allocated_gib": "peak allocated",
             "peak_reserved_gib": "peak reserved", "peak_device_used_gib": "peak device used"}
    lines.append("")
    for mode in MODES:
        savi = ok.get((mode, "savi"))
        if savi and savi["vision_output_requires_grad"]:
            summary[f"{mode}_savi_keeps_vision_in_autograd"] = True
            lines.append(f"- **{mode}: in savi's own step the vision tower's output requires grad: the fix is not "
                         "in effect.**")
        before, after = ok.get((mode, "trl")), savi
        if before and after:
            saved = {k: before[k] - after[k] for k in keys}
            summary[f"{mode}_saved_by_keeping_vision_out_gib"] = saved
            lines.append("- Keeping the vision tower out of autograd saves "
                         + ", ".join(f"{names[k]} {v:.2f} GiB" for k, v in saved.items())
                         + f" ({after['label']}, against {before['label']}).")
        each = ok.get((mode, "each"))
        if each and after:
            saved = {k: each[k] - after[k] for k in keys}
            summary[f"{mode}_encode_once"] = {"speedup": each["s_per_step"] / after["s_per_step"],
                                              "saved_gib": saved}
            speedup = each["s_per_step"] / after["s_per_step"]
            lines.append(f"- savi's step (each video encoded once, each pair's prompt shared by its replies): "
                         f"{speedup:.2f}x faster per step; "
                         + ", ".join(f"{names[k]} {v:.2f} GiB less" for k, v in saved.items())
                         + f" ({after['label']}, against {each['label']}).")
    if ("qlora", "savi") in ok and ("bf16-lora", "savi") in ok:
        summary["qlora_over_bf16"] = {k: ok[("qlora", "savi")][k] / ok[("bf16-lora", "savi")][k] for k in keys}
        lines.append("- QLoRA / bf16 LoRA: " + ", ".join(f"{names[k]} {v:.2f}"
                                                         for k, v in summary["qlora_over_bf16"].items()))
    judged = ok.get(("qlora", "savi"))
    judged = judged if judged and not judged["vision_output_requires_grad"] else None
    if setup.dry_run:
        lines.append(f"- Target (QLoRA step at most {target_gb:g} GB on the GPU): not judged in a dry run.")
    elif judged:
        reserved_gb = judged["peak_reserved_gib"] * GIB / GB
        summary["qlora_within_target"] = reserved_gb <= target_gb
        summary["qlora_target_judged_on"] = judged["label"]
        lines.append(f"- Target: QLoRA step with the vision tower out of autograd ({judged['label']}): peak reserved "
                     f"{reserved_gb:.2f} GB (device used {judged['peak_device_used_gib'] * GIB / GB:.2f} GB) at "
                     f"most {target_gb:g} GB: **{'MET' if summary['qlora_within_target'] else 'NOT MET'}**")
    else:
        lines.append("- Target: not judged (no QLoRA step with the vision tower out of autograd was measured).")
    if any(r.get("s_per_step_excludes_first") for r in results):
        lines.append("- s/step: mean over steps 2..N; step 1 (optimizer state creation, first kernel launches) "
                     "excluded as warm-up.")
    layers = {r["label"]: r["vision_tower_4bit_layers"] for r in results if "vision_tower_4bit_layers" in r}
    if any(layers.values()):
        lines.append(f"- 4-bit layers under the vision tower (the skip list should leave none): {layers}")
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

    start = time.perf_counter()
    folder, marker = qwen_7b.ensure_model_folder_in_child(args.cache, shrunk=setup.dry_run)
    say(f"model folder {folder} ({marker['params']:,} parameters) ready in {time.perf_counter() - start:.0f} s")
    config = json.loads((folder / "config.json").read_text())

    say(f"writing {args.videos} video(s) of {setup.frames} frames, {setup.size}x{setup.size}, and {args.pairs} "
        f"pairs with {args.answer_tokens}-token chosen answers")
    run = prepare_run(setup, args.work, folder, args.videos, args.pairs, args.answer_tokens)

    def train(mode: str, vision: str) -> dict[str, Any]:
        say(f"training {label(mode, vision)}: {args.steps} step(s) in a child process")
        out = args.work / f"result-{mode}-{vision}.json"
        out.unlink(missing_ok=True)
        argv = ["--child", "--mode", mode, "--vision", vision, "--folder", str(folder), "--workspace",
                str(run.path.parent), "--steps", str(args.steps), "--child-json", str(out)]
        status = run_child(argv + (["--dry-run-cpu"] if setup.dry_run else []), setup.dry_run)
        if out.is_file():
            return json.loads(out.read_text())
        return {"mode": mode, "vision": vision, "label": label(mode, vision),
                "error": f"child exited with status {status} (see its output above)"}

    results = [train(mode, vision) for mode, vision in variants(modes, args.vision_in_autograd)]

    table, summary = report(results, setup, args.target_gb)
    header = ("DRY RUN (CPU, shrunk config)" if setup.dry_run else
              f"{torch.cuda.get_device_name()}, Qwen2.5-VL-7B random weights")
    vision = config["vision_config"]
    described = (f"model: {marker['params']:,} parameters (text: {config['num_hidden_layers']} layers x "
                 f"{config['hidden_size']}, {config['num_attention_heads']} heads / {config['num_key_value_heads']} "
                 f"KV, MLP {config['intermediate_size']}, vocab {config['vocab_size']:,}; vision: {vision['depth']} "
                 f"blocks x {vision['hidden_size']}); {setup.frames} frames at {setup.size}x{setup.size}; batch 1 "
                 f"pair (2 rows: chosen, rejected); {args.steps} optimizer step(s) per mode")
    print(f"## savi dpo memory: {header}\n\n{described}\n\n{table}")

    absent = sorted({m for r in results for m in r.get("imported_but_absent_on_gpu_machine", [])})
    payload = {
        "benchmark": "bench_dpo_memory",
        "dry_run": setup.dry_run,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
                 "gpu": None if setup.dry_run else torch.cuda.get_device_name()},
        "model_folder": str(folder),
        "model": marker,
        "described": described,
        "config": config,
        "inputs": {"frames": setup.frames, "size": setup.size, "videos": args.videos, "pairs": args.pairs,
                   "answer_tokens": args.answer_tokens, "steps": args.steps},
        "target_gb": args.target_gb,
        "results": results,
        "summary": summary,
        "table": table,
        "imported_but_absent_on_gpu_machine": absent,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2))
    print(f"\nJSON: {args.json}")
    if absent:
        print(f"bench_dpo_memory: this path imported {', '.join(absent)}, which the GPU machine does not have")
        return 1
    return 0 if all("video_tokens" in r and not r.get("error") for r in results) else 1


def child(args: argparse.Namespace) -> int:
    result = train_mode(args.mode, args.vision, args.folder, args.workspace, args.steps, args.dry_run_cpu)
    args.child_json.write_text(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    default_root = Path("/tmp/savi-bench-dpo-memory")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="qlora,bf16-lora", help="comma-separated: qlora, bf16-lora")
    parser.add_argument("--vision-in-autograd", choices=("off", "on", "both", "all"), default="off",
                        help="put trl's input-grad hook back on the vision tower (on), or run both ways (both)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per mode (step 1 is warm-up if > 1)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default 32; dry run 8)")
    parser.add_argument("--size", type=int, default=None, help="frame side in pixels (default 448; dry run 112)")
    parser.add_argument("--answer-tokens", type=int, default=80, help="tokens of each chosen answer")
    parser.add_argument("--pairs", type=int, default=4, help="preference pairs in the scratch run")
    parser.add_argument("--videos", type=int, default=2, help="videos the pairs are spread over")
    parser.add_argument("--target-gb", type=float, default=12.0,
                        help="the QLoRA step's peak reserved memory must be at most this many GB (1e9 bytes)")
    parser.add_argument("--cache", type=Path, default=default_root / "models", help="model folders, reused")
    parser.add_argument("--work", type=Path, default=default_root / "work", help="scratch run (recreated)")
    parser.add_argument("--json", type=Path, default=Path("/tmp/savi-bench-dpo-memory.json"))
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="run the same code on CPU with the 7B config shrunk (a smoke test, not a measurement)")
    # Internal: how the parent starts its children.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--vision", choices=tuple(VISION), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.pairs < 1 or args.videos < 1 or args.answer_tokens < 1:
        parser.error("--steps, --pairs, --videos and --answer-tokens must be at least 1")
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
