from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
from warm_runs import runpytest_forked

ROOT = Path(__file__).resolve().parent.parent
TINY_RANDOM = ROOT / "fixtures" / "tiny-random"
TINY_REFUSER = ROOT / "fixtures" / "tiny-refuser"


def pytest_configure(config: pytest.Config) -> None:
    """The plugin-mechanics tests judge the tiny models' text with the refusal keywords: instant and exact.

    The default judge (the harm-classifier on SmolLM2) has tests of its own and the end-to-end tests,
    which unset this variable; runs that tests start inherit it.
    """
    os.environ.setdefault("PYTEST_ACI_DEFAULT_JUDGE", "refusal-keywords")
    # No store of generations and verdicts across runs unless a test asks (--aci-cache-dir): each test's
    # counts of model calls are its own, not what an earlier test left (tests/test_store.py tests the store).
    os.environ.setdefault("PYTEST_ACI_STORE", "off")


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """Pytester whose ``runpytest_subprocess`` forks each run from a warm process (tests/warm_runs.py)."""
    pytester.runpytest_subprocess = functools.partial(runpytest_forked, pytester)
    return pytester


@pytest.fixture
def default_judge_env(monkeypatch):
    """For a test that runs the real default judge."""
    monkeypatch.delenv("PYTEST_ACI_DEFAULT_JUDGE", raising=False)


@pytest.fixture(scope="session")
def tiny_random_path() -> Path:
    return TINY_RANDOM


@pytest.fixture(scope="session")
def tiny_refuser_path() -> Path:
    return TINY_REFUSER


@pytest.fixture()
def runtime(tiny_random_path):
    """A session runtime on tiny-random, seed 1, the keyword judge (for tests that call its parts)."""
    from pytest_aci.engine.runtime import AciRuntime
    from pytest_aci.options import AciOptions

    runtime = AciRuntime(AciOptions(model=str(tiny_random_path), backend="hf", seed=1, judge="refusal-keywords"))
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from pytest_aci.models import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(autouse=True)
def _outside_ci(request, monkeypatch):
    """Runs started by tests see no CI variable, so Hypothesis's default profile applies in them too.

    (With CI set, Hypothesis loads its "ci" profile; test_plugin checks that case on its own.)
    """
    if "pytester" in request.fixturenames:
        monkeypatch.delenv("CI", raising=False)


# Under pytest-xdist (make test runs two workers), a test file is one unit of work, so a module's fixtures (a vLLM
# engine, the harm-classifier, a served engine) start once; the files whose tests load Qwen in process are one unit
# together, so two of those engines never run at once (memory: the demo's Qwen runs beside them, 18 GB seen at most
# together). A worker takes the next unit when it is nearly done with its own, in the order collected: the longest
# units go first (the demo is a fifth of the suite's work), so that no long one starts last while the other idles.
TOGETHER = {"tests/test_qwen.py": "qwen", "tests/test_adapters.py": "qwen"}
LONGEST_FIRST = [  # by their time in a two-worker run (the rest, under a minute each, follow as collected)
    "tests/test_demo.py",
    "qwen",
    "tests/test_end_to_end.py",
    "tests/test_harden.py",
    "tests/test_plugin.py",
    "tests/test_gating.py",
    "tests/test_served.py",
    "tests/test_judges_models.py",
    "tests/test_backends.py",
    "tests/test_no_work_lost.py",
    "tests/test_python_api.py",
    "tests/test_store.py",
    "tests/test_example_db.py",
]


def work_unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return TOGETHER.get(path, path)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(work_unit(item.nodeid), len(rank)))  # stable: the rest as collected


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    class FilesAndQwen(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return FilesAndQwen(config, log)


# tests/examples/ holds the README's Python property test: tests/test_python_api.py runs it against the tiny
# models in a pytester project of its own (here it would start the default model in this session).
collect_ignore = ["examples"]
