"""Generation throughput of savi's model runtime, batched against one prompt at a time.

Run from the repository root:

    # CPU (or whatever device "auto" finds): a small random Qwen2.5-VL, 16 prompts, batch sizes 1/4/8/16
    .venv/bin/python benchmarks/bench_generate.py
    # = --preset small --frames 8 --size 112 --prompts 16 --batch-sizes 1,4,8,16 --max-new-tokens 64 --repeats 2
    #   --threads 0 --json /tmp/savi-bench-generate.json

    # GPU only: a random-weight Qwen2.5-VL-7B (the published config), bf16, 32 frames at 448x448, batch 1/8/16
    .venv/bin/python benchmarks/bench_generate.py --preset qwen2.5-vl-7b

    # The 7B preset's code path on CPU, with the 7B config shrunk to 2 layers and tiny widths (a smoke test)
    .venv/bin/python benchmarks/bench_generate.py --preset qwen2.5-vl-7b --dry-run-cpu

    # What `benchmarks/gpu_check.sh` runs (one repeat, to fit its time budget)
    .venv/bin/python benchmarks/bench_generate.py --preset qwen2.5-vl-7b --repeats 1

What it measures
----------------
``stages.core.model.Policy``, the runtime every savi stage generates with, loaded by ``Policy.load`` from a model
folder exactly as a user's model is. The same N (video, prompt) pairs are passed to ``Policy.generate`` with
``Policy.batch_size`` set to each batch size in turn; greedy decoding (``Decoding(max_new_tokens=...,
temperature=0)``), ``--max-new-tokens`` new tokens per prompt. For each run: wall time of the ``generate`` call,
generated tokens (the sum of ``Generation.num_tokens``, i.e. what the runtime kept, not assumed), tokens/s,
prompts/s, the peak resident memory of the process during the run (sampled every 20 ms with psutil) and, on CUDA,
``torch.cuda.max_memory_allocated``.
Each configuration runs ``--repeats`` times; the batch sizes are interleaved (1,4,8,16 then 16,8,4,1, ...) so that
anything else on the machine slows them alike, and the table shows medians plus the ratio
tokens/s(batch B) / tokens/s(batch 1). One untimed warm-up call per batch size comes first.

The model has random weights (no hub here, and timing does not need trained ones). A random model would hit
end-of-sequence at an arbitrary step, and in a batch the rows that stop early still ride along until the longest
one ends, so the comparison would depend on luck. The benchmark therefore sets ``min_new_tokens`` on the loaded
model's generation config (``Decoding`` has no such setting, and ``transformers`` fills every setting the
``GenerationConfig`` that ``Policy`` passes leaves unset from the model's): every prompt then generates exactly
``--max-new-tokens`` tokens unless the model emits a token the runtime treats as a stop and ``min_new_tokens``
does not suppress; the counts come from ``Generation.num_tokens`` either way.

Presets
-------
* ``small`` (default): the tokenizer and processor of ``stages.offline.tiny_model`` (a byte-level BPE of 384 tokens),
  with a bigger Qwen2.5-VL built from the published config: text hidden 512, 8 layers, 8 heads, 4 KV heads,
  intermediate 1536; vision depth 4, hidden 256 (all flags); the tiny vocabulary. About 32 M parameters. The
  processor keeps the published per-frame pixel budget, so ``--size`` frames reach the model at that size
  (112x112 -> 64 visual tokens per 8 frames).
* ``qwen2.5-vl-7b``: the published Qwen2.5-VL-7B-Instruct config (8.29 B parameters) with random bf16 weights,
  in the model folder ``benchmarks/qwen_7b.py`` builds (shared with the other GPU benchmarks), on CUDA, 32 frames
  at 448x448 (4,096 visual tokens per prompt), 16 prompts, batch sizes 1, 8 and 16, 64 new tokens. Without CUDA
  it prints one line and exits with status 2. The tokenizer is still the tiny one (its special-token ids go into
  the config in place of Qwen's); its 384-token BPE splits words finer than Qwen's, so the text part of a prompt
  is more tokens than with the real tokenizer, but still small beside the 4,096 visual ones. The vocabulary and
  output head keep the real 152,064 rows. ``--dry-run-cpu`` runs the same function on CPU with the config shrunk
  (``qwen_7b.SHRUNK_TEXT`` / ``SHRUNK_VISION``), 4 frames of 112 px, 16 prompts at batch sizes 1, 8 and 16 and 4
  new tokens, so the path is exercised without a GPU (and fails if it imported duckdb, PyAV, decord or open_clip,
  which the GPU machine does not have).

CPU threads: ``--threads 0`` keeps torch's default of one thread per core, as savi runs. On a machine that is
busy with other work those threads stall waiting for each other at every operator, which slows small batches far
more than large ones; ``--threads 1`` gives steadier figures there.

Model folders are cached under ``--cache`` (keyed by their config) and reused. The frames are drawn with numpy
(``qwen_7b.frames``: a square crossing a noisy background) into the ``Video`` objects the stages pass to
``Policy``; decoding is not part of what is timed, and the GPU machine has no video decoder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import qwen_7b

from stages.core.model import Decoding, Generation, ModelConfig, Policy, Video

# What the GPU machine lacks; a dry run fails if any of them was imported on this path.
NOT_ON_THE_GPU_MACHINE = ("duckdb", "av", "decord", "open_clip")

# ---------------------------------------------------------------------------------------------------------------
# Model shapes

@dataclass(frozen=True)
class Preset:
    """Everything that differs between the presets; the measuring code is the same for all."""

    name: str
    dtype: str  # ModelConfig.dtype
    device: str  # ModelConfig.device
    frames: int
    size: int
    prompts: int
    batch_sizes: list[int]
    max_new_tokens: int
    repeats: int
    text: dict[str, Any] = field(default_factory=dict)  # the small preset's top-level overrides of the config
    vision: dict[str, Any] = field(default_factory=dict)  # its vision_config overrides
    dry_run: bool = False


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim / 2 rotary pairs into (time, height, width) sections in Qwen's 1:1.5:1.5 proportion."""
    pairs = head_dim // 2
    spatial = pairs * 3 // 8
    return [pairs - 2 * spatial, spatial, spatial]


