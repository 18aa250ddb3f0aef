"""What the spec items found, on the process that reports: item results, gates, JUnit, saved failures.

Item results travel in each report's ``user_properties``, so the same code runs serially and on the
pytest-xdist controller, which collects nothing itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_aci.plugin.session import active_runtime, is_controller, session_options
from pytest_aci.reporting.baseline import compare, judge_note
from pytest_aci.reporting.corrected import case_attack_rate
from pytest_aci.reporting.depth import depth_curve
from pytest_aci.reporting.jsonl import subject
from pytest_aci.reporting.summary import ItemResult, aggregate, attack_rate, gate_attack_rate
from pytest_aci.spec.regressions import RegressionCase, regression_path, save_regressions

SPEC_ITEM_ID = re.compile(r"\.aci\.ya?ml::(refuses|recovers|complies)\[[^\]]*\]$")


class OutcomeRecorder:
    """Registered per session: collects each spec item's result from its report.

    Item results travel in ``report.user_properties``, so the same code runs serially and on the
    pytest-xdist controller, which collects nothing itself.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[str, object] = {}  # node id -> summary.ItemResult
        self.thresholds: dict[str, float] = {}  # spec name -> its threshold
        self.cases = 0
        self.gate_failures: list[str] = []
        self.baseline: list | None = None  # summary.ItemResult of --aci-baseline's report (controller only)
        self.baseline_lines: list[str] = []
        self.saved_lines: list[str] = []
        self._logging: pytest.TestReport | None = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport):
        self._record(report)
        self._logging = report  # the terminal's status line for this report is being written
        try:
            return (yield)
        finally:
            self._logging = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        """A failing Python aci test shows its replay command (a spec item says it in its failure text)."""
        report = yield
        if call.when == "setup" and report.failed and hasattr(item, "loaded") and hasattr(item, "check"):
            failed = ("aci_result", self._setup_failed(item).to_json())
            item.user_properties.append(failed)  # the teardown report's too: JUnit XML reads that one's
            report.user_properties.append(failed)
        replay = dict(item.user_properties).get("aci_replay")
        if call.when == "call" and report.failed and replay and SPEC_ITEM_ID.search(item.nodeid) is None:
            report.sections.append(("pytest-aci", f"replay: {replay}"))
        return report

    def _setup_failed(self, item: pytest.Item):
        """A spec item whose setup failed before it ran: an error (the gates count it as broken), not an attack
        success, labelled as its siblings are (the model with its defence, the spec's own name)."""

        spec = item.loaded.spec
        label = subject(self.options.model, self.options.for_spec(spec, "defence"))
        return ItemResult(label, spec.name, item.check, item.nodeid, errored=True, error="setup failed")

    @property
    def options(self):

        return session_options(self.config)

    def _record(self, report: pytest.TestReport) -> None:

        properties = dict(report.user_properties)
        # A spec item carries its result from its call, or from its failed setup (pytest_runtest_makereport); a
        # Python aci test from its call. The teardown report carries the same properties again.
        if "aci_result" not in properties or report.nodeid in self.results:
            return
        result = ItemResult.from_json(properties["aci_result"])
        self.results[report.nodeid] = result
        self.cases += result.cases
        if "aci_threshold" in properties:
            self.thresholds[result.spec] = float(properties["aci_threshold"])

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(self, report, config):
        """In verbose mode each spec item's status line says how many cases it evaluated: the case counter."""
        status = yield
        properties = dict(getattr(report, "user_properties", ()))
        if not status or report is not self._logging or config.option.verbose < 1 or "aci_cases" not in properties:
            return status
        category, letter, word = status
        note = f" ({properties['aci_cases']} cases, {self.cases} in all)"
        if isinstance(word, tuple):
            return category, letter, (word[0] + note, word[1])
        return category, letter, word + note

    def summaries(self):

        return aggregate(self.results.values())

    def check_gates(self) -> list[str]:
        """One line per gate the session's measured ASR exceeds (errored items count as broken, and it says so)."""

        summaries = self.summaries()
        failures = []
        max_asr = self.options.max_asr

        def errored(spec: str | None = None) -> str:
            count = sum(s.errored_items for s in summaries if s.check != "complies" and spec in (None, s.spec))
            return f", {count} of them errored, counted as broken" if count else ""

        overall = gate_attack_rate(summaries)
        if max_asr is not None and overall.total and overall.value > max_asr:
            failures.append(
                f"aci gate: attack success rate {overall.value:.1%} ({overall.hits}/{overall.total} items{errored()}, "
                f"95% CI {overall.interval[0]:.1%}-{overall.interval[1]:.1%}) exceeds --aci-max-asr {max_asr:.1%}"
            )
        for spec, threshold in sorted(self.thresholds.items()):
            rate = gate_attack_rate(summaries, spec)
            if rate.total and rate.value > threshold:
                failures.append(
                    f"aci gate: spec {spec!r} attack success rate {rate.value:.1%} ({rate.hits}/{rate.total} items"
                    f"{errored(spec)}) exceeds its threshold {threshold:.1%}"
                )
        failures += self._check_baseline()
        self.gate_failures = failures
        return failures

    def _check_baseline(self) -> list[str]:
        """The --aci-baseline comparison: its lines for the summary, and a gate failure per worse rate."""
        if self.baseline is None or not self.results:
            return []

        options = self.options
        comparisons = compare(self.baseline, self.results.values(), options.baseline_alpha)
        self.baseline_lines = [f"aci baseline {options.baseline}: {judge_note(self.baseline, self.results.values())}"]
        self.baseline_lines += [f"aci baseline: {c.line()}" for c in comparisons]
        if not comparisons:
            return [f"aci gate: --aci-baseline {options.baseline} shares no spec and check with this run"]
        return [f"aci gate: {c.line()}" for c in comparisons if c.worse and c.gates]

    def save_failures(self, rootpath: Path) -> list[str]:
        """Merge every item's minimal failing case into its spec's regression file."""

        per_spec: dict[Path, list] = {}
        for nodeid, result in self.results.items():
            if result.counterexample is None:
                continue
            spec_path = rootpath / nodeid.split("::")[0]
            case = RegressionCase.from_record(result.counterexample, redacted=self.options.redact)
            per_spec.setdefault(spec_path, []).append(case)
        lines = []
        for spec_path, cases in sorted(per_spec.items()):
            added = save_regressions(spec_path, cases)
            lines.append(f"aci: {added} new regression case(s) saved to {regression_path(spec_path)}")
        return lines


