"""Time to score whole replies (`savi eval --protocol likelihood` on a benchmark whose options are full answers, as
the world's), side by side in one process: a question's options packed in one row after its prompt, against a row
per option.

Run from the repository root (CPU; a tiny model of the real Qwen2.5-VL configuration, built offline):

    .venv/bin/python benchmarks/bench_score_replies.py
    # = --family qwen2_5_vl --frames 16 --size 448 --questions 4 --options 4 --repeats 3

What it measures
----------------
``Policy.score_replies`` on ``--questions`` questions of ``--options`` whole replies each (a sentence of 8 to 12
words), each question with a video of its own (``--frames`` random frames of ``--size`` px; 2,048 video tokens a
prompt at the defaults), all in one batch:

* ``packed``: savi's scoring: each question's prompt, with its video, once, and every option after it in the same
  row (``stages/core/packing.py``).
* ``rows``: a row per option, each holding the whole prompt and its video (what savi does where the attention takes
  no mask, such as flash attention): ``takes_a_mask`` reports False.

The two are interleaved ``--repeats`` times after one untimed warm-up each; the table shows the median seconds and
the ratio ``rows / packed``, and the largest difference between the two's scores (float rounding only). The ratio
depends on how much of a row the prompt is; a width- and depth-scaled model keeps that share, not the balance
between its vision tower and its language model.
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

from machine import cpu_model  # noqa: E402

WORDS = "the red square moves slowly to the left edge while a blue circle stays near the top".split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--options", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np
    import torch

    from stages.core import model as runtime
    from stages.core.model import ModelConfig, Policy, Video
    from stages.offline.tiny_model import build_tiny_model

    torch.set_num_threads(1)
    folder = build_tiny_model(Path(tempfile.mkdtemp(prefix="savi-bench-score-")) / "model", args.family)
    policy = Policy.load(ModelConfig(id=str(folder), device="cpu", batch_size=args.questions))
    rng = np.random.default_rng(0)
    videos = [Video(frames=rng.integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8),
                    total_frames=args.frames, fps=1.0, indices=list(range(args.frames)))
              for _ in range(args.questions)]
    prompts = [f"Question {q}: what happens in the video, and in which direction?" for q in range(args.questions)]
    replies = [[" ".join(rng.choice(WORDS, size=8 + (q + o) % 5)).capitalize() + "." for o in range(args.options)]
               for q in range(args.questions)]
    masked = runtime.takes_a_mask

    def score(variant: str) -> tuple[float, list[list[float]]]:
        runtime.takes_a_mask = masked if variant == "packed" else (lambda model: False)
        try:
            start = time.perf_counter()
            scores = policy.score_replies(videos, prompts, replies)
            return time.perf_counter() - start, scores
        finally:
            runtime.takes_a_mask = masked

    variants = ("packed", "rows")
    results = {v: score(v)[1] for v in variants}  # warm-up: first-call allocations and kernel choices
    times: dict[str, list[float]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:
            times[variant].append(score(variant)[0])
        print(f"repeat {repeat + 1}: " + ", ".join(f"{v} {times[v][-1]:.2f} s" for v in variants), flush=True)
    median = {v: statistics.median(times[v]) for v in variants}
    difference = max(abs(a - b) for qa, qb in zip(results["packed"], results["rows"]) for a, b in zip(qa, qb))
    ratio = median["rows"] / median["packed"]
    print(f"\n{args.family} tiny model (real config, scaled), {args.questions} questions x {args.options} options, "
          f"{args.frames} frames of {args.size} px, 1 thread, {cpu_model()}\n")
    print("| scoring | rows | s (median) |\n|---|---:|---:|")
    print(f"| packed | {args.questions} | {median['packed']:.2f} |")
    print(f"| rows | {args.questions * args.options} | {median['rows']:.2f} |")
    print(f"\nrows / packed: {ratio:.2f}; largest score difference {difference:.2e}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "times_s": times,
                                         "median_s": median, "ratio": ratio, "max_score_difference": difference,
                                         "cpu": cpu_model()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
