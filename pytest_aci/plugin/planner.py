"""Planning generation ahead of the searches, so the engine gets full batches.

Two ways: the searches of a spec's ``recovers`` items run together (``search_spec_together``, over
``search_pool.py``), or — one item at a time — each seeded search is dry-run with a stand-in verdict
and the cases it would ask for are generated in one call (``prefetch_spec``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from pytest_aci.engine.depth_sample import SampleCase
from pytest_aci.engine.runtime import AciRuntime
from pytest_aci.engine.search_pool import Search, SearchPool
from pytest_aci.spec import LoadedPrompt, LoadedSpec
from pytest_aci.types import InsertionCase


class PlannedItem(Protocol):
    """What the planner reads of a ``recovers`` item (``collect.PlannedItem``)."""

    nodeid: str
    config: pytest.Config
    runtime: AciRuntime
    loaded: LoadedSpec
    prompt: LoadedPrompt

    def depth_sample(self) -> list[SampleCase]: ...

    def recovers_search(self) -> Callable[[], None]: ...

    def search(self, evaluate: Callable[[list[InsertionCase]], None], *, use_database: bool) -> Callable[[], None]: ...


@dataclass
class Plan:
    """The session's planning state: which recovers items each spec has (in run order), which were
    prefetched, and the pooled searches that ended and wait for their item's turn."""

    pending_recovers: dict[Path, list[PlannedItem]] = field(default_factory=dict)
    prefetched: set[str] = field(default_factory=set)
    pooled: dict[str, Search] = field(default_factory=dict)


plan_key = pytest.StashKey[Plan]()


def session_plan(config: pytest.Config) -> Plan:
    """The session's plan, made on first use."""
    if plan_key not in config.stash:
        config.stash[plan_key] = Plan()
    return config.stash[plan_key]


class _PlannedFailure(Exception):
    """Raised by the dry run that plans the cases of a search that fails everywhere."""


def prefetch_spec(first: PlannedItem, max_items: int = 64) -> None:
    """Generate the planned cases of the next recovers items of a spec in one backend call.

    Hypothesis runs one item and one example at a time; a batch of 4 keeps a vLLM engine mostly
    idle. Planning the seeded searches ahead lets one large call fill the continuation cache.
    """
    runtime, plan = first.runtime, session_plan(first.config)
    pending = [i for i in plan.pending_recovers.get(first.loaded.path, []) if i.nodeid not in plan.prefetched]
    items = [first, *[i for i in pending if i is not first]][:max_items]
    prefixes = []
    for item in items:
        plan.prefetched.add(item.nodeid)
        cases = [s.case for s in item.depth_sample()] + planned_cases(item)
        prefixes += runtime.states.insertion_prefixes(item.loaded, item.prompt, cases)
    runtime.prefetch(first.loaded, prefixes)


def runs_whole_specs(config: pytest.Config) -> bool:
    """Whether this process runs every item of a spec it runs one of: then the pool may run them ahead.

    A pytest-xdist worker does under ``--dist loadfile`` or ``loadscope``; under ``load`` it cannot know
    which items it will be given, so it keeps the dry-run planner.
    """
    if not hasattr(config, "workerinput"):
        return True
    return getattr(config.option, "dist", "no") in ("loadfile", "loadscope")


def search_spec_together(first: PlannedItem, max_items: int) -> None:
    """Run the searches of the next ``max_items`` recovers items of ``first``'s spec at once (search_pool.py).

    Each item's outcome waits in the session plan's ``pooled`` for its turn; its records go to the report then.
    """

    runtime, plan = first.runtime, session_plan(first.config)
    pending = [i for i in plan.pending_recovers.get(first.loaded.path, []) if i.nodeid not in plan.pooled]
    items = [first, *[i for i in pending if i is not first]][:max_items]
    runtime.judges.judge_for(first.loaded)  # what the searches share is made here, before they start
    searches = [Search(item.nodeid, item.recovers_search()) for item in items]
    pool = SearchPool()
    pool.run(searches)
    runtime.stats.rounds += pool.stats.rounds
    for search in searches:
        plan.pooled[search.name] = search


def planned_cases(item: PlannedItem) -> list[InsertionCase]:
    """The cases this item's search will ask for if every case passes, and if every case fails.

    The search is seeded, so a dry run with a stand-in verdict replays its draws exactly: a
    robust model takes the first path, a broken one the second (generation, then shrinking).
    """
    planned: list[InsertionCase] = []

    def all_pass(cases):
        planned.extend(cases)

    def all_fail(cases):
        planned.extend(cases)
        raise _PlannedFailure

    item.search(all_pass, use_database=False)()
    try:
        item.search(all_fail, use_database=False)()
    except _PlannedFailure:
        pass
    return list(dict.fromkeys(planned))
