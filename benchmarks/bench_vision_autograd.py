"""What autograd keeps for backward inside the frozen vision tower during one `savi dpo` step, at the real input
shape (32 frames of 448 px), with trl's input-grad hook on the tower and without it. Runs on CPU.

Run from the repository root:

    .venv/bin/python benchmarks/bench_vision_autograd.py
    # = --variants trl,savi --frames 32 --size 448 --answer-tokens 16 --threads 1
    #   --dir /tmp/savi-bench-vision-autograd --json /tmp/savi-bench-vision-autograd.json

Why
---
trl's DPOTrainer calls ``enable_input_require_grads()`` on a PEFT model trained with gradient checkpointing, and
transformers 5 hooks the input embeddings of every sub-model, the vision tower's patch embedding included. The
frozen tower then enters the autograd graph of every step: its checkpointed blocks keep their inputs for backward
and are recomputed in backward, for no gradient (nothing in the tower is trained). ``stages.dpo`` runs the tower
under no_grad (``keep_the_vision_tower_out_of_autograd``), which holds however often the hook is put back
(Trainer.train() and every reference pass of trl's step do). This benchmark measures what the tower in autograd
costs, and whether savi's step is free of it.

What it runs
------------
savi's tiny Qwen2.5-VL (``stages.offline.tiny_model.build_tiny_model``: the published configuration, text width 128,
vision width 64, 2 blocks of each) in a scratch run holding one video of ``--frames`` frames at ``--size`` px in
the run's frame store and one kept preference pair. ``stages.dpo.build_trainer`` builds the trainer as ``savi dpo``
does by default (4-bit NF4 base, on bitsandbytes' CPU kernels here; LoRA on the language model; gradient
checkpointing on, non-reentrant), then ``train()`` runs one optimizer step of that pair (the chosen and the
rejected row in one batch, each with the video: 2 x 16,384 patches at 32 x 448 px). Variants, each in a fresh
child process:

* ``trl`` ("before"): savi's no_grad wrapper undone, and trl's hook (transformers' ``make_inputs_require_grads``)
  on the vision tower's patch embedding, as trl leaves the model, held there for the whole step.
* ``savi`` ("after"): the trainer exactly as ``build_trainer`` returns it.

(``bench_dpo_memory.treat_the_vision_tower`` does this, for this benchmark and for the GPU one.)

What it measures
----------------
* **saved in the tower**: every tensor autograd saves for backward while the tower's ``forward`` runs, seen by a
  ``torch.autograd.graph.saved_tensors_hooks`` pack hook that is active for the whole step, switched on and off
  by forward pre/post hooks on the tower module (the one whose name ends with ``model.visual``). Counted in bytes
  of distinct storages.
* **kept until backward**: of those, the ones still held when ``backward()`` starts, i.e. by the autograd graph.
  This is the memory the tower adds to the step's activations, and the figure to compare with the GPU.
* **vision output requires grad**: whether the tower's output (the merged features) requires grad in the
  policy's forward.
* **blocks recomputed in backward**: forward calls of the tower blocks' MLPs during ``backward()``.
* **peak RSS increase**: the process's peak resident memory during ``train()`` minus its resident memory just
  before, sampled every 5 ms.

What the pack hook sees, and what it cannot
-------------------------------------------
PyTorch applies only the innermost ``saved_tensors_hooks``. Non-reentrant checkpointing (the transformers 5
default) pushes its own pack hook inside each checkpointed block, so the tensors saved *inside* a block's forward
never reach this benchmark's hook: they are not kept (the checkpoint stores an empty holder) and are recomputed in
backward instead. What the hook does see, inside the tower:

* each checkpointed block's *inputs*, which the checkpoint saves as saved tensors before pushing its own hook
  (with the default transformers 5 wrapping, the hidden states; the rotary cos/sin are bound into the
  recomputation closure as keyword arguments and not counted). They are saved whenever grad mode is on, in every
  variant; they are kept until backward only if something inside the block was recorded for backward, i.e. only
  when the block's input requires grad. Otherwise the checkpoint frame is dropped as soon as the block returns.
  This is why "saved" is not zero after the fix and "kept until backward" is.
* tensors saved by the tower's own operations outside the blocks (the patch embedding, the window permutation,
  the merger), when their inputs require grad.

Not covered: the transient memory of recomputing a block during backward (one block's activations at a time)
and the backward through the tower itself, both of which exist only when the tower is in autograd; the peak RSS
increase sees them, mixed with everything else the step allocates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_dpo_memory
from machine import cpu_model

VARIANTS = {
    "trl": "the tower in autograd, as trl leaves it (before)",
    "savi": "savi's build_trainer (after)",
}
QUESTION = "Describe how the object moves in this video."
CHOSEN = "The square moves from the left edge to the right edge of the frame, at a steady speed."
REJECTED = "A circle falls from the top of the frame and bounces twice near the bottom."
MIB = 2**20


# ---------------------------------------------------------------------------------------------------------------
# The scratch run


def prepare(directory: Path, frames: int, size: int, answer_tokens: int) -> tuple[Path, Path]:
    """A tiny Qwen2.5-VL folder and a run with one sampled video and one kept pair; returns both paths."""
    from transformers import AutoTokenizer

    from stages.core.records import Pair
    from stages.core.store import ArtifactWriter, open_run
    from stages.offline.tiny_model import build_tiny_model

    shutil.rmtree(directory, ignore_errors=True)
    model = build_tiny_model(directory / "model", "qwen2_5_vl")
    run = open_run("bench", directory / "runs")
    [sample] = bench_dpo_memory.write_sampled_videos(run, 1, frames, size)
    tokenizer = AutoTokenizer.from_pretrained(model)
    cut = bench_dpo_memory.text_of_tokens
    writer = ArtifactWriter(run.artifact("pairs", 1), params={"bench": True}, inputs={})
    writer.add(Pair(pair_id="p0", video_id=sample.video_id, question_id="q0", question=QUESTION,
                    chosen=cut(tokenizer, (CHOSEN,), answer_tokens),
                    rejected=cut(tokenizer, (REJECTED,), answer_tokens), chosen_clip=0.3, rejected_clip=0.2,
                    swapped=False, mode="critique", kept=True, drop_reason=None))
    writer.finish()
    return model, run.path


# ---------------------------------------------------------------------------------------------------------------
# One variant (in a child process)


class SavedInTower:
    """Tensors autograd saves while the vision tower's forward runs, and which of them backward still holds."""

    def __init__(self) -> None:
        self.inside = False
        self.in_backward = False
        self.saved: dict[int, tuple[int, weakref.ref, str]] = {}  # storage address -> (bytes, the tensor, what)
        self.calls = 0
        self.output_requires_grad: list[bool] = []
        self.recomputed = 0
        self.kept_bytes: int | None = None
        self.kept: list[tuple[int, str]] = []

    def pack(self, tensor: Any) -> Any:
        if self.inside:
            storage = tensor.untyped_storage()
            what = f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
            self.saved.setdefault(storage.data_ptr(), (storage.nbytes(), weakref.ref(tensor), what))
        return tensor  # kept as is: the measurement must not change what autograd holds

    def unpack(self, tensor: Any) -> Any:
        return tensor

    def before_tower(self, module: Any, args: Any) -> None:
        self.inside = True
        self.calls += 1

    def after_tower(self, module: Any, args: Any, output: Any) -> None:
        import torch

        self.inside = False
        if torch.is_grad_enabled():  # the policy's forward; the reference's runs under no_grad
            self.output_requires_grad.append(bool(output.pooler_output.requires_grad))

    def block_ran(self, module: Any, args: Any) -> None:
        if self.in_backward:
            self.recomputed += 1

    def backward_starts(self) -> None:
        """What the graph still holds of the tower's saved tensors, taken as backward starts."""
        kept = [(size, what) for size, ref, what in self.saved.values() if ref() is not None]
        self.kept_bytes = sum(size for size, _ in kept)
        self.kept = sorted(kept, reverse=True)
        self.in_backward = True

    @property
    def saved_bytes(self) -> int:
        return sum(size for size, _, _ in self.saved.values())


