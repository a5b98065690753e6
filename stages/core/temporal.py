"""Temporal perturbations of a video's sampled frames: the negatives of TimeWarp, TPO and TEMPLE, and the video
that `savi eval --perturb` shows a model to see whether it reads time at all.

A perturbation is an order: the positions (0-based, into the sampled frames) of the frames the model receives, in
the order it receives them. The receiving video keeps the sampled timestamps in their places (see
`model.Video.reordered`), so a reversed clip shows its last frame at its first frame's time: the model sees a
video that runs backwards, not the same video with its clock relabelled.

- reverse: the frames back to front.
- shuffle: a seeded permutation of the frames, never the identity (two frames can only be swapped).
- drop: a seeded contiguous span of a quarter of the frames (at least one), away from both ends, is cut; the rest
  keep their times, so the clip jumps over the gap.

The order is a pure function of the kind, the frame count and a key (savi's seed and the item's id), so a rerun
or a resumed stage perturbs every item as before, and the order is recorded beside what it produced.
"""

from __future__ import annotations

import random

from stages.core.settings import PERTURBATIONS


def frame_order(kind: str, frames: int, key: str) -> list[int]:
    """The positions of the `frames` sampled frames that the `kind` perturbation shows, in the order shown."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}: use {', '.join(PERTURBATIONS)}")
    identity = list(range(frames))
    if frames < 2:
        return identity  # one frame has no order to break and nothing to spare
    rng = random.Random(f"{kind}:{key}")  # a str seed hashes the same way in every process
    if kind == "reverse":
        return identity[::-1]
    if kind == "shuffle":
        order = identity[:]
        while order == identity:
            rng.shuffle(order)
        return order
    span = max(1, frames // 4)
    # Inside the clip where it can be: a cut at either end would leave a shorter clip with no jump in it.
    inside = frames - span >= 2
    start = rng.randrange(1, frames - span) if inside else rng.randrange(frames - span + 1)
    return identity[:start] + identity[start + span:]

