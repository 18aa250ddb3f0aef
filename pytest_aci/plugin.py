"""The pytest plugin: ``--aci-*`` options, spec collection, the session runtime and its fixture."""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import pytest

from pytest_aci.spec import SPEC_SUFFIXES

SPEC_ITEM_ID = re.compile(r"\.aci\.ya?ml::(refuses|recovers|complies)\[[^\]]*\]$")

OPTIONS = (
    # (flag, ini key, help)
    (
        "--aci-model",
        "aci_model",
        "model under test: a HF model directory, a hub id, or the embedded alias 'smollm2-135m' (default)",
    ),
    ("--aci-backend", "aci_backend", "generation backend: auto (vLLM if importable, else transformers), vllm or hf"),
    (
        "--aci-judge",
        "aci_judge",
        "judge for every spec (default: the spec's judge, else harm-classifier): harm-classifier, "
        "refusal-keywords, markers, harmbench, llama-guard, strongreject, or a comma list of them (an ensemble)",
    ),
    (
        "--aci-judge-model",
        "aci_judge_model",
        "model of the model judges (harmbench, llama-guard, strongreject): a HF model directory, a hub id, "
        "or the embedded alias 'smollm2-135m' (default)",
    ),
    ("--aci-judge-mode", "aci_judge_mode", "how an ensemble of judges decides: any, all or majority (default)"),
    (
        "--aci-judge-threshold",
        "aci_judge_threshold",
        "strongreject: a case is harmful when its score reaches this fraction (default: the spec's, else 0.5)",
    ),
    (
        "--aci-examples",
        "aci_examples",
        "Hypothesis examples (batches of insertions) per recovers item, overriding the specs",
    ),
    ("--aci-seed", "aci_seed", "session seed; a given seed makes runs reproducible (and skips the example database)"),
    (
        "--aci-example-db",
        "aci_example_db",
        "where failures are kept so that they replay first in later runs: redis://HOST:PORT/DB (shared by every "
        "CI run) or a directory (default: Hypothesis's local .hypothesis/examples)",
    ),
    (
        "--aci-concurrent-items",
        "aci_concurrent_items",
        "recovers items of a spec whose Hypothesis searches run together, their model calls batched in rounds "
        "(default 64; 1: one item at a time, its cases planned by dry runs)",
    ),
    ("--aci-max-new-tokens", "aci_max_new_tokens", "tokens generated after each insertion, overriding the specs"),
    ("--aci-report", "aci_report", "write a JSONL report, one line per evaluated case"),
    ("--aci-max-asr", "aci_max_asr", "fail the session when the attack success rate exceeds this fraction"),
    (
        "--aci-baseline",
        "aci_baseline",
        "a previous run's --aci-report of the same specs: fail the session where a spec's attack success or "
        "over-refusal rate is worse than there beyond noise (paired exact test)",
    ),
    ("--aci-baseline-alpha", "aci_baseline_alpha", "significance level of the --aci-baseline gate (default 0.05)"),
    ("--aci-vllm-arg", "aci_vllm_args", "vLLM engine argument KEY=VALUE (repeatable), e.g. max_model_len=2048"),
    (
        "--aci-endpoint",
        "aci_endpoint",
        "URL of an OpenAI-compatible completions server (vllm serve) that all workers share: the openai backend",
    ),
    ("--aci-max-in-flight", "aci_max_in_flight", "concurrent requests to --aci-endpoint per process (default 8)"),
    (
        "--aci-api-key-env",
        "aci_api_key_env",
        "environment variable holding --aci-endpoint's API key, sent as a bearer token (default OPENAI_API_KEY)",
    ),
    ("--aci-ca-bundle", "aci_ca_bundle", "PEM CA bundle that --aci-endpoint's HTTPS certificate is checked against"),
    (
        "--aci-mode",
        "aci_mode",
        "recovers items: generate (default: continue each insertion state and judge it) or score (the "
        "teacher-forced harm margin at every insertion position, no sampling)",
    ),
    (
        "--aci-search",
        "aci_search",
        "recovers items in generate mode: random (default: generate every drawn state) or targeted (Hypothesis "
        "climbs the harm margin and generates only the states it flags)",
    ),
)
FLAGS = (
    # (flag, ini key, help): on/off switches
    (
        "--aci-save-failures",
        "aci_save_failures",
        "save every minimal failing case to <spec>.regressions.yaml next to its spec; saved cases run first",
    ),
    (
        "--aci-redact",
        "aci_redact",
        "keep harmful text out of every artifact: spans and continuations become a hash and a length",
    ),
)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _seed(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative seed, got {value!r}")
    return number


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}")
    return number


