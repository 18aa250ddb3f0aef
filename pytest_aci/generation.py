"""Generation bookkeeping: the session's continuation cache and the counters of the timing line."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_aci.backends import Completion
from pytest_aci.lru import LruCache


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
