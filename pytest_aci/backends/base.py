"""What every generation backend shares: its protocol (token ids in, token ids and text out, greedy and
deterministic), its values and errors, and the chat-template helpers. Backends import this module only."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str  # "eos", "stop" (a stop string was generated) or "length"


@dataclass(frozen=True)
class ScoreRequest:
    """Teacher-force ``target`` after ``base[:cut] + suffix``; ``base`` is shared by many requests.

    Insertion states of one prompt share ``base = chat(prompt) + R`` and differ in the cut k and the
    span (``suffix``), so a backend can compute ``base`` once and reuse its attention cache.
    """

    base: tuple[int, ...]
    cut: int
    suffix: tuple[int, ...]
    target: tuple[int, ...]

    @property
    def context(self) -> tuple[int, ...]:
        return self.base[: self.cut] + self.suffix


class Backend(Protocol):
    name: str
    tokenizer: Any
    computed_tokens: int  # tokens the model has run (prefill not served from a cache, plus generated)

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()
    ) -> list[Completion]:
        """Greedy continuations of token-id prompts, in order; ``stop`` strings end a sequence early."""
        ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[tuple[float, ...]]:
        """The log-probability of each target token, teacher-forced, for every request in order."""
        ...

    def top_tokens(self, contexts: Sequence[Sequence[int]], k: int) -> list[tuple[tuple[int, float], ...]]:
        """The model's ``k`` most likely next tokens after each context, as (token id, log-prob), best first."""
        ...

    def close(self) -> None: ...


def best_first(candidates: Sequence[tuple[int, float]], k: int) -> tuple[tuple[int, float], ...]:
    """The k most likely (token id, log-prob) pairs; ties go to the lower id, so every backend orders alike."""
    return tuple(sorted(candidates, key=lambda c: (-c[1], c[0]))[:k])


class BackendError(RuntimeError):
    """A backend cannot be created or used; the message says what to do."""


class LazyBackend:
    """A backend started on first use, its start timed; a start that failed fails every later use at once,
    with the same reason (a dead backend does not make each item wait for it again)."""

    def __init__(self, start: Callable[[], Backend], instance: Backend | None = None):
        self._start, self._instance, self._error = start, instance, None
        self.startup_s = 0.0

    def get(self) -> Backend:
        if self._instance is None:
            if self._error is not None:
                raise self._error
            started = time.perf_counter()
            try:
                self._instance = self._start()
            except Exception as exc:
                self._error = exc
                raise
            self.startup_s = time.perf_counter() - started
        return self._instance

    @property
    def started(self) -> bool:
        return self._instance is not None

    def close(self) -> None:
        instance, self._instance = self._instance, None
        if instance is not None:
            instance.close()


DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"  # where the served backend finds its API key unless told otherwise


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class ChatTemplateError(BackendError):
    """The model's chat template cannot render a conversation a spec asks for."""


def conversation_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[int, ...]:
    """A conversation ending in a user turn, and the assistant header, tokenized by the model's chat
    template; a template that cannot render it (no system role, no earlier turns) is a ``ChatTemplateError``."""
    try:
        ids = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
    except Exception as exc:  # jinja2's TemplateError (raise_exception in the template), or a template bug
        if tokenizer.chat_template is None and getattr(tokenizer, "default_chat_template", None) is None:
            raise ChatTemplateError(f"the model has no chat template ({exc})") from None
        raise ChatTemplateError(f"{type(exc).__name__}: {exc}") from None
    return tuple(int(i) for i in ids)


def chat_prompt_ids(tokenizer: Any, text: str) -> tuple[int, ...]:
    """A one-turn user request and the assistant header, tokenized by the model's chat template."""
    return conversation_ids(tokenizer, [{"role": "user", "content": text}])


def trim_completion(token_ids: Sequence[int], eos_ids: set[int]) -> tuple[tuple[int, ...], bool]:
    """Cut generated ids at the first end-of-sequence id; say whether one was found."""
    for index, token in enumerate(token_ids):
        if token in eos_ids:
            return tuple(token_ids[:index]), True
    return tuple(token_ids), False


def eos_token_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(source)
    return ids
