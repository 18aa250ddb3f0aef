"""The pytest plugin: hooks and fixtures only, each handing its work to the module named after it.

options.py (the ``--aci-*`` table), session.py (the runtime, started when asked), collect.py (spec
items), api.py (Python property tests), outcomes.py (results, gates, JUnit), terminal.py (header and
summary), workers.py (pytest-xdist).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_aci.option_io import OptionError, add_options, any_given, read_options
from pytest_aci.plugin import api
from pytest_aci.plugin.api import Aci, run_like_a_spec_item
from pytest_aci.plugin.collect import AciItem, SpecFile
from pytest_aci.plugin.outcomes import OutcomeRecorder, finish_session
from pytest_aci.plugin.planner import session_plan
from pytest_aci.plugin.session import active_runtime, is_controller, options_key, restore_sigterm, session_runtime
from pytest_aci.plugin.terminal import header_lines, write_summary
from pytest_aci.plugin.workers import XdistHooks, assign_worker_device, share_worker_cores
from pytest_aci.reporting.baseline import BaselineError, load_baseline
from pytest_aci.spec import SPEC_SUFFIXES


def pytest_addoption(parser: pytest.Parser) -> None:

    add_options(parser)


def _register_hypothesis_profiles() -> None:
    """The ``dev`` and ``nightly`` profiles (no deadline: a model call takes seconds), unless the user made them."""
    from hypothesis import HealthCheck, settings
    from hypothesis.errors import InvalidArgument

    for name in ("dev", "nightly"):
        try:
            settings.get_profile(name)
        except InvalidArgument:
            settings.register_profile(name, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Read the options (cheap, silent); start the runtime now only when an ``--aci-*`` option asks for it.

    Otherwise it starts when spec items are collected or a test asks for the ``aci`` fixture.
    """
    config.addinivalue_line("markers", "aci: an item collected from a pytest-aci safety spec")
    _register_hypothesis_profiles()

    api._sessions.append(config)

    try:
        options = config.stash[options_key] = read_options(config)
        asked = any_given(config)
    except OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    if hasattr(config, "workerinput"):
        assign_worker_device(config.workerinput["workerid"])
        share_worker_cores(config.workerinput["workercount"])
    recorder = OutcomeRecorder(config)
    if options.baseline is not None and is_controller(config):
        try:
            recorder.baseline = load_baseline(options.baseline)
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(recorder, "aci-outcomes")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(), "aci-xdist")
    if asked:
        session_runtime(config)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """With ``--aci-*`` options, the Hypothesis profile in use (``--hypothesis-profile`` is loaded by now) loses its
    deadline before the test modules are imported, so that Python property tests calling the model inherit none."""
    if any_given(session.config):
        api.drop_profile_deadline(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:

    restore_sigterm(config)
    api.restore_profile(config)
    if config in api._sessions:
        api._sessions.remove(config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A Python property test that asks for the ``aci`` fixture runs like a spec item (``api.py``)."""
    if "aci" not in getattr(item, "fixturenames", ()):  # every other test: nothing imported, nothing done
        return (yield)

    return (yield from run_like_a_spec_item(item))


def pytest_collect_file(parent: pytest.Collector, file_path: Path):
    if file_path.name.endswith(SPEC_SUFFIXES):
        return SpecFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Items with saved regression cases run first, so a known failure shows at once."""

    items.sort(key=lambda item: not (isinstance(item, AciItem) and item.regressions))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Spec items collected: the runtime starts (if no option started it), and learns what will run."""

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
        runtime.states.wanted_prompts.setdefault(item.loaded.path, set()).add(item.prompt.id)
        if item.check == "recovers":
            session_plan(session.config).pending_recovers.setdefault(item.loaded.path, []).append(item)


@pytest.hookimpl(tryfirst=True)  # before junitxml writes its file
def pytest_sessionfinish(session: pytest.Session) -> None:

    finish_session(session)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:

    write_summary(terminalreporter, config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The ``aci:`` line, when an option started the runtime (else it is written after collection, if at all)."""

    return header_lines(config) if active_runtime(config) is not None else []


@pytest.fixture(scope="session")
def aci(pytestconfig: pytest.Config):
    """Continue insertion states and judge them, as a spec item would: ``aci.judge(aci.continue_from(state))``."""

    return Aci(session_runtime(pytestconfig))


@pytest.fixture(scope="session")
def aci_runtime(pytestconfig: pytest.Config):
    """The session's pytest-aci runtime (model backend, judges, cache) for Python tests."""

    return session_runtime(pytestconfig)


@pytest.fixture(scope="session")
def aci_model(aci_runtime):
    """The model under test as a backend: ``generate(token_id_prompts, max_new_tokens)``."""
    return aci_runtime.backend
