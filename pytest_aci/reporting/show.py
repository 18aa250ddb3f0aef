"""``aci report``: reports read back, their rates and tables printed, the depth plot and the HTML page written.

``aci demo`` and ``aci-harden --eval`` show their reports through it too.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pytest_aci.extras import MissingExtra, require
from pytest_aci.files import write_atomic
from pytest_aci.reporting.baseline import compare, judge_note
from pytest_aci.reporting.corrected import case_rate_sentence
from pytest_aci.reporting.html import build_html, models_of, plot_png
from pytest_aci.reporting.jsonl import CaseRecord, read_run
from pytest_aci.reporting.side_by_side import side_by_side_lines
from pytest_aci.reporting.summary import attack_rate, format_table, item_results, summarize


def show_reports(
    reports: list[Path], *, html: Path | None = None, plot: Path | None = None, brief: bool = False
) -> int:
    """``aci report``: each model's rates and table, the models side by side, a baseline comparison of two
    one-model reports; the depth plot and the HTML page when asked. 0, or 2 for unreadable input (one line on
    stderr), 1 when an output cannot be written."""

    if plot or html:
        try:
            require("report", "aci report --plot/--html (the depth plot)")
        except MissingExtra as exc:
            print(f"aci report: {exc}", file=sys.stderr)
            return 2

    records: list[CaseRecord] = []
    per_report: list[list[CaseRecord]] = []
    warnings: list[str] = []
    unfinished: list[str] = []
    for path in reports:
        try:
            found, skipped, note = read_run(path)
        except FileNotFoundError:
            print(f"aci report: {path}: no such file", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"aci report: {path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        records += found
        per_report.append(found)
        warnings += skipped
        unfinished += [note] if note else []
    for warning in warnings:
        print(f"aci report: {warning}", file=sys.stderr)
    for note in unfinished:
        print(f"aci report: {note}")
    if not records:
        print(f"aci report: no case records in {', '.join(map(str, reports))}", file=sys.stderr)
        return 2

    summaries = summarize(records)
    models = models_of(records)
    for model in models if not (brief and len(models) > 1) else ():
        mine = [s for s in summaries if s.model == model]
        print(f"{model}: attack rate {attack_rate(mine)} (items broken, as judged)")
        print(f"{model}: {case_rate_sentence(mine)}")
        print("\n".join(format_table(mine)), end="\n\n")

    if len(models) > 1:
        print("side by side (items held or broken; per bucket, the depth sample's states with that outcome):")
        print("\n".join(side_by_side_lines(summaries, models)), end="\n\n")
    comparison = baseline_section(reports, per_report)
    if comparison:
        print("\n".join(comparison), end="\n\n")

    png = plot_png(summaries, models, records) if plot or html else b""
    outputs = []
    if plot:
        outputs.append((plot, png))
    if html:
        page = build_html(records, summaries, png, [str(p) for p in reports], unfinished + warnings, comparison)
        outputs.append((html, page.encode("utf-8")))
    for path, data in outputs:
        try:
            write_atomic(path, data)
        except OSError as exc:
            print(f"aci report: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"wrote {path}")
    return 0


def baseline_section(paths: list[Path], per_report: list[list[CaseRecord]]) -> list[str]:
    """With two one-model reports, the --aci-baseline comparison of the second against the first."""
    if len(per_report) != 2 or any(len({r.subject for r in found}) != 1 for found in per_report):
        return []
    before, after = (item_results(found) for found in per_report)
    comparisons = compare(before, after)
    if not comparisons:
        return []
    lines = [f"{paths[1]} against the baseline {paths[0]}: {judge_note(before, after)}"]
    return lines + [c.line() for c in comparisons]