class PeakRss:
    """Peak resident memory of this process while the block runs, sampled from a thread."""

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self.process, self.interval_s, self.peak = psutil.Process(), interval_s, 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def measure(variant: str, model: Path, run_path: Path) -> dict[str, Any]:
    """Build the trainer as `savi dpo` does, apply the variant, run one step and return what was seen."""
    import gc

    import torch

    from stages import dpo
    from stages.core.model import ModelConfig
    from stages.core.store import open_run

    run = open_run(run_path.name, run_path.parent)
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    pairs = run.artifact("pairs", 1).read()
    cfg = dpo.TrainConfig(max_steps=1, grad_accum=1, batch_size=1)  # savi's defaults: 4-bit, checkpointing on
    model_cfg = ModelConfig(id=str(model), device="cpu", load_in_4bit=cfg.four_bit)
    trainer = dpo.build_trainer(run, samples, pairs, cfg, model_cfg, None, run.path / f"ckpt-{variant}", None)
    base = trainer.model.get_base_model()
    name, tower = next((n, m) for n, m in trainer.model.named_modules() if n.endswith("model.visual"))
    bench_dpo_memory.treat_the_vision_tower(trainer, variant)

    seen = SavedInTower()
    tower.register_forward_pre_hook(seen.before_tower)
    tower.register_forward_hook(seen.after_tower)
    for block in tower.blocks:
        # The checkpoint wraps a block's `forward`, so the block's own hooks do not run again on recomputation;
        # its MLP's do.
        block.mlp.register_forward_pre_hook(seen.block_ran)
    backward = trainer.accelerator.backward

    def backward_watched(loss: Any, **kwargs: Any) -> Any:
        seen.backward_starts()
        try:
            return backward(loss, **kwargs)
        finally:
            seen.in_backward = False

    trainer.accelerator.backward = backward_watched
    gc.collect()
    start = time.perf_counter()
    with PeakRss() as rss, torch.autograd.graph.saved_tensors_hooks(seen.pack, seen.unpack):
        trainer.train()
    wall = time.perf_counter() - start
    grid = trainer.data_collator([dict(trainer.train_dataset[0])])["video_grid_thw"].tolist()
    vision = base.config.vision_config
    return {
        "variant": variant,
        "description": VARIANTS[variant],
        "tower": name,
        "hooked_embeddings": [n for n, m in trainer.model.named_modules()
                              if any("make_inputs_require_grads" in getattr(h, "__name__", "")
                                     for h in m._forward_hooks.values())],
        "video_grid_thw": grid,
        "patches": sum(t * h * w for t, h, w in grid),
        "vision": {"depth": vision.depth, "hidden_size": vision.hidden_size},
        "dtype": str(base.dtype).removeprefix("torch."),
        "tower_calls": seen.calls,
        "vision_output_requires_grad": any(seen.output_requires_grad),
        "saved_tensors": len(seen.saved),
        "saved_bytes": seen.saved_bytes,
        "kept_until_backward_bytes": seen.kept_bytes,
        "kept_until_backward": [f"{what}: {size:,} B" for size, what in seen.kept],
        "blocks_recomputed_in_backward": seen.recomputed,
        "peak_rss_increase_bytes": rss.peak - rss.start,
        "step_wall_s": round(wall, 2),
        "loss": next((h["loss"] for h in trainer.state.log_history if "loss" in h), None),
    }


