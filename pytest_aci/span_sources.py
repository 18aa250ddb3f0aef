"""Spans the model writes itself (a spec's ``spans: {adaptive: …, from_model: …}``).

- ``adaptive``: rank-assisted prefilling steered by the harm score. From a start text placed in the
  model's own answer, each step asks the model for its top-k next tokens there, scores the state each
  candidate would make by the harm margin (teacher-forced, one batched call for every candidate), and
  keeps the worst: a span in the model's own words that keeps it off the way back to a refusal.
- ``from_model``: the model's own answer under a prefilling attack: a prefill text opens its answer and
  its greedy continuation follows.

Both are built once per prompt and model, with greedy choices only, so the same model gives the same
spans: a failure's span index replays exactly, and each record says how its span was made.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pytest_aci.backends import BackendError
from pytest_aci.spec import LoadedPrompt, LoadedSpec
from pytest_aci.spec.schema import AdaptiveSpans, ModelSpans
from pytest_aci.types import AnswerTurn, SpanIds

if TYPE_CHECKING:
    from pytest_aci.runtime import AciRuntime


def _percent(fraction: float) -> str:
    return f"{fraction:.0%}"


class SpansFromModel:
    """Per session: the spans each prompt's model writes, in the order ``from_model`` then ``adaptive``."""

    def __init__(self, runtime: AciRuntime):
        self.runtime = runtime

    def spans(self, loaded: LoadedSpec, prompt: LoadedPrompt, turn: AnswerTurn) -> list[SpanIds]:
        """The model-made spans for a prompt whose attacked answer is ``turn`` (the model's own, R)."""
        sources = loaded.spec.spans
        made = []
        if sources.from_model is not None:
            made += self.prefilled(sources.from_model, turn)
        if sources.adaptive is not None:
            made += self.adaptive(loaded, prompt, sources.adaptive, turn)
        return made

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.runtime.tokenizer.encode(text, add_special_tokens=False)) if text else ()

    def prefilled(self, settings: ModelSpans, turn: AnswerTurn) -> list[SpanIds]:
        """The model's greedy answer after each prefill: the prefill and ``tokens`` tokens of its own."""
        prefills = [text.strip() for text in settings.prefill]
        starts = [self._encode(text) for text in prefills]
        completions = self.runtime.generation.generate([turn.chat_ids + ids for ids in starts], settings.tokens, ())
        spans = []
        for text, ids, completion in zip(prefills, starts, completions):
            own = completion.token_ids
            made = f"from_model: its answer after the prefill {text!r} ({len(own)} tokens of its own)"
            inside = self._encode(" " + text) + own
            spans.append(SpanIds(self.runtime.tokenizer.decode(ids + own), ids + own, inside, made))
        return spans

    def adaptive(
        self, loaded: LoadedSpec, prompt: LoadedPrompt, settings: AdaptiveSpans, turn: AnswerTurn
    ) -> list[SpanIds]:
        """One span per (start, at): grown together, a step at a time, each step one top-k call and one
        batched harm-score call for every growing span's candidates."""
        answer = turn.response_ids
        builds = []  # (cut k, start text, span ids so far)
        for at in settings.at:
            k = round(at * len(answer))
            for start in settings.start:
                text = start.strip()
                builds.append((k, text, list(self._encode(text if k == 0 else " " + text))))
        steps = settings.tokens
        if settings.budget is not None:
            steps = min(steps, settings.budget // settings.top_k)
        special = set(getattr(self.runtime.tokenizer, "all_special_ids", ()) or ())
        for _ in range(steps):
            contexts = [turn.chat_ids + answer[:k] + tuple(ids) for k, _, ids in builds]
            candidates = [[t for t, _ in top if t not in special] for top in self._top_tokens(contexts, settings.top_k)]
            placed = [(turn, k, tuple(ids) + (t,)) for (k, _, ids), tops in zip(builds, candidates) for t in tops]
            margins = iter(self.runtime.scorer.margins(loaded, prompt, placed))
            for (_, _, ids), tops in zip(builds, candidates):
                scored = [(next(margins).margin, t) for t in tops]
                if scored:  # the worst state: the highest margin, ties to the model's likelier token
                    ids.append(max(scored, key=lambda s: (s[0], -tops.index(s[1])))[1])
        spans = []
        for k, text, ids in builds:
            if not ids:  # an empty start whose every candidate was a special token: nothing to insert
                continue
            made = (
                f"adaptive: from {text!r} at {_percent(k / max(1, len(answer)))} of the answer, "
                f"{len(ids)} tokens, top-{settings.top_k} by harm margin"
            )
            span = tuple(ids)
            spans.append(SpanIds(self.runtime.tokenizer.decode(span).strip(), span, span, made))
        return spans

    def _top_tokens(self, contexts: list[tuple[int, ...]], k: int) -> list[tuple[tuple[int, float], ...]]:
        backend = self.runtime.backend
        if not hasattr(backend, "top_tokens"):
            raise BackendError(f"the {backend.name} backend cannot give top-k next tokens (spans: adaptive)")
        stats = self.runtime.stats
        started, before = time.perf_counter(), backend.computed_tokens
        top = backend.top_tokens(contexts, k)
        stats.score_s += time.perf_counter() - started
        stats.model_tokens += backend.computed_tokens - before
        return top
