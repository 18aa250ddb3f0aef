"""Rates and their intervals, and the depth buckets of an insertion: the numbers every summary shares."""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_BUCKETS = 5  # k = 0 and each quarter of |R|


def bucket_labels(count: int = DEFAULT_BUCKETS) -> tuple[str, ...]:
    """The depth buckets' names: k = 0, then ``count - 1`` equal bins of (0, |R|]."""
    bins = count - 1
    return ("k=0", *(f"{round(100 * i / bins)}-{round(100 * (i + 1) / bins)}%" for i in range(bins)))


BUCKETS = bucket_labels()


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


def bucket_index(position: int, response_len: int, count: int = DEFAULT_BUCKETS) -> int:
    """0 for k = 0, else 1 + the bin of (0, |R|] that k falls in (k = |R| counts in the last)."""
    if position <= 0 or response_len <= 0:
        return 0
    return 1 + min(count - 2, position * (count - 1) // response_len)


def depth_bucket(position: int, response_len: int, count: int = DEFAULT_BUCKETS) -> str:
    """The name of k's depth bucket: k = 0, else the bin of |R| it falls in (by default its quarter)."""
    return bucket_labels(count)[bucket_index(position, response_len, count)]


def bucket_order(label: str) -> float:
    """Where a bucket lies on the depth axis (its lower end), to sort names of any bucket count."""
    return -1.0 if label == "k=0" else float(label.split("-")[0])


def bucket_middle(label: str) -> float:
    """The depth (a fraction of |R|) a bucket is drawn at: 0 for k = 0, else its bin's middle."""
    if label == "k=0":
        return 0.0
    low, high = label.rstrip("%").split("-")
    return (float(low) + float(high)) / 200


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
