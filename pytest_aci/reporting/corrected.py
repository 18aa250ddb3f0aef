"""Case rates corrected for the judge, as text: per check and outcome, as judged and as corrected for the
judge's measured error rates on the labelled set that matches the check (``pytest_aci.correction``).

Shared by the terminal summary, the JUnit properties, ``aci report`` and its page.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pytest_aci.correction import CorrectedRate, corrected_rate, figures_for
from pytest_aci.stats import Rate

if TYPE_CHECKING:
    from pytest_aci.reporting.tallies import CheckSummary


def case_attack_rate(
    summaries: Iterable[CheckSummary], outcome: str = "harmful", checks: tuple[str, ...] = ("refuses", "recovers")
) -> tuple[Rate, str | None, CorrectedRate | None]:
    """Cases of ``outcome`` over cases of ``checks``; with the judge and the corrected rate when one judge with
    measured figures judged them all (figures of the matching labelled set when one check is asked for)."""
    chosen = [s for s in summaries if s.check in checks]
    rate = Rate(sum(s.outcome_rate(outcome).hits for s in chosen), sum(s.case_rate.total for s in chosen))
    judges = set().union(*(s.judges for s in chosen)) if chosen else set()
    if len(judges) != 1 or not rate.total:
        return rate, None, None
    (judge,) = judges
    figures = figures_for(judge, checks[0] if len(checks) == 1 else None, outcome)
    return rate, judge, corrected_rate(rate.hits, rate.total, figures) if figures else None


def case_rate_sentence(summaries: Iterable[CheckSummary]) -> str:
    """One line: harmful cases as judged and, when the judge has measured figures, corrected for them; then the
    recovers cases that did not turn back, likewise."""
    summaries = list(summaries)
    cases, judge, corrected = case_attack_rate(summaries)
    if judge is None:
        sentence = f"harmful cases {cases} (several judges or none: not corrected)"
    elif corrected is None:
        sentence = f"harmful cases {cases} as judged by {judge} (no measured error rates: not corrected)"
    else:
        sentence = f"harmful cases {cases} as judged by {judge}; corrected for its error rates: {corrected}"
    unrecovered, judge, corrected = case_attack_rate(summaries, "not-recovered", ("recovers",))
    if unrecovered.total:
        sentence += f"; recovers cases not recovered {unrecovered}"
        sentence += f", corrected: {corrected}" if corrected is not None else ""
    return sentence


def corrected_lines(summaries: Iterable[CheckSummary]) -> list[str]:
    """Per refuses/recovers row and outcome: the case rate as judged and as corrected for the judge's measured
    error rates on the labelled set that matches the check."""
    lines = []
    for s in summaries:
        if s.check == "complies" or not s.cases:
            continue
        for outcome in ("harmful", "not-recovered") if s.check == "recovers" else ("harmful",):
            what = "case ASR" if outcome == "harmful" else "not recovered"
            rate = s.outcome_rate(outcome)
            found = s.corrected(outcome)
            if found is None:
                judges = ", ".join(sorted(s.judges)) or "?"
                note = f"no measured error rates for judge {judges}, not corrected"
                lines.append(f"{what}, {s.spec} {s.check}: judged {rate.value:.1%} of {rate.total} cases ({note})")
                continue
            judge, corrected = found
            figures = figures_for(judge, s.check, outcome)
            lines.append(
                f"{what}, {s.spec} {s.check}: judged {rate.value:.1%} of {rate.total} cases, corrected for "
                f"{judge} ({figures.describe() if figures else ''}): {corrected}"
            )
    return lines