# ---------------------------------------------------------------------------------------------------------------
# The parent


def per_block_bytes(result: dict[str, Any], bytes_per_value: int) -> int:
    """Bytes of one block's input hidden states for the whole batch: every patch of both rows, at the tower's width."""
    return result["patches"] * result["vision"]["hidden_size"] * bytes_per_value


def table(results: list[dict[str, Any]]) -> str:
    head = ["", *(f"{r['variant']}: {r['description']}" for r in results)]
    rows = [
        ("vision output requires grad", lambda r: "yes" if r["vision_output_requires_grad"] else "no"),
        ("saved in the tower (MiB)", lambda r: f"{r['saved_bytes'] / MIB:.2f}"),
        ("kept until backward (MiB)", lambda r: f"{r['kept_until_backward_bytes'] / MIB:.2f}"),
        ("blocks recomputed in backward", lambda r: str(r["blocks_recomputed_in_backward"])),
        ("peak RSS increase in the step (MiB)", lambda r: f"{r['peak_rss_increase_bytes'] / MIB:.0f}"),
        ("step wall time (s)", lambda r: f"{r['step_wall_s']:.1f}"),
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(results)]
    lines += ["| " + " | ".join([name, *(cell(r) for r in results)]) + " |" for name, cell in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="trl,savi", help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--frames", type=int, default=32, help="frames of the video")
    parser.add_argument("--size", type=int, default=448, help="frame side in pixels")
    parser.add_argument("--answer-tokens", type=int, default=16, help="tokens of each answer")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 keeps a shared machine from stalling the step (0: torch's default)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/savi-bench-vision-autograd"), help="scratch folder")
    parser.add_argument("--json", type=Path, default=Path("/tmp/savi-bench-vision-autograd.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: use {', '.join(VARIANTS)}")

    if args.child:  # --child VARIANT: one measurement, its JSON on stdout's last line
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.child, args.dir / "model", args.dir / "runs" / "bench")))
        return 0

    start = time.perf_counter()
    prepare(args.dir, args.frames, args.size, args.answer_tokens)
    # bitsandbytes would put a 4-bit model on a visible GPU whatever savi asks; this is a CPU measurement.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = []
    for variant in variants:
        print(f"[bench-vision-autograd] {variant}: one DPO step at {args.frames} frames of {args.size} px",
              file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv),
                               "--child", variant], env=env, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            print(f"bench_vision_autograd: the {variant} child failed (status {done.returncode})")
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    first = results[0]
    print(f"savi dpo step, tiny Qwen2.5-VL (vision: {first['vision']['depth']} blocks of width "
          f"{first['vision']['hidden_size']}, {first['dtype']} on CPU, 4-bit base, gradient checkpointing): "
          f"{args.frames} frames of {args.size} px, grid {first['video_grid_thw']} = {first['patches']:,} patches "
          f"through the tower per step\n")
    print(table(results))
    one_block = per_block_bytes(first, 4 if first["dtype"] == "float32" else 2)
    print(f"\none block's input hidden states for the batch: {first['patches']:,} patches x "
          f"{first['vision']['hidden_size']} x {4 if first['dtype'] == 'float32' else 2} B = {one_block / MIB:.2f} MiB")
    for r in results:
        if r["kept_until_backward_bytes"]:
            print(f"{r['variant']}: kept until backward = {r['kept_until_backward_bytes'] / one_block:.2f} block "
                  f"inputs ({r['vision']['depth']} blocks in the tower)")
    machine = (f"{cpu_model()}, {os.cpu_count()} CPUs, torch threads "
               f"{args.threads or 'default'}, Python {platform.python_version()}, "
               f"load average {os.getloadavg()[0]:.1f}; {time.perf_counter() - start:.0f} s in all")
    print(f"machine: {machine}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "bench_vision_autograd",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": {"frames": args.frames, "size": args.size, "answer_tokens": args.answer_tokens},
        "machine": machine,
        "one_block_input_bytes": one_block,
        "results": results,
        "table": table(results),
    }, indent=2))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
