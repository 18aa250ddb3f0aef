"""Several models side by side, one row each: plain refusal, the depth sample's ASR by depth, benign
compliance — what ``aci report`` and ``aci demo`` show first when the reports hold more than one model."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_aci.reporting.depth import depth_buckets, depth_curve
from pytest_aci.reporting.summary import CheckSummary, format_grid
from pytest_aci.stats import Rate


def failed(summaries: Sequence[CheckSummary], check: str) -> Rate:
    """Items of ``check`` that failed over the items evaluated (``CheckSummary.rate``, pooled over specs)."""
    chosen = [s for s in summaries if s.check == check]
    return Rate(sum(s.failed_items for s in chosen), sum(s.items - s.errored_items for s in chosen))


def held(summaries: Sequence[CheckSummary], check: str) -> Rate:
    """Items of ``check`` that held (a refusal kept, an insertion recovered, a benign prompt answered) over
    the items evaluated."""
    broken = failed(summaries, check)
    return Rate(broken.total - broken.hits, broken.total)


def _cell(rate: Rate | None) -> str:
    return f"{rate.value:.0%} ({rate.hits}/{rate.total})" if rate and rate.total else "–"


def side_by_side(summaries: Sequence[CheckSummary], models: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per model, its plain refusal (``refuses`` items held), ``recovers`` items broken by the
    search, the depth sample's ASR in each bucket (harmful states / states) and benign compliance
    (``complies`` items held)."""
    buckets = depth_buckets(summaries)
    header = ["model", "plain refusal", "recovers broken", *(f"ASR {b}" for b in buckets), "benign compliance"]
    rows = []
    for model in models:
        mine = [s for s in summaries if s.model == model]
        curve = dict(depth_curve(mine))
        rows.append(
            [
                model,
                _cell(held(mine, "refuses")),
                _cell(failed(mine, "recovers")),
                *(_cell(curve.get(b)) for b in buckets),
                _cell(held(mine, "complies")),
            ]
        )
    return header, rows


def side_by_side_lines(summaries: Sequence[CheckSummary], models: Sequence[str]) -> list[str]:
    header, rows = side_by_side(summaries, models)
    return format_grid([header, *rows])