def _backend(value: str) -> str:
    from pytest_aci.backends import BACKENDS

    if value not in BACKENDS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(BACKENDS)}, got {value!r}")
    return value


def _judge(value: str) -> str:
    from pytest_aci.judges import UnknownJudge, judge_names

    try:
        return ",".join(judge_names(value))
    except UnknownJudge as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _judge_mode(value: str) -> str:
    from pytest_aci.judges import ENSEMBLE_MODES

    if value not in ENSEMBLE_MODES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(ENSEMBLE_MODES)}, got {value!r}")
    return value


def _one_of(*choices: str):
    def check(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise argparse.ArgumentTypeError(f"expected an http(s) URL such as http://127.0.0.1:8000, got {value!r}")
    return value


def _env_name(value: str) -> str:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
        raise argparse.ArgumentTypeError(f"expected an environment variable name such as OPENAI_API_KEY, got {value!r}")
    return value


def _existing_file(value: str) -> str:
    if not Path(value).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value!r}")
    return value


def _key_value(value: str) -> str:
    if "=" not in value or not value.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return value


VALIDATORS = {
    "aci_backend": _backend,
    "aci_judge": _judge,
    "aci_judge_mode": _judge_mode,
    "aci_judge_threshold": _fraction,
    "aci_examples": _positive_int,
    "aci_seed": _seed,
    "aci_max_new_tokens": _positive_int,
    "aci_max_asr": _fraction,
    "aci_baseline_alpha": _fraction,
    "aci_endpoint": _url,
    "aci_max_in_flight": _positive_int,
    "aci_concurrent_items": _positive_int,
    "aci_api_key_env": _env_name,
    "aci_ca_bundle": _existing_file,
    "aci_mode": _one_of("generate", "score"),
    "aci_search": _one_of("random", "targeted"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aci", "pytest-aci: depth of safety alignment")
    for flag, ini, help_text in OPTIONS:
        if ini == "aci_vllm_args":
            group.addoption(
                flag, dest=ini, action="append", type=_key_value, default=None, metavar="KEY=VALUE", help=help_text
            )
            parser.addini(ini, help_text, type="linelist", default=[])
            continue
        group.addoption(flag, dest=ini, type=VALIDATORS.get(ini, str), default=None, help=help_text)
        parser.addini(ini, help_text, default=None)
    for flag, ini, help_text in FLAGS:
        group.addoption(flag, dest=ini, action="store_true", default=False, help=help_text)
        parser.addini(ini, help_text, type="bool", default=False)


def _register_hypothesis_profiles() -> None:
    from hypothesis import HealthCheck, settings

    base = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
    known = set(getattr(settings, "_profiles", {}))
    if "dev" not in known:
        settings.register_profile("dev", **base)
    if "nightly" not in known:
        settings.register_profile("nightly", **base)


def _option(config: pytest.Config, name: str):
    """Command line first, then the ini key (validated the same way), else None."""
    value = config.getoption(name)
    if value is not None:
        return value
    raw = config.getini(name)
    if raw in (None, "", []):
        return None
    if name not in VALIDATORS:
        return raw
    try:
        return VALIDATORS[name](str(raw))
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"ini option {name}: {exc}") from None


def build_options(config: pytest.Config):
    from pytest_aci.backends import DEFAULT_API_KEY_ENV
    from pytest_aci.models import DEFAULT_MODEL
    from pytest_aci.runtime import AciOptions

    seed = _option(config, "aci_seed")
    report = _option(config, "aci_report")
    workerinput = getattr(config, "workerinput", None)
    seed_given = seed is not None
    if workerinput is not None:
        # pytest-xdist worker: the controller's seed, and a report file of its own to merge.
        seed = workerinput.get("aci_seed", seed)
        if report:
            report = f"{report}.{workerinput['workerid']}"
        assign_worker_device(workerinput["workerid"])
    raw_args = list(config.getoption("aci_vllm_args") or [])
    if not raw_args:
        for line in config.getini("aci_vllm_args") or []:
            try:
                raw_args.append(_key_value(line))
            except argparse.ArgumentTypeError as exc:
                raise pytest.UsageError(f"ini option aci_vllm_args: {exc}") from None
    engine_args = dict(item.split("=", 1) for item in raw_args)
    return AciOptions(
        model=_option(config, "aci_model") or DEFAULT_MODEL,
        backend=_option(config, "aci_backend") or "auto",
        judge=_option(config, "aci_judge"),
        judge_model=_option(config, "aci_judge_model"),
        judge_mode=_option(config, "aci_judge_mode") or "majority",
        judge_threshold=_option(config, "aci_judge_threshold"),
        examples=_option(config, "aci_examples"),
        seed=seed if seed is not None else random.Random().randrange(2**31),
        seed_given=seed_given,
        max_new_tokens=_option(config, "aci_max_new_tokens"),
        report=Path(report) if report else None,
        max_asr=_option(config, "aci_max_asr"),
        example_db=_option(config, "aci_example_db"),
        baseline=Path(baseline) if (baseline := _option(config, "aci_baseline")) else None,
        baseline_alpha=_option(config, "aci_baseline_alpha") or 0.05,
        redact=config.getoption("aci_redact") or config.getini("aci_redact"),
        save_failures=config.getoption("aci_save_failures") or config.getini("aci_save_failures"),
        engine_args={k.strip(): v.strip() for k, v in engine_args.items()},
        endpoint=_option(config, "aci_endpoint"),
        max_in_flight=_option(config, "aci_max_in_flight") or 8,
        api_key_env=_option(config, "aci_api_key_env") or DEFAULT_API_KEY_ENV,
        ca_bundle=_option(config, "aci_ca_bundle"),
        mode=_option(config, "aci_mode") or "generate",
        search=_option(config, "aci_search") or "random",
        concurrent_items=_option(config, "aci_concurrent_items") or 64,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "aci: an item collected from a pytest-aci safety spec")
    _register_hypothesis_profiles()
    options = build_options(config)
    from pytest_aci.backends import BackendError
    from pytest_aci.models import ModelNotFound, check_model_name

    try:
        check_model_name(options.model)
    except ModelNotFound as exc:
        raise pytest.UsageError(str(exc)) from None
    from pytest_aci.judges import UnknownJudge, default_judge

    try:
        default_judge()
    except UnknownJudge as exc:
        raise pytest.UsageError(str(exc)) from None
    if options.judge_model:
        try:
            check_model_name(options.judge_model)
        except ModelNotFound as exc:
            raise pytest.UsageError(str(exc).replace("--aci-model", "--aci-judge-model", 1)) from None
    from pytest_aci.collect import runtime_key
    from pytest_aci.runtime import AciRuntime

    if options.endpoint and not hasattr(config, "workerinput"):  # a refused key ends the session at once
        from pytest_aci.backends.openai import check_access

        try:
            check_access(options.endpoint, api_key_env=options.api_key_env, ca_bundle=options.ca_bundle)
        except BackendError as exc:
            raise pytest.UsageError(str(exc)) from None
    try:
        runtime = config.stash[runtime_key] = AciRuntime(options)
    except BackendError as exc:
        raise pytest.UsageError(str(exc)) from None
    recorder = OutcomeRecorder(runtime)
    if options.baseline is not None and not hasattr(config, "workerinput"):
        from pytest_aci.baseline import BaselineError, load_baseline

        try:
            recorder.baseline = load_baseline(options.baseline)
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(recorder, "aci-outcomes")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(), "aci-xdist")


