"""The search pool: searches run one at a time, and each round's requests are served in one call."""

from __future__ import annotations

import threading

import pytest

from pytest_aci.engine.search_pool import Search, SearchPool, current_search, pooled


class Recorder:
    """A model stand-in: doubles its inputs, and remembers each call's inputs."""

    def __init__(self, fail_on: int | None = None):
        self.calls: list[list[int]] = []
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"cannot serve {self.fail_on}")
        return [2 * item for item in items]


def asks(name: str, requests: list[list[int]], serve: Recorder, seen: dict, running: list, key="double") -> Search:
    def run():
        for items in requests:
            running.append(name)
            assert running.count(name) == 1 and len(running) == 1  # no other search runs meanwhile
            running.remove(name)
            seen.setdefault(name, []).append(pooled(key, items, serve))
        return name

    return Search(name, run)


def test_each_round_is_one_call_and_every_search_gets_its_own_share():
    serve, seen, running = Recorder(), {}, []
    searches = [
        asks("a", [[1, 2], [3]], serve, seen, running),
        asks("b", [[10], [11, 12], [13]], serve, seen, running),
        asks("c", [], serve, seen, running),
    ]
    pool = SearchPool()
    pool.run(searches)
    # Round 1: a's and b's first requests; round 2: their second; round 3: b alone.
    assert serve.calls == [[1, 2, 10], [3, 11, 12], [13]]
    assert seen == {"a": [[2, 4], [6]], "b": [[20], [22, 24], [26]]}
    assert (pool.stats.rounds, pool.stats.calls, pool.stats.items) == (3, 3, 7)
    assert all(s.error is None for s in searches)
    # What each search got is what it gets alone, outside the pool.
    alone = Recorder()
    assert [pooled("double", items, alone) for items in ([10], [11, 12], [13])] == seen["b"]


def test_requests_of_different_kinds_are_served_apart():
    double, other = Recorder(), Recorder()
    got = {}

    def first():
        got["x"] = pooled("double", [1], double)

    def second():
        got["y"] = pooled("other", [5], other)

    SearchPool().run([Search("x", first), Search("y", second)])
    assert (double.calls, other.calls) == ([[1]], [[5]])
    assert got == {"x": [2], "y": [10]}


def test_a_failed_call_reaches_every_search_that_asked_and_the_others_go_on():
    serve, seen, running = Recorder(fail_on=3), {}, []
    searches = [asks("a", [[1], [3]], serve, seen, running), asks("b", [[2], [3], [4]], serve, seen, running)]
    lone = asks("c", [[7], [8], [9]], Recorder(), seen, running, key="other")  # served by calls of its own
    SearchPool().run([*searches, lone])
    for search in searches:
        assert isinstance(search.error, RuntimeError) and "cannot serve 3" in str(search.error)
    assert lone.error is None and seen["c"] == [[14], [16], [18]]


def test_what_a_search_raises_stays_on_it():
    def broken():
        raise KeyError("lost")

    search = Search("k", broken)
    SearchPool().run([search])
    assert isinstance(search.error, KeyError)


def test_outside_a_pool_a_request_is_served_at_once():
    serve = Recorder()
    assert current_search() is None
    assert pooled("double", [4], serve) == [8]
    assert serve.calls == [[4]]


def test_searches_run_in_their_own_threads_and_none_is_left_behind():
    names = []

    def run():
        names.append(threading.current_thread().name)
        pooled("double", [1], Recorder())

    SearchPool().run([Search("one", run), Search("two", run)])
    assert names == ["aci-one", "aci-two"]
    assert not [t for t in threading.enumerate() if t.name.startswith("aci-")]


@pytest.mark.parametrize("count", [1, 40])
def test_many_searches_finish(count):
    serve = Recorder()
    searches = [Search(str(i), lambda i=i: pooled("double", [i], serve)) for i in range(count)]
    SearchPool().run(searches)
    assert serve.calls == [list(range(count))]


@pytest.mark.parametrize(
    ("worker", "dist", "together"),
    [(False, "no", True), (True, "loadfile", True), (True, "loadscope", True), (True, "load", False)],
)
def test_searches_run_together_only_where_a_process_gets_whole_specs(worker, dist, together):
    from types import SimpleNamespace

    from pytest_aci.plugin.planner import runs_whole_specs

    config = SimpleNamespace(option=SimpleNamespace(dist=dist))
    if worker:
        config.workerinput = {"workerid": "gw0"}
    assert runs_whole_specs(config) is together


def test_shrinking_is_bounded_by_its_count_not_by_the_clock(monkeypatch):
    """On a slow machine Hypothesis stops shrinking after five minutes; a rerun whose model calls come from the
    store is fast and shrinks further, so the same seed would give another report. A search shrinks by count."""
    import itertools
    import time
    from types import SimpleNamespace

    from hypothesis import Phase, given, seed, settings
    from hypothesis import strategies as st
    from hypothesis.internal.conjecture import engine

    from pytest_aci.engine.search import shrunk_by_count

    clock = itertools.count(step=100.0)  # every look at the shrinker's clock: 100 s later
    fast = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    monkeypatch.setattr(engine, "time", SimpleNamespace(**{**fast, "perf_counter": lambda: next(clock)}))
    limit = engine.MAX_SHRINKING_SECONDS

    def found(wrap) -> int:
        failing = []

        @settings(database=None, deadline=None, max_examples=200, phases=[Phase.generate, Phase.shrink])
        @seed(3)
        @given(st.integers(0, 10**9))
        def test(x):
            if x >= 1000:
                failing.append(x)
                raise AssertionError(x)

        with pytest.raises(AssertionError):
            wrap(test)()
        return failing[-1]  # the example Hypothesis reports: the last one it ran

    assert found(lambda test: test) > 1000  # the clock ran out: shrinking stopped part way
    assert found(shrunk_by_count) == 1000  # shrunk to the minimal example
    assert engine.MAX_SHRINKING_SECONDS == limit  # restored after the search


def test_an_interrupted_pool_lets_the_running_search_reach_its_request_and_runs_no_search_after():
    """Ctrl-C or SIGTERM lands in the coordinator while a search runs: the coordinator waits for that search to
    post its request, then re-raises with every search parked, so no search thread runs while pytest unwinds."""
    import os
    import signal
    import time

    steps: list[str] = []

    def run():
        steps.append("started")
        os.kill(os.getpid(), signal.SIGINT)  # the coordinator, waiting for this search, is interrupted
        time.sleep(0.3)
        steps.append("reached its request")
        pooled("double", [1], Recorder())
        steps.append("went on")  # never: it stays parked

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # an in-process engine may have set its own
    try:
        with pytest.raises(KeyboardInterrupt):
            SearchPool().run([Search("a", run)])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert steps == ["started", "reached its request"]
    time.sleep(0.3)
    assert steps == ["started", "reached its request"]