def junit_session_properties(summaries) -> list[tuple[str, str]]:
    """Session-level JUnit properties: the judged case ASR and, where the judge has measured figures, corrected."""

    items = attack_rate(summaries)
    cases, judge, corrected = case_attack_rate(summaries)
    properties = [("aci_item_asr", f"{items.value:.4f}"), ("aci_case_asr", f"{cases.value:.4f}")]
    errored, error_cases = sum(s.errored_items for s in summaries), sum(s.error_cases for s in summaries)
    if errored or error_cases:  # apart from the rates above; the gates count them as broken
        properties += [("aci_errored_items", str(errored)), ("aci_error_cases", str(error_cases))]
    if judge:
        properties.append(("aci_judge", judge))
    if corrected is not None:
        properties.append(("aci_case_asr_corrected", f"{corrected.estimate:.4f}"))
        properties.append(("aci_case_asr_corrected_95ci", f"{corrected.low:.4f} {corrected.high:.4f}"))
        # False when the judged share lies outside [1 - Sp, Se] of the judge's measured figures (informational).
        properties.append(("aci_case_asr_corrected_fits", str(corrected.fits).lower()))
    unrecovered, _, corrected = case_attack_rate(summaries, "not-recovered", ("recovers",))
    if corrected is not None:
        properties.append(("aci_not_recovered_corrected", f"{corrected.estimate:.4f}"))
        properties.append(("aci_not_recovered_corrected_95ci", f"{corrected.low:.4f} {corrected.high:.4f}"))
    if unrecovered.total:  # the recovers cases by outcome: harmful, did not turn back, still undecided at the cap
        harmful = case_attack_rate(summaries, "harmful", ("recovers",))[0]
        properties.append(("aci_recovers_harmful", f"{harmful.value:.4f}"))
        properties.append(("aci_recovers_not_recovered", f"{unrecovered.value:.4f}"))
        properties.append(("aci_recovers_undecided", str(sum(s.undecided_cases for s in summaries))))
    for outcome, name in (("harmful", "asr"), ("not-recovered", "not_recovered")):  # the depth curves, with intervals
        for bucket, rate in depth_curve(summaries, outcome):
            low, high = rate.interval
            properties.append(
                (f"aci_depth_{name}_{bucket}", f"{rate.value:.4f} [{low:.4f}, {high:.4f}] n={rate.total}")
            )
    return properties


def finish_session(session: pytest.Session) -> None:
    """Gates, JUnit session properties and saved failures (on the controller); the report merged; the runtime closed."""

    recorder = session.config.pluginmanager.get_plugin("aci-outcomes")
    controller = is_controller(session.config)
    if recorder is not None and recorder.results and controller:
        if recorder.check_gates() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        xml = _junit_xml(session.config)
        if xml is not None:
            for name, value in junit_session_properties(recorder.summaries()):
                xml.add_global_property(name, value)
        if recorder.options.save_failures:
            recorder.saved_lines = recorder.save_failures(session.config.rootpath)
    runtime = active_runtime(session.config)
    if runtime is None:
        return
    # An interrupted run (Ctrl-C, SIGTERM, pytest-timeout's exit) keeps its journal: aci report reads it as unfinished.
    finished = session.exitstatus != pytest.ExitCode.INTERRUPTED
    if runtime.records.report is not None and controller and finished:
        runtime.records.report.merge_worker_files()
    runtime.close(finished)


def _junit_xml(config: pytest.Config):
    """pytest's JUnit XML writer when ``--junitxml`` is on (what ``record_testsuite_property`` uses)."""
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - a pytest without it
        return None
    return config.stash.get(xml_key, None)
