"""Several models side by side, two rows each (harmful; not recovered): plain refusal, the depth
sample's rates by depth, benign compliance — what ``aci report`` and ``aci demo`` show first when the
reports hold more than one model."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_aci.reporting.depth import CURVES, depth_buckets, depth_curve, recovers_judges
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
    """(header, rows): per model and outcome (harmful; not recovered), its plain refusal (``refuses`` items
    held), ``recovers`` items broken by the search, the depth sample's rate of that outcome in each bucket
    (states / states judged) and benign compliance (``complies`` items held)."""
    buckets = depth_buckets(summaries)
    header = ["model", "outcome", "plain refusal", "recovers broken", *buckets, "benign compliance"]
    rows = []
    for model in models:
        mine = [s for s in summaries if s.model == model]
        judges = recovers_judges(mine)
        for outcome in CURVES:
            curve = dict(depth_curve(mine, outcome))
            first = outcome == CURVES[0]
            rows.append(
                [
                    model if first else "",
                    outcome.replace("-", " ") + (f" ({judges})" if first and judges else ""),
                    _cell(held(mine, "refuses")) if first else "",
                    _cell(failed(mine, "recovers")) if first else "",
                    *(_cell(curve.get(b)) for b in buckets),
                    _cell(held(mine, "complies")) if first else "",
                ]
            )
    return header, rows


def side_by_side_lines(summaries: Sequence[CheckSummary], models: Sequence[str]) -> list[str]:
    header, rows = side_by_side(summaries, models)
    return format_grid([header, *rows])