def small_preset(args: argparse.Namespace) -> Preset:
    head_dim = args.hidden // args.heads
    text = {
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "max_window_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "intermediate_size": args.intermediate,
        "rope_theta": 1e4,
        "rope_scaling": {"type": "mrope", "mrope_section": mrope_section(head_dim)},
    }
    vision = {
        "depth": args.vision_depth,
        "hidden_size": args.vision_hidden,
        "num_heads": max(1, args.vision_hidden // 64),
        "intermediate_size": 4 * args.vision_hidden,
        "out_hidden_size": args.hidden,
        # 112-px windows (8x8 patches) and the last block on full attention, as in the real model.
        "window_size": 112,
        "fullatt_block_indexes": [args.vision_depth - 1],
    }
    return Preset("small", dtype=args.dtype, device=args.device, frames=args.frames, size=args.size,
                  prompts=args.prompts, batch_sizes=args.batch_sizes, max_new_tokens=args.max_new_tokens,
                  repeats=args.repeats, text=text, vision=vision)


def qwen7b_preset(args: argparse.Namespace) -> Preset:
    if not args.dry_run_cpu:
        return Preset("qwen2.5-vl-7b", dtype="bfloat16", device="cuda", frames=32, size=448, prompts=args.prompts,
                      batch_sizes=[1, 8, 16], max_new_tokens=64, repeats=args.repeats)
    # The shared shrunk folder; small frames and few tokens, but the same prompts and batch sizes.
    return Preset("qwen2.5-vl-7b-dry-run-cpu", dtype="float32", device="cpu", frames=4, size=112,
                  prompts=args.prompts, batch_sizes=[1, 8, 16], max_new_tokens=4, repeats=1, dry_run=True)


# ---------------------------------------------------------------------------------------------------------------
# The model folder


def model_folder(preset: Preset, cache: Path) -> tuple[Path, int]:
    """The preset's model folder (built if missing) and its parameter count."""
    if preset.name != "small":
        folder, marker = qwen_7b.ensure_model_folder_in_child(cache, shrunk=preset.dry_run)
        return folder, marker["params"]
    tiny = qwen_7b.tiny_folder(cache)
    config = qwen_7b.config(tiny, preset.text, preset.vision, tiny_vocabulary=True)
    key = hashlib.sha256(json.dumps([config, preset.dtype], sort_keys=True).encode()).hexdigest()
    folder = cache / f"small-{key[:12]}"
    if not (folder / "bench-model.json").is_file():
        qwen_7b.build_folder(folder, config, "cpu", tiny)
    return folder, json.loads((folder / "bench-model.json").read_text())["params"]


# ---------------------------------------------------------------------------------------------------------------
# Inputs

# Shaped like savi's own ask/answer/critique prompts (a few sentences each), with different lengths so that a
# batch needs left padding, as real batches do.
PROMPTS: tuple[str, ...] = (
    "Write 3 questions about the spatial layout of the scene: where the objects are, which is left or right of "
    "which, what is in front of or behind what, and their colours and sizes. Each question must be answerable "
    "from the video alone. Reply with a JSON list of 3 strings and nothing else.",
    "Write 2 questions about the order of events in this video: what happens first, what happens after a given "
    "moment, and how the objects change during the clip. Reply with a JSON list of strings.",
    "Answer the question using only what can be seen in the video, in one or two sentences. Question: which "
    "object moves from the left side of the frame to the right side, and what colour is it?",
    "Describe the video in detail: the background, every object that appears, its colour and shape, where it "
    "starts, where it goes and where it ends up. Mention anything that changes between the first and the last "
    "frames, and do not describe anything that cannot be seen.",
    "Here is a question about the video and an answer to it. Question: how many objects are visible at the end "
    "of the clip? Answer: two. Is the answer correct? Explain briefly, then write VERDICT: correct or VERDICT: "
    "wrong on the last line.",
    "Write 4 questions that start with \"How\" about the way things move in this video: how fast, in which "
    "direction, and how the scene develops from start to end. Reply with a JSON list of 4 strings.",
)

def make_videos(count: int, frames: int, size: int) -> list[Video]:
    """`count` videos of `frames` frames each, as `savi sample` would hand them to the model (every other frame of
    a clip twice as long at 12 fps)."""
    return [Video(frames=qwen_7b.frames(frames, size, seed=i), total_frames=2 * frames, fps=12.0,
                  indices=[2 * k + 1 for k in range(frames)]) for i in range(count)]


def make_prompts(count: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(count)]


# ---------------------------------------------------------------------------------------------------------------
# Measuring


class PeakRss:
    """Peak resident memory of this process while the block runs, sampled from a thread.

    ru_maxrss alone cannot tell the runs apart: it is the peak over the whole process, model loading included.
    """

    def __init__(self, interval_s: float = 0.02):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._process = psutil.Process()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


@dataclass
class Run:
    batch_size: int
    repeat: int
    wall_s: float
    prompts: int
    tokens: int  # sum of Generation.num_tokens
    finished: int  # rows that stopped at a stop token before max_new_tokens
    peak_rss_mib: float
    peak_gpu_mib: float | None
    batch_size_after: int  # Policy halves its batch size on CUDA out-of-memory; this shows if it did
    outputs_digest: str  # of the generated texts, to compare batched output with batch-1 output

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def digest(generations: list[Generation]) -> list[str]:
    return [hashlib.sha256(g.text.encode()).hexdigest()[:12] for g in generations]


def generate_once(policy: Policy, videos: list[Video], prompts: list[str], batch_size: int,
                  max_new_tokens: int) -> tuple[float, list[Generation], float, float | None]:
    """One timed Policy.generate call; returns wall time, generations, peak RSS MiB and peak GPU MiB."""
    import torch

    on_cuda = policy.model.device.type == "cuda"
    policy.batch_size = batch_size  # what Policy.generate slices by; set each time, as OOM halving may lower it
    # See the module docstring: every prompt generates exactly max_new_tokens, whatever the random weights say.
    policy.model.generation_config.min_new_tokens = max_new_tokens
    keys = [f"bench-{i}" for i in range(len(prompts))]
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRss() as rss:
        start = time.perf_counter()
        generations = policy.generate(videos, prompts, keys=keys,
                                      decoding=Decoding(max_new_tokens=max_new_tokens, temperature=0.0))
        if on_cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None
    return wall, generations, rss.peak / 2**20, gpu


def measure(policy: Policy, videos: list[Video], prompts: list[str], preset: Preset) -> list[Run]:
    # Warm-up: the first call at each batch shape pays for one-time work (kernel selection, allocator growth,
    # lazy imports) that a long-running stage pays once and a benchmark must not count.
    for batch_size in preset.batch_sizes:
        n = min(batch_size, len(prompts))
        generate_once(policy, videos[:n], prompts[:n], batch_size, max_new_tokens=4)

    runs = []
    for repeat in range(preset.repeats):
        # Alternate the order (1,4,8,16 then 16,8,4,1) so a slow drift in machine load does not favour one end.
        order = preset.batch_sizes if repeat % 2 == 0 else preset.batch_sizes[::-1]
        for batch_size in order:
            wall, generations, rss, gpu = generate_once(policy, videos, prompts, batch_size, preset.max_new_tokens)
            run = Run(batch_size=batch_size, repeat=repeat, wall_s=wall, prompts=len(generations),
                      tokens=sum(g.num_tokens for g in generations),
                      finished=sum(g.finished for g in generations), peak_rss_mib=rss, peak_gpu_mib=gpu,
                      batch_size_after=policy.batch_size, outputs_digest=",".join(digest(generations)))
            runs.append(run)
            print(f"  repeat {repeat + 1} batch {batch_size:>2}: {wall:7.2f} s, {run.tokens} tokens, "
                  f"{run.tokens_per_s:8.1f} tokens/s", flush=True)
    return runs


def summarize(runs: list[Run], batch_sizes: list[int]) -> list[dict[str, Any]]:
    reference = [r for r in runs if r.batch_size == batch_sizes[0]]
    ref_texts = reference[0].outputs_digest.split(",")
    ref_tps = statistics.median(r.tokens_per_s for r in reference)
    rows = []
    for batch_size in batch_sizes:
        mine = [r for r in runs if r.batch_size == batch_size]
        tps = statistics.median(r.tokens_per_s for r in mine)
        gpu = [r.peak_gpu_mib for r in mine if r.peak_gpu_mib is not None]
        same = sum(a == b for a, b in zip(mine[0].outputs_digest.split(","), ref_texts, strict=True))
        rows.append({
            "batch_size": batch_size,
            "wall_s": statistics.median(r.wall_s for r in mine),
            "tokens": statistics.median(r.tokens for r in mine),
            "tokens_per_s": tps,
            "prompts_per_s": statistics.median(r.prompts / r.wall_s for r in mine),
            "speedup_vs_first": tps / ref_tps,
            "peak_rss_mib": max(r.peak_rss_mib for r in mine),
            "peak_gpu_mib": max(gpu) if gpu else None,
            "same_text_as_first": f"{same}/{len(ref_texts)}",
            "batch_size_after": min(r.batch_size_after for r in mine),
            "runs_s": [round(r.wall_s, 3) for r in mine],
        })
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    first = rows[0]["batch_size"]
    gpu = any(row["peak_gpu_mib"] is not None for row in rows)
    header = ["batch", "wall s (median)", "tokens", "tokens/s", "prompts/s", f"tokens/s vs batch {first}",
              "peak RSS MiB"] + (["peak GPU MiB"] if gpu else []) + [f"same text as batch {first}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for row in rows:
        cells = [str(row["batch_size"]), f"{row['wall_s']:.2f}", f"{row['tokens']:g}", f"{row['tokens_per_s']:.1f}",
                 f"{row['prompts_per_s']:.3f}", f"**{row['speedup_vs_first']:.2f}x**", f"{row['peak_rss_mib']:.0f}"]
        if gpu:
            cells.append(f"{row['peak_gpu_mib']:.0f}")
        cells.append(row["same_text_as_first"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------


def parse_batch_sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=["small", "qwen2.5-vl-7b"], default="small",
                        help="small: a ~32M random model on any device; qwen2.5-vl-7b: the 7B shape, CUDA only")
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="with --preset qwen2.5-vl-7b: run its code path on CPU with a shrunk config")
    parser.add_argument("--frames", type=int, default=8, help="frames per video (small preset)")
    parser.add_argument("--size", type=int, default=112, help="frame width and height in pixels (small preset)")
    parser.add_argument("--prompts", type=int, default=16, help="number of (video, prompt) pairs per run")
    parser.add_argument("--batch-sizes", type=parse_batch_sizes, default=[1, 4, 8, 16],
                        help="comma-separated; the first is the reference of the ratio (small preset)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="(small preset)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512, help="text hidden size (small preset)")
    parser.add_argument("--layers", type=int, default=8, help="text layers (small preset)")
    parser.add_argument("--heads", type=int, default=8, help="attention heads (small preset)")
    parser.add_argument("--kv-heads", type=int, default=4, help="key/value heads (small preset)")
    parser.add_argument("--intermediate", type=int, default=1536, help="text MLP width (small preset)")
    parser.add_argument("--vision-depth", type=int, default=4, help="vision blocks (small preset)")
    parser.add_argument("--vision-hidden", type=int, default=256, help="vision width (small preset)")
    parser.add_argument("--device", default="auto", help="ModelConfig.device (small preset)")
    parser.add_argument("--dtype", default="auto", help="ModelConfig.dtype (small preset)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0 keeps torch's default (one per core), which is what savi uses")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/savi-bench-generate"),
                        help="model folders and clips are written and reused here")
    parser.add_argument("--json", type=Path, default=Path("/tmp/savi-bench-generate.json"),
                        help="raw results are written here")
    args = parser.parse_args(argv)
    if args.dry_run_cpu and args.preset != "qwen2.5-vl-7b":
        parser.error("--dry-run-cpu only applies to --preset qwen2.5-vl-7b")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        parser.error("--hidden must be a multiple of --heads, and --heads of --kv-heads")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    if args.preset == "qwen2.5-vl-7b" and not args.dry_run_cpu and not torch.cuda.is_available():
        print("bench_generate: --preset qwen2.5-vl-7b needs a CUDA GPU and none is available here "
              "(add --dry-run-cpu to exercise the code path on CPU with a shrunk config)")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    preset = small_preset(args) if args.preset == "small" else qwen7b_preset(args)

    started = time.perf_counter()
    folder, params = model_folder(preset, args.cache)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    policy = Policy.load(ModelConfig(id=str(folder), dtype=preset.dtype, device=preset.device))
    load_s = time.perf_counter() - started
    device = str(policy.model.device)
    dtype = str(policy.model.dtype).removeprefix("torch.")
    print(f"model: {preset.name}, {params:,} parameters, {dtype} on {device}, folder {folder} "
          f"(built or reused in {build_s:.1f} s, loaded in {load_s:.1f} s); torch threads {torch.get_num_threads()}")
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    if device == "cpu" and threads > 1 and load + threads > (os.cpu_count() or 1) + 0.5:
        # torch's CPU threads wait on each other at every operator; with other work on the cores they stall, and
        # the smallest batches (the most operators per token) suffer most, which inflates the batching ratios.
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores before starting; with "
              f"{threads} torch threads the timings will be noisy (--threads 1 is steadier)")

    videos = make_videos(preset.prompts, preset.frames, preset.size)
    prompts = make_prompts(preset.prompts)
    probe = policy.processor(text=[policy.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": p}]}],
        tokenize=False, add_generation_prompt=True) for p in prompts[:len(PROMPTS)]],
        videos=[v.frames for v in videos[:len(PROMPTS)]], do_sample_frames=False, padding=True)
    lengths = [sum(mask) for mask in probe["attention_mask"]]
    grid = probe["video_grid_thw"][0]
    visual_tokens = math.prod(int(x) for x in grid) // 4  # 2x2 patches merge into one LLM token
    print(f"inputs: {preset.prompts} prompts, {preset.frames} frames of {preset.size}x{preset.size} each "
          f"({visual_tokens} visual tokens), prompt lengths {min(lengths)}-{max(lengths)} tokens; "
          f"max_new_tokens {preset.max_new_tokens}, greedy")

    runs = measure(policy, videos, prompts, preset)
    rows = summarize(runs, preset.batch_sizes)
    table = markdown_table(rows)
    print()
    print(table)
    print()
    first = preset.batch_sizes[0]
    print(f"ratios tokens/s vs batch {first}: "
          + ", ".join(f"batch {r['batch_size']} {r['speedup_vs_first']:.2f}x" for r in rows[1:]))
    lowered = [r["batch_size"] for r in rows if r["batch_size_after"] < r["batch_size"]]
    if lowered:
        print(f"note: Policy lowered the batch size after CUDA out-of-memory for batch sizes {lowered}")

    absent = [m for m in NOT_ON_THE_GPU_MACHINE if m in sys.modules]
    report = {
        "benchmark": "bench_generate",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "load_average": os.getloadavg()},
        "preset": asdict(preset),
        "model": {"folder": str(folder), "params": params, "dtype": dtype, "device": device,
                  "load_s": round(load_s, 1)},
        "inputs": {"prompt_tokens_min": int(min(lengths)), "prompt_tokens_max": int(max(lengths)),
                   "visual_tokens_per_video": visual_tokens},
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "summary": rows,
        "runs": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in runs],
        "table": table,
        "imported_but_absent_on_gpu_machine": absent,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"raw results: {args.json}")
    if preset.dry_run and absent:
        print(f"bench_generate: this path imported {', '.join(absent)}, which the GPU machine does not have")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