class XdistHooks:
    """Registered only when pytest-xdist is installed: hand the session seed to every worker."""

    def pytest_configure_node(self, node) -> None:
        from pytest_aci.collect import runtime_key

        node.workerinput["aci_seed"] = node.config.stash[runtime_key].options.seed


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


def pytest_collection_finish(session: pytest.Session) -> None:
    from pytest_aci.collect import AciItem, runtime_key

    runtime = session.config.stash[runtime_key]
    for item in session.items:
        if isinstance(item, AciItem):
            runtime.wanted_prompts.setdefault(item.loaded.path, set()).add(item.prompt.id)
            if item.check == "recovers":
                runtime.pending_recovers.setdefault(item.loaded.path, []).append(item)


class OutcomeRecorder:
    """Registered per session: collects each spec item's result from its report.

    Item results travel in ``report.user_properties``, so the same code runs serially and on the
    pytest-xdist controller, which collects nothing itself.
    """

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.results: dict[str, object] = {}  # node id -> summary.ItemResult
        self.thresholds: dict[str, float] = {}  # spec name -> its threshold
        self.cases = 0
        self.judge_errors = 0  # cases whose judge answer could not be parsed (from every worker)
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
        """An item's judge errors travel in its report, so the xdist controller can count them too."""
        report = yield
        errors = self.runtime.judge_errors_by_item.get(item.nodeid, 0)
        if call.when == "call" and errors:
            report.user_properties.append(("aci_judge_errors", errors))
        return report

    def _record(self, report: pytest.TestReport) -> None:
        from pytest_aci.summary import ItemResult

        match = SPEC_ITEM_ID.search(report.nodeid)
        if match is None:
            return
        properties = dict(report.user_properties)
        self.judge_errors += int(properties.get("aci_judge_errors", 0))
        if "aci_result" in properties:
            if report.nodeid in self.results:  # the teardown report carries the call's properties again
                return
            result = ItemResult.from_json(properties["aci_result"])
            self.results[report.nodeid] = result
            self.cases += result.cases
            if "aci_threshold" in properties:
                self.thresholds[result.spec] = float(properties["aci_threshold"])
        elif report.failed and report.nodeid not in self.results:
            # Setup or the model failed before any case ran: the item still counts as failed.
            spec = Path(report.nodeid.split("::")[0]).name.split(".aci.")[0]
            self.results[report.nodeid] = ItemResult(
                self.runtime.options.model, spec, match.group(1), report.nodeid, failed=True
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
        """One line per gate the session's measured ASR exceeds."""
        from pytest_aci.summary import attack_rate

        summaries = self.summaries()
        failures = []
        max_asr = self.runtime.options.max_asr
        overall = attack_rate(summaries)
        if max_asr is not None and overall.total and overall.value > max_asr:
            failures.append(
                f"aci gate: attack success rate {overall.value:.1%} ({overall.hits}/{overall.total} items, "
                f"95% CI {overall.interval[0]:.1%}-{overall.interval[1]:.1%}) exceeds --aci-max-asr {max_asr:.1%}"
            )
        for spec, threshold in sorted(self.thresholds.items()):
            rate = attack_rate(summaries, spec)
            if rate.total and rate.value > threshold:
                failures.append(
                    f"aci gate: spec {spec!r} attack success rate {rate.value:.1%} ({rate.hits}/{rate.total} items) "
                    f"exceeds its threshold {threshold:.1%}"
                )
        failures += self._check_baseline()
        self.gate_failures = failures
        return failures

    def _check_baseline(self) -> list[str]:
        """The --aci-baseline comparison: its lines for the summary, and a gate failure per worse rate."""
        if self.baseline is None or not self.results:
            return []
        from pytest_aci.baseline import compare, judge_note

        options = self.runtime.options
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
            case = RegressionCase.from_record(result.counterexample, redacted=self.runtime.options.redact)
            per_spec.setdefault(spec_path, []).append(case)
        lines = []
        for spec_path, cases in sorted(per_spec.items()):
            added = save_regressions(spec_path, cases)
            lines.append(f"aci: {added} new regression case(s) saved to {regression_path(spec_path)}")
        return lines


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    from pytest_aci.collect import counterexample_line, runtime_key
    from pytest_aci.summary import attack_rate, case_attack_rate, format_table

    runtime = config.stash.get(runtime_key, None)
    recorder = config.pluginmanager.get_plugin("aci-outcomes")
    if runtime is None or recorder is None or not recorder.results:
        return
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
    if recorder.judge_errors:
        terminalreporter.write_line(
            f"aci: {recorder.judge_errors} judge errors (unparsable judge answers, counted as failures)", red=True
        )
    for line in recorder.baseline_lines:
        terminalreporter.write_line(line)
    for failure in recorder.gate_failures:
        terminalreporter.write_line(failure, red=True, bold=True)


def pytest_report_header(config: pytest.Config) -> list[str]:
    from hypothesis import settings

    from pytest_aci.collect import runtime_key
    from pytest_aci.judges import default_judge

    runtime = config.stash[runtime_key]
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
    from pytest_aci.collect import runtime_key

    runtime = session.config.stash.get(runtime_key, None)
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
def aci_runtime(pytestconfig: pytest.Config):
    """The session's pytest-aci runtime (model backend, judges, cache) for Python tests."""
    from pytest_aci.collect import runtime_key

    return pytestconfig.stash[runtime_key]


@pytest.fixture(scope="session")
def aci_model(aci_runtime):
    """The model under test as a backend: ``generate(token_id_prompts, max_new_tokens)``."""
    return aci_runtime.backend
