"""Many items' Hypothesis searches at once, against one batching queue in front of the model.

Hypothesis runs one item and one example at a time, and an example is a batch of 4 insertion
states: alone, that keeps a batching engine (vLLM) mostly idle. A :class:`SearchPool` runs the
searches of many items in threads, one thread at a time (the coordinator passes a baton, so no two
searches ever touch shared state together). Each search runs until it needs the model — a
generation or a judge call — and posts that request through :func:`pooled`. When every search has
posted or finished, the coordinator serves each kind of request in one call for all of them, and
hands each its share. That is continuous batching on our side: a call per round of examples,
whatever the items are doing (generating, or shrinking a failure).

A search depends only on its own seed and its own model answers, so it takes the same path, and
reaches the same verdict and minimal failing case, as when it runs alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

_local = threading.local()


@dataclass
class _Request:
    key: Hashable  # requests with the same key are served by one call of ``serve``
    items: list
    serve: Callable[[list], list]


@dataclass
class Search:
    """One item's search in the pool: what it left behind when it ended."""

    name: str
    run: Callable[[], Any]
    error: BaseException | None = None  # what the search raised (a failing check, after shrinking)
    _request: _Request | None = None
    _result: list | None = None
    _failure: BaseException | None = None
    _turn: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _done: bool = False


def current_search() -> Search | None:
    """The pooled search this thread runs, if any."""
    return getattr(_local, "search", None)


def pooled(key: Hashable, items: Sequence, serve: Callable[[list], list]) -> list:
    """``serve(items)``, or, inside a pooled search, the same served together with every other
    search's request of the same ``key`` in this round."""
    search = current_search()
    if search is None:
        return serve(list(items))
    search._request = _Request(key, list(items), serve)
    _local.pool._back.release()  # the baton back to the coordinator
    search._turn.acquire()  # until the round is served
    result, failure = search._result, search._failure
    search._result = search._failure = None
    if failure is not None:
        raise failure
    return result  # type: ignore[return-value]


@dataclass
class RoundStats:
    rounds: int = 0
    calls: int = 0
    requests: int = 0
    items: int = 0


class SearchPool:
    def __init__(self) -> None:
        self._back = threading.Semaphore(0)
        self._baton_out = False  # a search runs and the coordinator waits for it
        self.stats = RoundStats()

    def run(self, searches: Sequence[Search]) -> None:
        """Run every search to its end; each one's outcome stays on it (``error``)."""
        threads = [threading.Thread(target=self._body, args=(s,), name=f"aci-{s.name}", daemon=True) for s in searches]
        for thread in threads:
            thread.start()
        try:
            self._coordinate(list(searches))
        except BaseException:
            self._park()
            raise
        for thread in threads:
            thread.join()

    def _coordinate(self, waiting: list[Search]) -> None:
        while waiting:
            for search in waiting:  # each runs alone until it posts a request or ends
                self._baton_out = True
                search._turn.release()
                self._back.acquire()
                self._baton_out = False
            waiting = [s for s in waiting if not s._done]
            if waiting:
                self._serve(waiting)

    def _park(self, timeout: float = 30.0) -> None:
        """Interrupted (Ctrl-C, SIGTERM): wait for the search that holds the baton to post its next request,
        then leave every search parked on its turn, so that no search thread runs while the interrupt unwinds
        and pytest formats it (Python 3.11's ``ast`` module is not safe to use from two threads at once)."""
        if self._baton_out:
            self._back.acquire(timeout=timeout)
            self._baton_out = False

    def _serve(self, searches: list[Search]) -> None:
        groups: dict[Hashable, list[Search]] = {}
        for search in searches:
            groups.setdefault(search._request.key, []).append(search)  # type: ignore[union-attr]
        self.stats.rounds += 1
        for group in groups.values():
            items = [item for s in group for item in s._request.items]  # type: ignore[union-attr]
            self.stats.calls += 1
            self.stats.requests += len(group)
            self.stats.items += len(items)
            try:
                results = group[0]._request.serve(items)  # type: ignore[union-attr]
            except Exception as exc:  # every search that asked sees the failure, as it would alone
                for search in group:
                    search._failure = exc
                continue
            at = 0
            for search in group:
                count = len(search._request.items)  # type: ignore[union-attr]
                search._result = results[at : at + count]
                at += count
        for search in searches:
            search._request = None

    def _body(self, search: Search) -> None:
        search._turn.acquire()
        _local.search, _local.pool = search, self
        try:
            search.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the item, which re-raises it on its turn
            search.error = exc
        finally:
            search._done = True
            self._back.release()
