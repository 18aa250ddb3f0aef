"""Generation bookkeeping: the session's continuation cache and the counters of the timing line."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_aci.backends import Backend, Completion
from pytest_aci.engine.search_pool import pooled
from pytest_aci.lru import LruCache
from pytest_aci.store import Store, digest, keep_completions, stored_completions

if TYPE_CHECKING:
    from pytest_aci.engine.defences import Defence


class ContinuationCache(LruCache[tuple, Completion]):
    """A full token prefix (and generation settings) → its greedy continuation, least recently used dropped."""


@dataclass
class GenerationStats:
    startup_s: float = 0.0  # model load / engine start
    generate_s: float = 0.0  # time inside backend.generate
    calls: int = 0
    sequences: int = 0
    tokens: int = 0
    score_s: float = 0.0  # time inside backend.score
    score_calls: int = 0
    scored: int = 0  # teacher-forced continuations
    model_tokens: int = 0  # tokens the model ran, generation and scoring (prefix-cache hits excluded)
    judge_calls: int = 0  # calls to the judge with at least one response
    rounds: int = 0  # rounds of pooled searches (search_pool.py)
    sample_states: int = 0  # depth-sample states continued and judged (depth_sample.py), in the searches' calls
    sample_tokens: int = 0  # the tokens of their continuations
    extended_states: int = 0  # continuations still on the harmful track at their budget, read further
    extended_tokens: int = 0  # the tokens that reading further generated

    def summary(self, judging: str | None = None, store: str = "") -> str:
        """The timing lines: generation (with the in-process judges' cost beside it), harm scores, tokens run."""
        rate = self.tokens / self.generate_s if self.generate_s else 0.0
        line = (
            f"generation: {self.calls} backend calls, {self.sequences} sequences, {self.tokens} tokens "
            f"in {self.generate_s:.1f} s ({rate:.0f} tok/s)"
        )
        if self.rounds:
            line += f" over {self.rounds} rounds of searches run together"
        if judging:
            line += f"; {judging}, {self.judge_calls} judge calls"
        line += f"; model start {self.startup_s:.1f} s"
        if self.sample_states:
            share = self.sample_tokens / self.tokens if self.tokens else 0.0
            line += (
                f"\ndepth sample: {self.sample_states} states in the searches' calls, {self.sample_tokens} tokens "
                f"of continuation ({share:.0%} of the generated tokens)"
            )
        if self.extended_states:
            share = self.extended_tokens / self.tokens if self.tokens else 0.0
            line += (
                f"\nread further: {self.extended_states} undecided continuations extended by {self.extended_tokens} "
                f"tokens ({share:.0%} of the generated tokens)"
            )
        if self.score_calls:
            line += (
                f"\nharm scores: {self.score_calls} backend calls, {self.scored} teacher-forced continuations "
                f"in {self.score_s:.1f} s"
            )
        if store:  # the persistent store's line (store.py), when there is one
            line += f"\n{store}"
        return line + f"\nmodel tokens run: {self.model_tokens}"


class Generation:
    """Generate through the cache: each distinct prefix is generated at most once per session.

    Inside a pooled search (``search_pool.py``) a request joins every other search's of the round, in one call.
    """

    def __init__(
        self, backend: Callable[[], Backend], cache_size: int, store: Store | None = None, identity=lambda: None
    ):
        self._backend = backend  # started on first use
        self.cache = ContinuationCache(cache_size)
        self.stats = GenerationStats()
        # Across runs: the store, under the model's identity (its fingerprint, the backend and its settings;
        # None where the model has no fingerprint: a hub id, a served engine).
        self.store, self._identity = store, identity

    def generate(
        self,
        prompts: Sequence[tuple[int, ...]],
        max_new_tokens: int,
        stop: tuple[str, ...],
        defence: Defence | None = None,
    ) -> list[Completion]:
        """Greedy answers through the cache; with a ``defence``, the defence's answers (its own generation
        calls go through the cache)."""
        if defence is not None:
            return defence.generate(self.generate, prompts, max_new_tokens, stop)
        return pooled(("generate", max_new_tokens, stop), prompts, lambda todo: self._now(todo, max_new_tokens, stop))

    def _now(self, prompts: Sequence[tuple[int, ...]], max_new_tokens: int, stop: tuple[str, ...]) -> list[Completion]:
        keys = [(prompt, max_new_tokens, stop) for prompt in prompts]
        found = {key: self.cache.get(key) for key in dict.fromkeys(keys)}
        todo = [key for key, value in found.items() if value is None]
        stored = self._stored(todo)
        found.update(stored)
        todo = [key for key in todo if key not in stored]
        if todo:
            backend = self._backend()
            started, before = time.perf_counter(), getattr(backend, "computed_tokens", 0)
            completions = backend.generate([key[0] for key in todo], max_new_tokens, stop)
            self.stats.generate_s += time.perf_counter() - started
            self.stats.model_tokens += getattr(backend, "computed_tokens", 0) - before
            self.stats.calls += 1
            self.stats.sequences += len(todo)
            for key, completion in zip(todo, completions):
                self.cache.put(key, completion)
                found[key] = completion
                self.stats.tokens += len(completion.token_ids)
            self._keep({key: found[key] for key in todo})
        return [found[key] for key in keys]  # type: ignore[misc]

    def _store_key(self, key: tuple) -> bytes | None:
        identity = self._identity() if self.store is not None else None
        if identity is None:
            return None
        prompt, max_new_tokens, stop = key
        return digest("generation", identity, list(prompt), max_new_tokens, list(stop))

    def _stored(self, todo: Sequence[tuple]) -> dict[tuple, Completion]:
        """What earlier runs generated for these keys (into the session's cache too)."""
        keys = {key: stored for key in todo if (stored := self._store_key(key)) is not None}
        if not keys:
            return {}
        stored = stored_completions(self.store, keys.values())
        found = {key: stored[k] for key, k in keys.items() if k in stored}
        for key, completion in found.items():
            self.cache.put(key, completion)
        return found

    def _keep(self, generated: dict[tuple, Completion]) -> None:
        entries = {k: c for key, c in generated.items() if (k := self._store_key(key)) is not None}
        if entries:
            keep_completions(self.store, entries)
