"""The session's runtime, started when pytest-aci is asked for and not before.

pytest-aci is asked for when an ``--aci-*`` option (or its ini key) is set, when spec items are
collected, or when a test requests the ``aci`` / ``aci_runtime`` fixture. A pytest run with none of
these (a project that merely has the package installed) builds nothing and prints nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_aci.backends import BackendError
from pytest_aci.backends.endpoint import check_access
from pytest_aci.engine.runtime import AciRuntime
from pytest_aci.judges import UnknownJudge, default_judge
from pytest_aci.models import ModelNotFound, check_model_name
from pytest_aci.options import AciOptions

if TYPE_CHECKING:
    from pytest_aci.engine.runtime import AciRuntime

options_key = pytest.StashKey[AciOptions]()
runtime_key = pytest.StashKey["AciRuntime"]()
sigterm_key = pytest.StashKey[bool]()


def session_options(config: pytest.Config) -> AciOptions:
    return config.stash[options_key]


def active_runtime(config: pytest.Config) -> AciRuntime | None:
    """The runtime if the session has started one, else None (nothing is started here)."""
    return config.stash.get(runtime_key, None)


def is_controller(config: pytest.Config) -> bool:
    """Not a pytest-xdist worker: the process that reports, gates and merges."""
    return not hasattr(config, "workerinput")


def session_runtime(config: pytest.Config) -> AciRuntime:
    """The session's runtime, started (and its options checked) on first need.

    Bad options end the session with a usage error naming the option.
    """
    runtime = active_runtime(config)
    if runtime is None:
        runtime = config.stash[runtime_key] = start_runtime(session_options(config), is_controller(config))
        interrupt_on_sigterm(config)
    return runtime


def interrupt_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM (a CI time-out, a scheduler's preemption) ends the run as Ctrl-C does: pytest finishes the
    session, and the report's journal is kept, synced. Only where nothing else handles SIGTERM; undone when
    the session ends (``restore_sigterm``)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
    config.stash[sigterm_key] = True


def restore_sigterm(config: pytest.Config) -> None:
    import signal

    if config.stash.get(sigterm_key, False):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        config.stash[sigterm_key] = False


def start_runtime(options: AciOptions, controller: bool = True) -> AciRuntime:
    """Check what can be checked before any model loads, then build the runtime (the backend starts later)."""

    try:
        check_model_name(options.model)
    except ModelNotFound as exc:
        raise pytest.UsageError(str(exc)) from None
    try:
        default_judge()
    except UnknownJudge as exc:
        raise pytest.UsageError(str(exc)) from None
    if options.judge_model:
        try:
            check_model_name(options.judge_model)
        except ModelNotFound as exc:
            raise pytest.UsageError(str(exc).replace("--aci-model", "--aci-judge-model", 1)) from None
    if options.endpoint and controller:  # a refused key ends the session at once
        try:
            check_access(options.endpoint, api_key_env=options.api_key_env, ca_bundle=options.ca_bundle)
        except BackendError as exc:
            raise pytest.UsageError(str(exc)) from None
    try:
        return AciRuntime(options)
    except BackendError as exc:
        raise pytest.UsageError(str(exc)) from None
