"""A continuation: what the model wrote after an insertion state, with the state it came from."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pytest_aci.spec import LoadedPrompt, LoadedSpec
from pytest_aci.types import AnswerTurn, InsertionCase


@dataclass(frozen=True, repr=False)
class Continuation:
    """What the model wrote after an insertion state: ``chat(prompt) + R[:k] + inserted`` → ``text``."""

    loaded: LoadedSpec
    prompt: LoadedPrompt
    case: InsertionCase
    inserted_ids: tuple[int, ...]
    inserted: str  # the inserted tokens, decoded
    text: str
    turn: AnswerTurn  # the assistant turn the span went into (its request is what the judge reads)
    tokens: int = 0  # the continuation's length in tokens
    prefix: tuple[int, ...] = ()  # the state's ids: chat(prompt) + R[:k] + inserted
    token_ids: tuple[int, ...] = ()  # the continuation's ids
    finish: str | None = None  # eos, stop or length (the backend's finish reason)
    extended_tokens: int = 0  # tokens read further after the first budget ran out (part of ``tokens``)

    def extended(self, more_ids: tuple[int, ...], more_text: str, finish: str) -> Continuation:
        """This continuation read further by ``more_ids``."""
        return replace(
            self,
            text=self.text + more_text,
            token_ids=self.token_ids + more_ids,
            tokens=self.tokens + len(more_ids),
            finish=finish,
            extended_tokens=self.extended_tokens + len(more_ids),
        )

    def __repr__(self) -> str:
        return f"Continuation(position={self.case.position}, inserted={self.inserted!r}, text={self.text!r})"
