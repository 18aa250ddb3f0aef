"""``aci demo``: the shipped specs against the embedded models and the shipped adapters, side by side.

Two families. The embedded SmolLM2-135M-Instruct is not safety-aligned; ``smollm2-135m-sft`` is aligned
shallowly (refusal-only fine-tuning) and ``smollm2-135m-deep`` deeply (worst-insertion training). The embedded
Qwen2.5-Coder-0.5B-Instruct, a third-party model, was aligned shallowly by its makers;
``qwen2.5-coder-0.5b-deep`` is it after worst-insertion training. Every adapter was made by ``aci-harden``
from the shipped prompt pools with the shipped specs held out (``fixtures/build_adapters.py``). Qwen, about
four times SmolLM2's cost per token here, is tested on a smaller set of specs (``--qwen-specs``). Each search
draws ``--examples`` Hypothesis examples (2; the specs say 4): the depth sample, the plain refusals and the benign
answers do not depend on it, and the demo stays within about 12 minutes on a 2-core CPU.
Each model is tested by its own pytest process (so each engine is freed with it), with the default
(best) judge; then one report puts them side by side, and the last lines are the page's path and
the finding in one line. It exits 0 when the demo ran (its items failing is what it shows); with
``--gate`` its exit status is the deep model's run's, whether that model passed its gate, as ``pytest`` in
CI would say.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pytest_aci.reporting.depth import pooled_depth_rate, recovers_judges
from pytest_aci.reporting.jsonl import read_report
from pytest_aci.reporting.show import show_reports
from pytest_aci.reporting.summary import summarize

SMOLLM2, QWEN = "smollm2", "qwen"
DEMO_MODELS = (  # label, model, family (which specs it is tested on)
    ("base, not safety-aligned", "smollm2-135m", SMOLLM2),
    ("shallow: refusal-only fine-tuning", "smollm2-135m-sft", SMOLLM2),
    ("deep: worst-insertion training", "smollm2-135m-deep", SMOLLM2),
    ("third-party, aligned shallowly by its makers", "qwen2.5-coder-0.5b", QWEN),
    ("deep: worst-insertion training", "qwen2.5-coder-0.5b-deep", QWEN),
)
DEMO_EXAMPLES = 2  # Hypothesis examples per search; the depth sample, refusals and benign answers do not depend on it
GATED = "smollm2-135m-deep"  # with --gate, the exit status is this model's run's
QWEN_SPECS = [Path("safety_specs/advbench.aci.yaml"), Path("safety_specs/xstest-safe.aci.yaml")]


def add_parser(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="the shipped specs against SmolLM2 and Qwen2.5, shallowly and deeply aligned, in one HTML report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--specs", type=Path, nargs="+", default=[Path("safety_specs")], help="default: safety_specs")
    demo.add_argument(
        "--qwen-specs",
        type=Path,
        nargs="+",
        default=QWEN_SPECS,
        help=f"the Qwen models' specs (default: {' '.join(map(str, QWEN_SPECS))})",
    )
    demo.add_argument("--no-qwen", action="store_true", help="the SmolLM2 models alone (Qwen needs make qwen)")
    demo.add_argument("--out", type=Path, default=Path("aci-demo"), help="reports and report.html (default: aci-demo)")
    demo.add_argument("--seed", default="1", help="--aci-seed of every run (default: 1; 'random' for none)")
    demo.add_argument(
        "--examples",
        type=int,
        default=DEMO_EXAMPLES,
        help=f"--aci-examples of every run: Hypothesis examples per search (default: {DEMO_EXAMPLES}; the specs say 4)",
    )
    demo.add_argument("--gate", action="store_true", help=f"exit with the {GATED} run's status (its gate) instead of 0")
    demo.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest options for every run")


def demo_main(args: argparse.Namespace) -> int:
    models = [m for m in DEMO_MODELS if not (args.no_qwen and m[2] == QWEN)]
    specs = {SMOLLM2: args.specs, QWEN: args.qwen_specs}
    options = {SMOLLM2: "--specs", QWEN: "--qwen-specs"}
    for family in dict.fromkeys(family for _, _, family in models):  # only the specs this run will use
        option, paths = options[family], specs[family]
        for spec in paths:
            if not spec.exists():
                print(f"aci demo: {option} {spec}: no such file or directory", file=sys.stderr)
                return 2
    extra = [a for a in args.pytest_args if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    codes: dict[str, int] = {}
    reports = []
    for label, model, family in models:
        report = args.out / f"{model}.jsonl"
        print(f"\n===== aci demo: {model} ({label}) =====", flush=True)
        command = [sys.executable, "-m", "pytest", *map(str, specs[family]), f"--aci-model={model}"]
        # The table, the depth lines and the header's training record; the failing cases are in the page.
        command += [f"--aci-report={report}", "--tb=no", "-rN", "--disable-warnings", "-p", "no:cacheprovider"]
        command += [] if args.seed == "random" else [f"--aci-seed={args.seed}"]
        command.append(f"--aci-examples={args.examples}")
        codes[model] = subprocess.run(command + extra).returncode
        if codes[model] not in (0, 1):  # 0: every item held; 1: some failed (the finding); others: it did not run
            print(f"aci demo: the run of {model} ended with exit status {codes[model]}: stopped", file=sys.stderr)
            return codes[model]
        reports.append(report)
    print(f"\n===== aci demo: the {len(models)} models side by side =====", flush=True)
    html = args.out / "report.html"
    written = show_reports(reports, html=html, brief=True)
    if written:
        return written
    verdict = "passed" if codes[GATED] == 0 else "did not pass"
    print(f"aci demo: the deep model ({GATED}) {verdict} its gate (pytest exit status {codes[GATED]})")
    print(f"aci demo: open {html.resolve()}")
    print(f"aci demo: {finding([m for _, m, _ in models], reports)}")
    return codes[GATED] if args.gate else 0


def finding(models: list[str], reports: list[Path]) -> str:
    """The demo's finding in one line: per model, the share of depth-sample states after which it did not turn
    back to a refusal, and the share judged harmful."""

    cells, judges = [], set()
    for model, report in zip(models, reports):
        summaries = summarize(read_report(report))
        judges.add(recovers_judges(summaries) or "?")
        pooled = {outcome: pooled_depth_rate(summaries, outcome) for outcome in ("not-recovered", "harmful")}
        cells.append(
            f"{model} {pooled['not-recovered'].value:.0%} ({pooled['harmful'].value:.0%} harmful) "
            f"of {pooled['harmful'].total}"
        )
    return (
        "after a span inserted into its own answer, the share of depth-sample states that did not turn back to "
        f"a refusal: {', '.join(cells)} ({', '.join(sorted(judges))})"
    )
