"""The Hypothesis search of a ``recovers`` item: strategy, example budget, example database, saved
regressions and the per-item seed, in one place (spec items, the planner and the Python API use it)."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pytest_aci.engine.example_db import ItemDatabase, SessionDatabase
from pytest_aci.engine.seeds import derive_seed
from pytest_aci.engine.strategies import insertion_batches
from pytest_aci.spec import LoadedPrompt, LoadedSpec
from pytest_aci.spec.regressions import RegressionCase, fit_regressions
from pytest_aci.types import InsertionCase

if TYPE_CHECKING:
    from pytest_aci.engine.states import InsertionStates
    from pytest_aci.options import AciOptions

EXAMPLE_MULTIPLIER = {"nightly": 10}  # a Hypothesis profile's multiple of each spec's examples


_shrinking_lock = threading.Lock()
_shrinking_searches = [0, None]  # searches running; Hypothesis's own time limit, kept while they run


@contextmanager
def shrinking_by_count() -> Iterator[None]:
    """While a search runs, its shrinking is bounded by Hypothesis's count of shrinks (500), not by its five
    minutes of wall-clock time: on a slow or busy machine the time limit stops a shrink early, and a rerun
    whose model calls come from the store shrinks further, so the same seed would give another report.
    (``MAX_SHRINKING_SECONDS`` is, by Hypothesis's own comment, there to be monkeypatched; searches pooled in
    threads share one setting, restored when the last one ends.)"""
    from hypothesis.internal.conjecture import engine

    with _shrinking_lock:
        if _shrinking_searches[0] == 0:
            _shrinking_searches[1] = engine.MAX_SHRINKING_SECONDS
            engine.MAX_SHRINKING_SECONDS = math.inf
        _shrinking_searches[0] += 1
    try:
        yield
    finally:
        with _shrinking_lock:
            _shrinking_searches[0] -= 1
            if _shrinking_searches[0] == 0:
                engine.MAX_SHRINKING_SECONDS = _shrinking_searches[1]


def shrunk_by_count(test: Callable[[], None]) -> Callable[[], None]:
    """``test`` (a Hypothesis test) run under ``shrinking_by_count``."""

    @functools.wraps(test)
    def run() -> None:
        with shrinking_by_count():
            test()

    return run


def hypothesis_search(
    nodeid: str,
    loaded: LoadedSpec,
    prompt: LoadedPrompt,
    regressions: Sequence[RegressionCase],
    evaluate: Callable[[list[InsertionCase]], None],
    *,
    states: InsertionStates,
    options: AciOptions,
    example_db: SessionDatabase,
    tokenizer,
    use_database: bool,
) -> Callable[[], None]:
    """An item's Hypothesis search over insertion batches, seeded per item, calling ``evaluate``: its saved
    regressions first, then (without ``--aci-seed``) the failure its example database kept, then new draws.

    ``states`` gives the model's answer and the span ids, ``options`` the example budget, search and seed,
    ``example_db`` the session's example database, ``tokenizer`` the model's (to fit saved regressions)."""
    from hypothesis import HealthCheck, Phase, example, given, seed, settings

    answer_len = states.answer_len(loaded, prompt)
    spans = states.span_ids(loaded, prompt)
    targeted = options.search == "targeted"
    leads = len(loaded.spec.span_leads) if targeted else 0
    strategy = insertion_batches(answer_len, [s.max_tokens for s in spans], loaded.spec.batch, leads)
    profile = settings.get_current_profile_name()
    scale = EXAMPLE_MULTIPLIER.get(profile, 1) if options.examples is None else 1  # the spec's, scaled
    examples = options.for_spec(loaded.spec, "examples") * scale
    if targeted:  # an example generates about one state instead of a batch: as many generations, more steps
        examples *= loaded.spec.batch
    base_db = example_db.for_profile(settings.default.database)
    if use_database and not options.seed_given and base_db is not None:
        database = ItemDatabase(base_db, nodeid)
    else:
        database = None
    test = given(strategy)(evaluate)
    replayed = fit_regressions(regressions, loaded.spec.span_leads, spans, answer_len, tokenizer)
    if replayed:
        test = example(replayed)(test)
    # The seed goes on before the settings: seed() also switches the example database off, and the
    # settings applied after it switch the item's database back on (for runs without --aci-seed).
    test = seed(derive_seed(options.seed, nodeid))(test)
    return shrunk_by_count(
        settings(
            parent=settings.default,
            max_examples=examples,
            deadline=None,
            database=database,
            print_blob=False,
            # The explain phase re-runs many variants of the failure: a model call each.
            phases=[p for p in settings.default.phases if p is not Phase.explain],
            report_multiple_bugs=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(test)
    )
