"""``aci``: commands on finished reports (``aci report``: tables, depth plot, HTML page)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from pytest_aci.report import CaseRecord


def _reason(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = f"{where}: {error['msg']}" if where else error["msg"]
    return message.splitlines()[0]


def read_report_lenient(path: Path) -> tuple[list[CaseRecord], list[str]]:
    """Read a JSONL report, skipping lines that are not case records (a crash can leave a truncated last line).

    Returns the records and one warning per skipped line. ``OSError`` (a missing file …) is left to the caller.
    """
    records, warnings = [], []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(CaseRecord.model_validate_json(line))
            except ValidationError as exc:
                truncated = ", truncated last line" if not line.endswith("\n") else ""
                warnings.append(f"{path}:{number}: skipped, not a case record ({_reason(exc)}{truncated})")
    return records, warnings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aci", description="Work with pytest-aci reports.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    report = commands.add_parser(
        "report",
        help="summarize JSONL reports: table, depth plot, HTML page",
        description="Print the summary table of each model in the reports; optionally plot the depth curve "
        "and write a self-contained HTML page. Several reports (e.g. before and after hardening) are compared.",
    )
    report.add_argument("reports", type=Path, nargs="+", metavar="REPORT.jsonl")
    report.add_argument("--html", type=Path, metavar="OUT.html", help="write a self-contained HTML page")
    report.add_argument("--plot", type=Path, metavar="OUT.png", help="write the depth curve as a PNG")
    return parser


def report_main(args: argparse.Namespace) -> int:
    from pytest_aci.report_html import build_html, models_of, plot_png, write_atomic
    from pytest_aci.summary import attack_rate, format_table, summarize

    records: list[CaseRecord] = []
    warnings: list[str] = []
    for path in args.reports:
        try:
            found, skipped = read_report_lenient(path)
        except FileNotFoundError:
            print(f"aci report: {path}: no such file", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"aci report: {path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        records += found
        warnings += skipped
    for warning in warnings:
        print(f"aci report: {warning}", file=sys.stderr)
    if not records:
        print(f"aci report: no case records in {', '.join(map(str, args.reports))}", file=sys.stderr)
        return 2

    summaries = summarize(records)
    models = models_of(records)
    for model in models:
        mine = [s for s in summaries if s.model == model]
        print(f"{model}: attack rate {attack_rate(mine)}")
        print("\n".join(format_table(mine)), end="\n\n")

    png = plot_png(summaries, models) if args.plot or args.html else b""
    outputs = []
    if args.plot:
        outputs.append((args.plot, png))
    if args.html:
        page = build_html(records, summaries, png, [str(p) for p in args.reports], warnings)
        outputs.append((args.html, page.encode("utf-8")))
    for path, data in outputs:
        try:
            write_atomic(path, data)
        except OSError as exc:
            print(f"aci report: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``aci`` console command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "report":
        return report_main(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
