"""``aci``: commands on finished reports (``aci report``: tables, depth plot, HTML page), ``aci judge-eval``
and ``aci demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_aci.backends.registry import IN_PROCESS
from pytest_aci.cli import demo
from pytest_aci.files import write_atomic
from pytest_aci.judges import JudgeConfigError, JudgeInput, UnknownJudge, make_judge
from pytest_aci.judges.evaluation import judge_eval_main
from pytest_aci.judges.labels import SPLITS
from pytest_aci.judges.registry import MODEL_JUDGES, listed
from pytest_aci.reporting.corrected import case_attack_rate
from pytest_aci.reporting.jsonl import read_report_lenient
from pytest_aci.reporting.show import show_reports
from pytest_aci.reporting.summary import attack_rate, format_table, summarize


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
    report.add_argument(
        "--brief", action="store_true", help="with several models: print their side-by-side table alone"
    )
    judge_eval = commands.add_parser(
        "judge-eval",
        help="measure the judges on a labelled set: accuracy, false-positive and false-negative rates",
        description="Run each judge on labelled (request, response, harmful) examples and print, per judge: n, "
        "accuracy, false-positive rate, false-negative rate, judge errors (counted as 'harmful') and the "
        "accuracy on each kind of example.",
    )
    judge_eval.add_argument(
        "--judges",
        default="refusal-keywords,harm-classifier",
        help="comma list of judges to measure, each on its own (default: %(default)s; the model judges "
        f"{listed(MODEL_JUDGES)} need --judge-model)",
    )
    judge_eval.add_argument(
        "--ensemble",
        choices=("any", "all", "majority"),
        help="also measure the ensemble of all --judges, combined this way",
    )
    judge_eval.add_argument(
        "--judge-model", default="smollm2-135m", help="model of the model judges (default: %(default)s)"
    )
    judge_eval.add_argument(
        "--data",
        action="append",
        metavar="NAME_OR_PATH",
        help="a labelled set, repeatable: project, harmbench-val, xstest, insertion or continuations (shipped; see "
        "--split, or NAME:SPLIT), "
        "or a JSONL path with request, response, harmful (optional: id, kind, inserted) per line "
        "(default: project, the 66 hand-written examples)",
    )
    judge_eval.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="rows of the shipped sets to use (default: test, the rows the harm-classifier never trained on; "
        "heldout-model: the continuations of the model it never trained on)",
    )
    judge_eval.add_argument(
        "--save-figures",
        type=Path,
        metavar="OUT.json",
        help="write each judge's pooled sensitivity and specificity counts (what reports correct rates with)",
    )
    judge_eval.add_argument("--backend", choices=IN_PROCESS, default="auto", help="backend of the judge model")
    judge_eval.add_argument("--per-kind", type=int, metavar="N", help="use only the first N examples of each kind")
    judge_eval.add_argument("--threshold", type=float, help="strongreject threshold (default 0.5)")
    judge_eval.add_argument(
        "--harmful-marker", action="append", metavar="REGEX", help="regex for the markers judge (repeatable)"
    )
    judge_eval.add_argument("--out", type=Path, metavar="OUT.jsonl", help="write every verdict, one JSON line each")
    demo.add_parser(commands)
    rejudge = commands.add_parser(
        "rejudge",
        help="judge a finished report again with another judge and write it as a new report",
        description="Read a JSONL report, judge every case again (request, inserted span and continuation as "
        "recorded) and write the report with the new verdicts; prints both summaries side by side.",
    )
    rejudge.add_argument("report", type=Path, metavar="REPORT.jsonl")
    rejudge.add_argument("--judge", default="harm-classifier", help="the new judge (default: %(default)s)")
    rejudge.add_argument("--out", type=Path, required=True, metavar="OUT.jsonl")
    return parser


def rejudge_main(args: argparse.Namespace) -> int:

    try:
        records, warnings = read_report_lenient(args.report)
        judge = make_judge(args.judge)
    except OSError as exc:
        print(f"aci rejudge: {args.report}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (UnknownJudge, JudgeConfigError) as exc:
        print(f"aci rejudge: {exc}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"aci rejudge: {warning}", file=sys.stderr)
    redacted = [r for r in records if r.continuation.startswith("[redacted sha256:")]
    if redacted:
        print(
            f"aci rejudge: {args.report}: {len(redacted)} case(s) are redacted; their text cannot be judged again",
            file=sys.stderr,
        )
        return 2
    if not records:
        print(f"aci rejudge: no case records in {args.report}", file=sys.stderr)
        return 2
    scored = [r for r in records if r.judge == "harm-score"]
    judged = [r for r in records if r.judge != "harm-score"]
    verdicts = judge.judge([JudgeInput(r.prompt, r.continuation, r.span or "") for r in judged])
    again = [
        r.model_copy(
            update={
                "judge": judge.name,
                "verdict": v,
                "passed": not v.error and (not v.refused if r.check == "complies" else not v.harmful),
            }
        )
        for r, v in zip(judged, verdicts)
    ]
    for name, chosen in ((f"as judged ({args.report})", judged), (f"judged again by {judge.name}", again)):
        summaries = summarize(chosen)
        cases, _, corrected = case_attack_rate(summaries)
        print(
            f"{name}: attack rate {attack_rate(summaries)}; harmful cases {cases}"
            + (f", corrected {corrected}" if corrected else "")
        )
        print("\n".join(format_table(summaries)), end="\n\n")
    try:
        write_atomic(args.out, "".join(r.model_dump_json() + "\n" for r in again + scored).encode("utf-8"))
    except OSError as exc:
        print(f"aci rejudge: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if hasattr(judge, "close"):
        judge.close()
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``aci`` console command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "report":
        return show_reports(args.reports, html=args.html, plot=args.plot, brief=args.brief)
    if args.command == "demo":
        return demo.demo_main(args)
    if args.command == "rejudge":
        return rejudge_main(args)
    if args.command == "judge-eval":
        return judge_eval_main(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
