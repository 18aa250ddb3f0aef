"""Generation bookkeeping: the session's continuation cache and the counters of the timing line."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from pytest_aci.backends import Completion


class ContinuationCache:
    """LRU map from a full token prefix (and generation settings) to its greedy continuation."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, Completion] = OrderedDict()
        self.hits = 0

    def get(self, key: tuple) -> Completion | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def put(self, key: tuple, value: Completion) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


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

    def summary(self, judging: str | None = None) -> str:
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
        if self.score_calls:
            line += (
                f"\nharm scores: {self.score_calls} backend calls, {self.scored} teacher-forced continuations "
                f"in {self.score_s:.1f} s"
            )
        return line + f"\nmodel tokens run: {self.model_tokens}"
