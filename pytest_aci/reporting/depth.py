"""The depth sample's curve from check summaries: its buckets, its pooled ASR per bucket, its text lines.

Shared by the terminal table, the session's JUnit properties, ``aci report``'s plot and page and the
models' side-by-side table, so all show the same curve.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pytest_aci.stats import BUCKETS, Rate, bucket_order

if TYPE_CHECKING:
    from pytest_aci.reporting.tallies import CheckSummary


def depth_buckets(summaries: Iterable[CheckSummary]) -> list[str]:
    """The depth buckets the summaries' samples were drawn for, shallow to deep (the default five if none)."""
    found = {bucket for s in summaries for bucket, total in s.depth_cases.items() if total}
    return sorted(found, key=bucket_order) if found else list(BUCKETS)


# The two outcomes every depth curve is shown for: the share of states whose continuation was harmful, and
# the share that did not turn back (harmful, or still on the harmful track).
CURVES = ("harmful", "not-recovered")


def recovers_judges(summaries: Iterable[CheckSummary]) -> str:
    """The judges of the ``recovers`` rows, as the curves and their tables name them ("" for none)."""
    return ", ".join(sorted({judge for s in summaries if s.check == "recovers" for judge in s.judges}))


def depth_curve(summaries: Iterable[CheckSummary], outcome: str = "harmful") -> list[tuple[str, Rate]]:
    """(bucket, rate of ``outcome``) of the depth samples of the ``recovers`` rows, pooled, shallow to deep;
    buckets without states left out."""
    chosen = [s for s in summaries if s.check == "recovers"]
    rates = [(b, Rate(sum(s.depth(b, outcome).hits for s in chosen), sum(s.depth(b).total for s in chosen)))
             for b in depth_buckets(chosen)]  # fmt: skip
    return [(b, r) for b, r in rates if r.total]


def pooled_depth_rate(summaries: Iterable[CheckSummary], outcome: str = "harmful") -> Rate:
    """The share of every depth-sample state of the ``recovers`` rows with ``outcome``, all buckets pooled."""
    curve = [rate for _, rate in depth_curve(summaries, outcome)]
    return Rate(sum(r.hits for r in curve), sum(r.total for r in curve))


def depth_lines(summaries: Iterable[CheckSummary]) -> list[str]:
    """Per recovers row with a depth sample: per outcome, its rate in each bucket with a Wilson 95 % interval."""
    lines = []
    for s in summaries:
        if s.check == "recovers" and s.sampled:
            judges = recovers_judges([s]) or "?"
            for outcome in CURVES:
                cells = [f"{b} {r.value:.0%} [{r.interval[0]:.0%}, {r.interval[1]:.0%}] of {r.total}"
                         for b, r in depth_curve([s], outcome)]  # fmt: skip
                lines.append(
                    f"depth sample, {s.spec}, {outcome.replace('-', ' ')} ({s.sampled} states, {judges}, "
                    "[95% CI]): " + ", ".join(cells)
                )
    return lines
