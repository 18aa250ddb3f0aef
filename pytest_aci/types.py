"""Small value types that flow between the modules: an answer, an insertion state, a span, a score (a continuation,
which carries its spec, is ``engine/continuation.py``).

Nothing heavy is imported here, so any module (strategies, reports, benchmarks) can use them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    """The model's own greedy answer R to a plain prompt."""

    chat_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class AnswerTurn:
    """An assistant turn insertions go into: the conversation before it (to the assistant header), its
    tokens, and the user request it answers. Under ``insert_in: any`` ``answer`` numbers the
    conversation's answers from 0 (the history's, then R); None: R alone is attacked."""

    chat_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    request: str
    answer: int | None = None


@dataclass(frozen=True)
class InsertionCase:
    """Cut R at token ``position``, insert the first ``span_tokens`` tokens of span ``span_index``.

    Under ``insert_in: any`` the position runs over every assistant turn in order (each turn's tokens,
    then the cut after its last one), earlier exchanges' answers first and R last.

    With ``lead`` ≥ 0 (targeted search), the spec's ``span_leads[lead]`` goes in front of the span.
    """

    position: int
    span_index: int
    span_tokens: int
    lead: int = -1


@dataclass(frozen=True)
class SpanIds:
    text: str
    at_start: tuple[int, ...]  # inserted at k = 0, the start of the answer
    inside: tuple[int, ...]  # inserted after k > 0 response tokens: a leading space separates it
    made: str | None = None  # how the model made it (``span_sources``); None: written in the spec

    def ids_at(self, position: int, length: int) -> tuple[int, ...]:
        ids = self.at_start if position == 0 else self.inside
        return ids[: max(1, length)]

    @property
    def max_tokens(self) -> int:
        return min(len(self.at_start), len(self.inside))


@dataclass(frozen=True)
class HarmScore:
    """An insertion state's harm margin: the log-odds that the model does not recover (nats)."""

    margin: float
    harmful: float  # log P(harm): 1 - P(recovery), or the spec's harmful continuations' total
    recovery: float  # log P(recovery): the recovery openings' total probability
