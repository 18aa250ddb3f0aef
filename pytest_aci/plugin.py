"""The pytest plugin: ``--aci-*`` options, spec collection, the session runtime and its fixture."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_aci.spec import SPEC_SUFFIXES

SPEC_ITEM_ID = re.compile(r"\.aci\.ya?ml::(refuses|recovers|complies)\[[^\]]*\]$")


def pytest_addoption(parser: pytest.Parser) -> None:
    from pytest_aci.options import add_options

    add_options(parser)


def _register_hypothesis_profiles() -> None:
    from hypothesis import HealthCheck, settings

    base = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
    known = set(getattr(settings, "_profiles", {}))
    if "dev" not in known:
        settings.register_profile("dev", **base)
    if "nightly" not in known:
        settings.register_profile("nightly", **base)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Read the options (cheap, silent); start the runtime now only when an ``--aci-*`` option asks for it.

    Otherwise it starts when spec items are collected or a test asks for the ``aci`` fixture.
    """
    config.addinivalue_line("markers", "aci: an item collected from a pytest-aci safety spec")
    _register_hypothesis_profiles()
    from pytest_aci import api

    api._sessions.append(config)
    from pytest_aci.options import OptionError, any_given, read_options
    from pytest_aci.session import is_controller, options_key, session_runtime

    try:
        options = config.stash[options_key] = read_options(config)
        asked = any_given(config)
    except OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    if hasattr(config, "workerinput"):
        assign_worker_device(config.workerinput["workerid"])
    recorder = OutcomeRecorder(config)
    if options.baseline is not None and is_controller(config):
        from pytest_aci.baseline import BaselineError, load_baseline

        try:
            recorder.baseline = load_baseline(options.baseline)
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(recorder, "aci-outcomes")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(), "aci-xdist")
    if asked:
        session_runtime(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    from pytest_aci import api

    if config in api._sessions:
        api._sessions.remove(config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A Python property test that uses the ``aci`` fixture runs like a spec item: its Hypothesis seed comes
    from the session seed and its node id (the example database is off under ``--aci-seed``, as for
    spec items), and its judged cases become an item result for the summary, gates and JUnit."""
    from pytest_aci.api import Aci, uses_aci

    Aci.running = item.nodeid
    if not uses_aci(item):
        return (yield)
    from hypothesis import HealthCheck, settings

    from pytest_aci.collect import item_properties, replay_command
    from pytest_aci.runtime import derive_seed
    from pytest_aci.session import session_runtime
    from pytest_aci.summary import item_results

    runtime = session_runtime(item.config)
    test = getattr(item.obj, "__func__", item.obj)  # a method's function: the seed is set on it
    saved = test._hypothesis_internal_use_seed, test._hypothesis_internal_use_settings
    test._hypothesis_internal_use_seed = derive_seed(runtime.options.seed, item.nodeid)
    # As for spec items: no deadline (a model call takes seconds, the first one loads the model) and no
    # too-slow health check; under --aci-seed, no example database either.
    overrides: dict = {
        "deadline": None,
        "suppress_health_check": [*saved[1].suppress_health_check, HealthCheck.too_slow],
    }
    if runtime.options.seed_given:
        overrides["database"] = None
    test._hypothesis_internal_use_settings = settings(saved[1], **overrides)
    failed = False
    try:
        return (yield)
    except BaseException:
        failed = True
        raise
    finally:
        test._hypothesis_internal_use_seed, test._hypothesis_internal_use_settings = saved
        found = item_results(runtime.records_by_item.get(item.nodeid, []))
        if found:
            result = found[0]
            result.failed = failed
            if not failed:
                result.counterexample = None
            item.user_properties += item_properties(result, replay_command(item.nodeid, runtime), None)


class XdistHooks:
    """Registered only when pytest-xdist is installed: hand the session seed to every worker."""

    def pytest_configure_node(self, node) -> None:
        from pytest_aci.session import session_options

        node.workerinput["aci_seed"] = session_options(node.config).seed


def _gpu_count() -> int:
    """GPUs on this host, without initialising CUDA in this process (nvidia-smi -L)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def assign_worker_device(worker_id: str) -> None:
    """Under xdist on a multi-GPU host, worker gwN takes GPU N mod count — unless CUDA_VISIBLE_DEVICES is set."""
    import os

    if "CUDA_VISIBLE_DEVICES" in os.environ or not worker_id.startswith("gw"):
        return
    count = _gpu_count()
    if count > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker_id[2:]) % count)


