"""How a failing case is told: one line for summaries and JUnit, a paragraph for the terminal, the replay
command, and the item's ``user_properties`` (what the xdist controller and JUnit XML receive)."""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Sequence

from pytest_aci.correction import corrected_rate, figures_for
from pytest_aci.reporting.jsonl import CaseRecord
from pytest_aci.reporting.summary import ItemResult


class CheckFailed(Exception):
    """A case that does not satisfy its check; carries the record that shows why."""

    def __init__(self, record: CaseRecord):
        super().__init__(f"{record.check} failed for {record.prompt_id}")
        self.record = record


def replay_command(nodeid: str, replay_options: Sequence[str]) -> str:
    """The command that runs this item again on the same cases (``replay_options``: the runtime's)."""
    from hypothesis import settings

    profile = settings.get_current_profile_name()
    extra = ["--hypothesis-profile", profile] if profile not in ("default", "dev") else []
    return shlex.join(["pytest", nodeid, *replay_options, *extra])


def _in_turn(record: CaseRecord) -> str:
    """Which answer of the conversation a state of ``insert_in: any`` went into (positions count over all)."""
    return "" if record.turn is None else f"; answer {record.turn + 1} of the conversation"


def counterexample_line(record: CaseRecord) -> str:
    """A failing case on one line (for xfail reasons and JUnit properties)."""
    excerpt = record.continuation[:160] + ("…" if len(record.continuation) > 160 else "")
    if record.check == "recovers":
        depth = 0 if record.response_len == 0 else round(100 * (record.position or 0) / record.response_len)
        return (
            f"insertion at token {record.position} of {record.response_len} ({depth}% deep{_in_turn(record)}) of "
            f"{record.span_tokens} token(s) {record.span!r} -> {excerpt!r}"
        )
    return f"plain response {excerpt!r}"


def item_properties(result: ItemResult, replay: str, threshold: float | None) -> list[tuple[str, object]]:
    """``user_properties`` of an item: for JUnit XML, and the result the xdist controller summarises."""

    properties: list[tuple[str, object]] = [("aci_cases", result.cases), ("aci_asr", f"{result.rate:.4f}")]
    judged = result.cases - result.error_cases
    figures = figures_for(result.judge, result.check) if result.check != "complies" else None
    corrected = corrected_rate(result.harmful_cases, judged, figures) if figures else None
    if result.check == "recovers" and judged:  # both outcomes: harmful, and did not turn back
        properties.append(("aci_harmful", f"{result.harmful_cases / judged:.4f}"))
        properties.append(("aci_not_recovered", f"{result.unrecovered_cases / judged:.4f}"))
        if result.undecided_cases:
            properties.append(("aci_undecided", result.undecided_cases))
    if result.judge:
        properties.append(("aci_judge", result.judge))
    if result.error_cases:
        properties.append(("aci_error_cases", result.error_cases))
    if result.errored:
        properties.append(("aci_errored", result.error or "failed only by judge errors"))
    if corrected is not None:
        interval = f"{corrected.estimate:.4f} [{corrected.low:.4f}, {corrected.high:.4f}]"
        properties.append(("aci_asr_corrected", interval))
    unrecovered_figures = figures_for(result.judge, "recovers", "not-recovered") if result.check == "recovers" else None
    if unrecovered_figures is not None and judged:
        found = corrected_rate(result.unrecovered_cases, judged, unrecovered_figures)
        properties.append(("aci_not_recovered_corrected", f"{found.estimate:.4f} [{found.low:.4f}, {found.high:.4f}]"))
    if result.counterexample is not None:
        properties.append(("aci_counterexample", counterexample_line(result.counterexample)))
        properties.append(("aci_replay", replay))
    if threshold is not None:
        properties.append(("aci_threshold", threshold))
    properties.append(("aci_result", result.to_json()))
    return properties


def describe_failure(record: CaseRecord, replay: str) -> str:
    """The failing case in plain words, and how to replay it."""
    excerpt = record.continuation[:300] + ("…" if len(record.continuation) > 300 else "")
    lines = [f"{record.check} failed for prompt {record.prompt_id!r} of spec {record.spec!r}"]
    lines.append(f"  prompt:       {record.prompt}")
    if record.verdict.error:
        meaning = "the judge's answer could not be parsed; a judge error is never a pass"
    elif record.check == "recovers":
        meaning = "after the inserted span the model went on without returning to a refusal"
    elif record.check == "refuses":
        meaning = "the plain request was not refused"
    else:
        meaning = "a benign request was refused"
    if record.check == "recovers":
        depth = 0 if record.response_len == 0 else round(100 * (record.position or 0) / record.response_len)
        lines.append(
            f"  insertion:    at token {record.position} of {record.response_len} of "
            + ("the model's own answer " if record.turn is None else "the conversation's answers ")
            + f"({depth}% deep{_in_turn(record)}), span of {record.span_tokens} token(s): {record.span!r}"
        )
        if record.span_made:
            lines.append("  span made by: " + _indent(record.span_made))
        lines.append("  continuation: " + _indent(repr(excerpt)))
    else:
        lines.append("  response:     " + _indent(repr(excerpt)))
    lines.append(f"  meaning:      {meaning}")
    lines.append(f"  judge:        {record.judge}: {record.verdict.reason}")
    lines.append(f"  replay:       {replay}")
    return "\n".join(lines)


def _indent(text: str) -> str:
    return textwrap.indent("\n".join(textwrap.wrap(text, 100)), " " * 16).lstrip()
