"""Time per DPO step, side by side in one process: trl's stock step, the step that encodes each video once, savi's
step (each video encoded once, each prompt shared by its pair's two replies), and savi's step with VistaDPO's three
levels on.

Run from the repository root (CPU; a tiny model of the real Qwen2.5-VL configuration, built offline):

    .venv/bin/python benchmarks/bench_dpo_step.py
    # = --family qwen2_5_vl --frames 32 --size 448 --pairs 2 --answer-tokens 48 --repeats 5

What it measures
----------------
One DPO step is ``VideoDPOTrainer._compute_loss`` and the backward pass of its loss: trl's policy pass and
reference pass over the batch's rows, as ``trainer.train()`` runs them, without the optimizer (the same for every
variant). The trainer comes from ``stages.dpo.build_trainer`` (LoRA on a float32 base, no gradient checkpointing),
on ``--pairs`` pairs of one video of ``--frames`` frames of ``--size`` px (4,096 video tokens per row at the
defaults), written as ``benchmarks/bench_dpo_memory.py`` writes them:

* ``stock``: ``encode_once`` off: the vision tower (under no_grad, as savi keeps it) runs on every row of both
  passes, chosen and rejected, policy and reference: four encodings per pair, trl's step.
* ``once``: each distinct video encoded once (``stages.dpo.encode_videos_once``) and its features handed to every
  row of both passes; each reply still in a row of its own (``--no-shared-prompts``).
* ``shared``: savi's step: ``once``, and each pair's prompt run once, with both replies after it
  (``stages.dpo.share_prompts``): one row per pair instead of two.
* ``levels``: ``shared`` with ``--levels 1,0.5,0.5``: two more rows per pair (the chosen reply under the reversed
  temporal patches, and with its first four frames masked), from the same one encoding.

The variants are interleaved (stock, once, shared, levels, stock, ...) ``--repeats`` times after one untimed
warm-up each, so that a slow spell on a shared machine hits all four; the table shows the median seconds per step
and the ratios. Goals (issue: VistaDPO's hierarchy): savi's step at least 1.5x faster than the stock one
(``stock / shared``), and all three levels at most 1.3x the stock step's time (``levels / stock``).

What it can and cannot tell: the ratios depend on how the vision tower's cost compares with the language model's,
which a width- and depth-scaled model keeps only roughly (its vision tower and language model shrink by different
factors); on a 7B, the GPU check (``bench_dpo_memory.py --vision-in-autograd all``) measures time and peak memory
of the stock and the encode-once step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench_dpo_memory  # noqa: E402
from machine import cpu_model  # noqa: E402

VARIANTS = ("stock", "once", "shared", "levels")
GOALS = {"stock / shared": (1.5, "at least"), "levels / stock": (1.3, "at most")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from stages import dpo
    from stages.core.model import ModelConfig
    from stages.offline.tiny_model import build_tiny_model

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="savi-bench-dpo-step-"))
    folder = build_tiny_model(work / "model", args.family)
    setup = bench_dpo_memory.Setup(dry_run=True, frames=args.frames, size=args.size)
    run = bench_dpo_memory.prepare_run(setup, work / "bench", folder, 1, args.pairs, args.answer_tokens)
    samples = {s.video_id: s for s in run.artifact("samples").read()}
    pairs = run.artifact("pairs", 1).read()
    cfg = dpo.TrainConfig(batch_size=args.pairs, grad_accum=1, max_steps=1, gradient_checkpointing=False,
                          four_bit=False, lora_dropout=0.0, levels=(1.0, 0.5, 0.5))
    trainer = dpo.build_trainer(run, samples, pairs, cfg, ModelConfig(id=str(folder), device="cpu"), None,
                                work / "ckpt", None, keyframes={p.question_id: [0, 1, 2, 3] for p in pairs})
    examples = [dict(row) for row in trainer.train_dataset]
    with_levels = trainer._prepare_inputs(trainer.data_collator(examples))
    plain = trainer._prepare_inputs(dpo.VideoPreferenceCollator(trainer.processing_class, run, samples)(examples))
    video_tokens = int((plain["input_ids"][0] == trainer.model.config.video_token_id).sum())

    def step(variant: str) -> float:
        trainer.encode_once = variant != "stock"
        trainer.shared_prompts = variant in ("shared", "levels")
        batch = with_levels if variant == "levels" else plain
        trainer.model.zero_grad()
        start = time.perf_counter()
        trainer._compute_loss(trainer.model, dict(batch), return_outputs=False).backward()
        return time.perf_counter() - start

    for variant in VARIANTS:  # warm-up: first-call allocations and kernel choices
        step(variant)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            times[variant].append(step(variant))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{v} {times[v][-1]:.2f} s" for v in VARIANTS), flush=True)

    median = {v: statistics.median(times[v]) for v in VARIANTS}
    ratios = {"stock / once": median["stock"] / median["once"], "stock / shared": median["stock"] / median["shared"],
              "levels / stock": median["levels"] / median["stock"],
              "levels / shared": median["levels"] / median["shared"]}
    met = {name: ratios[name] >= goal if side == "at least" else ratios[name] <= goal
           for name, (goal, side) in GOALS.items()}
    print(f"\n{args.family} tiny model (real config, scaled), {args.pairs} pairs, {args.frames} frames of "
          f"{args.size} px ({video_tokens:,} video tokens per row), 1 thread, {cpu_model()}\n")
    print("| step | rows per pass | vision encodings | s/step (median) |\n|---|---:|---:|---:|")
    rows = {"stock": 2 * args.pairs, "once": 2 * args.pairs, "shared": args.pairs, "levels": 3 * args.pairs}
    encodings = {"stock": 4 * args.pairs, "once": 1, "shared": 1, "levels": 1}
    for v in VARIANTS:
        print(f"| {v} | {rows[v]} | {encodings[v]} | {median[v]:.2f} |")
    print()
    for name, ratio in ratios.items():
        goal = ""
        if name in GOALS:
            goal = f" (goal: {GOALS[name][1]} {GOALS[name][0]}) {'met' if met[name] else 'NOT MET'}"
        print(f"{name}: {ratio:.2f}{goal}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "times_s": times,
                                         "median_s": median, "ratios": ratios, "met": met,
                                         "video_tokens": video_tokens, "cpu": cpu_model()}, indent=2))
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
