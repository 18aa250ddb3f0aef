"""Rates from case records: item-level ASR with a Wilson interval, and the depth profile of insertions.

Shared by the terminal summary, the session gate and ``aci report``, so all three show the same numbers.
The tallies they are made of (``ItemResult``, ``CheckSummary``, ``summarize``) are in ``tallies``.
"""

from __future__ import annotations

from collections.abc import Iterable

from pytest_aci.reporting.corrected import corrected_lines
from pytest_aci.reporting.depth import depth_buckets, depth_lines
from pytest_aci.reporting.tallies import CheckSummary, ItemResult, aggregate, item_results, summarize
from pytest_aci.stats import BUCKETS, Rate

__all__ = ["CheckSummary", "ItemResult", "aggregate", "item_results", "summarize"]


def attack_rate(summaries: Iterable[CheckSummary], spec: str | None = None) -> Rate:
    """Items broken over items attacked and evaluated (refuses + recovers), over all specs or one."""
    chosen = [s for s in summaries if s.check != "complies" and (spec is None or s.spec == spec)]
    return Rate(sum(s.failed_items for s in chosen), sum(s.items - s.errored_items for s in chosen))


def gate_attack_rate(summaries: Iterable[CheckSummary], spec: str | None = None) -> Rate:
    """What the gates check: as ``attack_rate``, with errored items counted as broken."""
    chosen = [s for s in summaries if s.check != "complies" and (spec is None or s.spec == spec)]
    return Rate(sum(s.failed_items + s.errored_items for s in chosen), sum(s.items for s in chosen))


def errors_line(summaries: Iterable[CheckSummary]) -> str | None:
    """Errored items and error cases, apart from attack successes, or None when there are none."""
    chosen = list(summaries)
    items, cases = sum(s.errored_items for s in chosen), sum(s.error_cases for s in chosen)
    if not items and not cases:
        return None
    return (
        f"errors: {items} item(s) not evaluated or failed only by errors, {cases} case(s) the judge could not read "
        "(apart from attack successes; the gates count them as broken)"
    )


def format_table(summaries: Iterable[CheckSummary]) -> list[str]:
    """The terminal table: one row per spec and check (and the harm-margin profile of scored specs)."""
    summaries = list(summaries)
    errors = any(s.errored_items or s.error_cases for s in summaries)  # a column only when there are some
    buckets = depth_buckets(summaries)
    header = ["spec", "check", "items", "cases", *(["errors"] if errors else []), "fail rate [95% CI]"]
    header += ["harmful / not recovered", *buckets]
    rows = [header]
    for s in summaries:
        depth = [
            f"{s.depth(b).value:.0%} / {s.depth(b, 'not-recovered').value:.0%} ({s.depth(b).total})"
            if s.depth(b).total else "–"
            for b in buckets
        ]  # fmt: skip
        errored = [f"{s.errored_items} items, {s.error_cases} cases"] if errors else []
        outcomes = outcome_cell(s) if s.check == "recovers" else "–"
        rows.append([s.spec, s.check, str(s.items), str(s.cases), *errored, str(s.rate), outcomes, *depth])
    lines = format_grid(rows, left=2)
    lines += depth_lines(summaries)
    lines += corrected_lines(summaries)
    for s in summaries:
        if s.predicted_sums:
            cells = [f"{b} {p:.0%}" for b in BUCKETS if (p := s.predicted_asr(b)) is not None]
            lines.append(f"predicted ASR by depth, {s.spec} (harm score: mean P(no recovery)): " + ", ".join(cells))
    return lines


def outcome_cell(s: CheckSummary) -> str:
    """A recovers row's cases: harmful / not recovered, and the undecided ones (still continuing at the cap)."""
    harmful, unrecovered = s.outcome_rate("harmful"), s.outcome_rate("not-recovered")
    if not harmful.total:
        return "–"
    cell = f"{harmful.value:.0%} / {unrecovered.value:.0%}"
    return cell + (f" ({s.undecided_cases} undecided)" if s.undecided_cases else "")


def format_grid(rows: list[list[str]], *, left: int = 1) -> list[str]:
    """Rows of cells as aligned text, the first ``left`` columns to the left, a rule under the header row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return lines
