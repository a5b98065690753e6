"""How sure a figure is: a confidence interval for an accuracy, and the exact test and interval for a change
between two models answering the same questions.

Benchmarks here are small (hundreds of questions, often fewer), so a difference of a few points can be chance.
Two models scored on the same questions are compared pairwise: only the questions where they disagree carry
information, which is what McNemar's test and the paired bootstrap use. Plain Python and numpy; no SciPy.

Example:
    >>> [round(x, 4) for x in wilson_interval(50, 100)]
    [0.4038, 0.5962]
    >>> mcnemar_exact(*discordant([True, False, False], [False, True, True]))
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z_95 = 1.959963984540054  # the normal quantile at 0.975: a two-sided 95% interval
BOOTSTRAP_RESAMPLES = 10_000


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) for an accuracy of `correct` out of `total`.

    Unlike the normal approximation (p +- z*sqrt(p(1-p)/n)) it stays inside [0, 1] and is not zero-width at
    0% or 100%, which small benchmarks hit. With no questions nothing is known: (0.0, 1.0).
    """
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be between 0 and total; got {correct} of {total}")
    if total == 0:
        return 0.0, 1.0
    p, z2 = correct / total, z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    # At 0 or `total` correct one end is exactly 0 or 1; rounding must not push it past.
    return max(0.0, centre - half), min(1.0, centre + half)


def discordant(before: Sequence[bool], after: Sequence[bool]) -> tuple[int, int]:
    """The questions two models disagree on, paired by position: (b, c), where b were right before and wrong
    after, and c wrong before and right after."""
    if len(before) != len(after):
        raise ValueError(f"paired results need the same questions; got {len(before)} and {len(after)}")
    b = sum(1 for x, y in zip(before, after) if x and not y)
    c = sum(1 for x, y in zip(before, after) if y and not x)
    return b, c


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for `b` questions lost and `c` gained.

    If both models were equally good, each of the b + c disagreements would be a fair coin: the p-value is the
    probability of a split at least as uneven as min(b, c) against max(b, c), in both directions. With no
    disagreement there is no evidence of any change: 1.0.
    """
    if b < 0 or c < 0:
        raise ValueError(f"counts cannot be negative; got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    # Integers until the one division, which Python rounds correctly however large 2**n is.
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap_interval(before: Sequence[bool], after: Sequence[bool], *, resamples: int = BOOTSTRAP_RESAMPLES,
                              seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval for the change in accuracy (after - before, as a fraction), resampling
    the questions with replacement; the same seed gives the same interval.

    A resampled change depends only on how many of the drawn questions were gained, lost or unchanged, so the
    counts are drawn directly (multinomial over the three kinds): the same distribution as drawing `resamples`
    sets of question indices, without holding them all in memory. With no questions the change can be
    anything: (-1.0, 1.0).
    """
    b, c = discordant(before, after)
    n = len(before)
    if n == 0:
        return -1.0, 1.0
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [c / n, b / n, (n - b - c) / n], size=resamples)
    changes = (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - level) / 2
    low, high = np.quantile(changes, [tail, 1 - tail])
    return float(low), float(high)