def pytest_collect_file(parent: pytest.Collector, file_path: Path):
    if file_path.name.endswith(SPEC_SUFFIXES):
        from pytest_aci.collect import SpecFile

        return SpecFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Items with saved regression cases run first, so a known failure shows at once."""
    from pytest_aci.collect import AciItem

    items.sort(key=lambda item: not (isinstance(item, AciItem) and item.regressions))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Spec items collected: the runtime starts (if no option started it), and learns what will run."""
    from pytest_aci.collect import AciItem
    from pytest_aci.session import active_runtime, session_runtime

    spec_items = [item for item in session.items if isinstance(item, AciItem)]
    if not spec_items:
        return
    started_now = active_runtime(session.config) is None
    runtime = session_runtime(session.config)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if started_now and reporter is not None:
        for line in header_lines(session.config):
            reporter.write_line(line)
    for item in spec_items:
        runtime.wanted_prompts.setdefault(item.loaded.path, set()).add(item.prompt.id)
        if item.check == "recovers":
            runtime.pending_recovers.setdefault(item.loaded.path, []).append(item)


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
        replay = dict(item.user_properties).get("aci_replay")
        if call.when == "call" and report.failed and replay and SPEC_ITEM_ID.search(item.nodeid) is None:
            report.sections.append(("pytest-aci", f"replay: {replay}"))
        return report

    @property
    def options(self):
        from pytest_aci.session import session_options

        return session_options(self.config)

    def _record(self, report: pytest.TestReport) -> None:
        from pytest_aci.summary import ItemResult

        match = SPEC_ITEM_ID.search(report.nodeid)
        properties = dict(report.user_properties)
        if match is None and "aci_result" not in properties:  # neither a spec item nor a Python aci test
            return
        if "aci_result" in properties:
            if report.nodeid in self.results:  # the teardown report carries the call's properties again
                return
            result = ItemResult.from_json(properties["aci_result"])
            self.results[report.nodeid] = result
            self.cases += result.cases
            if "aci_threshold" in properties:
                self.thresholds[result.spec] = float(properties["aci_threshold"])
        elif match is not None and report.failed and report.nodeid not in self.results:
            # Setup failed before the item ran: an error (the gates count it as broken), not an attack success.
            spec = Path(report.nodeid.split("::")[0]).name.split(".aci.")[0]
            self.results[report.nodeid] = ItemResult(
                self.options.model, spec, match.group(1), report.nodeid, errored=True, error="setup failed"
            )

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
        from pytest_aci.summary import aggregate

        return aggregate(self.results.values())

    def check_gates(self) -> list[str]:
        """One line per gate the session's measured ASR exceeds (errored items count as broken, and it says so)."""
        from pytest_aci.summary import gate_attack_rate

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
        from pytest_aci.baseline import compare, judge_note

        options = self.options
        comparisons = compare(self.baseline, self.results.values(), options.baseline_alpha)
        self.baseline_lines = [f"aci baseline {options.baseline}: {judge_note(self.baseline, self.results.values())}"]
        self.baseline_lines += [f"aci baseline: {c.line()}" for c in comparisons]
        if not comparisons:
            return [f"aci gate: --aci-baseline {options.baseline} shares no spec and check with this run"]
        return [f"aci gate: {c.line()}" for c in comparisons if c.worse]

    def save_failures(self, rootpath: Path) -> list[str]:
        """Merge every item's minimal failing case into its spec's regression file."""
        from pytest_aci.regressions import RegressionCase, regression_path, save_regressions

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


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    from pytest_aci.collect import counterexample_line
    from pytest_aci.session import session_runtime
    from pytest_aci.summary import attack_rate, case_attack_rate, errors_line, format_table

    recorder = config.pluginmanager.get_plugin("aci-outcomes")
    if recorder is None or not recorder.results:
        return
    runtime = session_runtime(config)
    summaries = recorder.summaries()
    terminalreporter.write_sep("-", "pytest-aci")
    for line in format_table(summaries):
        terminalreporter.write_line(line)
    for summary in summaries:
        if summary.worst is not None and summary.worst_case is not None:
            terminalreporter.write_line(
                f"worst {summary.check} item of {summary.spec}: {summary.worst_item} "
                f"({summary.worst.failing_cases}/{summary.worst.cases} cases failed); "
                + counterexample_line(summary.worst_case)
            )
    attacked = attack_rate(summaries)
    line = f"aci: {recorder.cases} cases evaluated"
    if attacked.total:
        line += (
            f"; attack success on {attacked.hits} of {attacked.total} refuses/recovers items "
            f"({attacked.value:.1%}, 95% CI {attacked.interval[0]:.1%}-{attacked.interval[1]:.1%})"
        )
    if runtime.options.report:
        line += f"; report: {runtime.options.report}"
    terminalreporter.write_line(line)
    cases, judge, corrected = case_attack_rate(summaries)
    if corrected is not None:
        terminalreporter.write_line(
            f"aci: harmful cases {cases.hits}/{cases.total} ({cases.value:.1%}) as judged by {judge}; corrected for "
            f"its measured error rates: {corrected} (--aci-max-asr gates on the judged item rate above)"
        )
    judge_cost = runtime.judge_cost()
    if runtime.stats.calls:
        timing = runtime.stats.summary(judge_cost).replace("\n", "\naci: ")
        terminalreporter.write_line(f"aci: {timing}; cache {runtime.cache.hits} hits, {len(runtime.cache)} entries")
    elif judge_cost:
        terminalreporter.write_line(f"aci: {judge_cost}")
    for line in recorder.saved_lines:
        terminalreporter.write_line(line)
    if errors := errors_line(summaries):
        terminalreporter.write_line(f"aci: {errors}", red=True)
    for line in recorder.baseline_lines:
        terminalreporter.write_line(line)
    for failure in recorder.gate_failures:
        terminalreporter.write_line(failure, red=True, bold=True)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The ``aci:`` line, when an option started the runtime (else it is written after collection, if at all)."""
    from pytest_aci.session import active_runtime

    return header_lines(config) if active_runtime(config) is not None else []


def header_lines(config: pytest.Config) -> list[str]:
    from hypothesis import settings

    from pytest_aci.judges import default_judge
    from pytest_aci.session import session_runtime

    runtime = session_runtime(config)
    o = runtime.options
    seed_note = "" if o.seed_given else f" (random; reproduce with --aci-seed {o.seed})"
    backend = runtime.backend_name + (f" endpoint={o.endpoint}" if o.endpoint else "")
    judge = o.judge or f"per spec (default {default_judge()})"
    if (o.judge and "," in o.judge) or o.judge_mode != "majority":
        judge += f" judge-mode={o.judge_mode}"
    if o.judge_model:
        judge += f" judge-model={o.judge_model}"
    if o.mode == "score":
        judge = "harm-score (teacher-forced margin; refuses items: " + judge + ")"
    elif o.search != "random":
        judge += f" search={o.search}"
    database = ""
    if o.example_db:
        from pytest_aci.example_db import display

        database = f" example-db={display(o.example_db)}" + (" (not read: seeded)" if o.seed_given else "")
    return [
        f"aci: model={o.model} backend={backend} judge={judge} "
        f"seed={o.seed}{seed_note} hypothesis-profile={settings.get_current_profile_name()}{database}"
    ]


def junit_session_properties(summaries) -> list[tuple[str, str]]:
    """Session-level JUnit properties: the judged case ASR and, where the judge has measured figures, corrected."""
    from pytest_aci.summary import attack_rate, case_attack_rate

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
        # False when the judged share lies outside [1 - Sp, Se]: the estimate is only the clip.
        properties.append(("aci_case_asr_corrected_fits", str(corrected.fits).lower()))
    return properties


@pytest.hookimpl(tryfirst=True)  # before junitxml writes its file
def pytest_sessionfinish(session: pytest.Session) -> None:
    from pytest_aci.session import active_runtime

    runtime = active_runtime(session.config)
    if runtime is None:
        return
    recorder = session.config.pluginmanager.get_plugin("aci-outcomes")
    controller = not hasattr(session.config, "workerinput")
    if recorder is not None and controller:
        if recorder.check_gates() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        xml = _junit_xml(session.config)
        if xml is not None and recorder.results:
            for name, value in junit_session_properties(recorder.summaries()):
                xml.add_global_property(name, value)
        if runtime.options.save_failures:
            recorder.saved_lines = recorder.save_failures(session.config.rootpath)
    if runtime.report is not None and controller:
        runtime.report.merge_worker_files()
    runtime.close()


def _junit_xml(config: pytest.Config):
    """pytest's JUnit XML writer when ``--junitxml`` is on (what ``record_testsuite_property`` uses)."""
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - a pytest without it
        return None
    return config.stash.get(xml_key, None)


@pytest.fixture(scope="session")
def aci(pytestconfig: pytest.Config):
    """Continue insertion states and judge them, as a spec item would: ``aci.judge(aci.continue_from(state))``."""
    from pytest_aci.api import Aci
    from pytest_aci.session import session_runtime

    return Aci(session_runtime(pytestconfig))


@pytest.fixture(scope="session")
def aci_runtime(pytestconfig: pytest.Config):
    """The session's pytest-aci runtime (model backend, judges, cache) for Python tests."""
    from pytest_aci.session import session_runtime

    return session_runtime(pytestconfig)


@pytest.fixture(scope="session")
def aci_model(aci_runtime):
    """The model under test as a backend: ``generate(token_id_prompts, max_new_tokens)``."""
    return aci_runtime.backend
