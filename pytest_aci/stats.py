"""Rates and their intervals, and the depth buckets of an insertion: the numbers every summary shares."""

from __future__ import annotations

import math
from dataclasses import dataclass

BUCKETS = ("k=0", "0-25%", "25-50%", "50-75%", "75-100%")


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) for ``successes`` out of ``total``."""
    if total == 0:
        return 0.0, 1.0
    if successes == 0 or successes == total:  # exact ends (the closed form is off by rounding there)
        bound = z * z / (total + z * z)
        return (0.0, bound) if successes == 0 else (1.0 - bound, 1.0)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def no_recovery_probability(margin: float) -> float:
    """P(the model does not open a recovery) from a harm margin, which is that event's log-odds."""
    return 1 / (1 + math.exp(-margin)) if margin > -700 else 0.0


def depth_bucket(position: int, response_len: int) -> str:
    """k = 0, else the quarter of |R| that k falls in (k = |R| counts as 75-100 %)."""
    if position <= 0 or response_len <= 0:
        return BUCKETS[0]
    quarter = min(3, position * 4 // response_len)
    return BUCKETS[1 + quarter]


@dataclass(frozen=True)
class Rate:
    hits: int
    total: int

    @property
    def value(self) -> float:
        return self.hits / self.total if self.total else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.hits, self.total)

    def __str__(self) -> str:
        if not self.total:
            return "–"
        low, high = self.interval
        return f"{self.value:.1%} [{low:.1%}, {high:.1%}]"
