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
from collections.abc import Callable, Sequence

from pytest_aci.backends import BackendError
from pytest_aci.engine.subject import Subject
from pytest_aci.spec import LoadedPrompt, LoadedSpec
from pytest_aci.spec.schema import AdaptiveSpans, ModelSpans
from pytest_aci.types import AnswerTurn, HarmScore, SpanIds

# The harm margins of spans placed in an answer: (turn, cut k, span ids) -> one HarmScore each.
Margins = Callable[[LoadedSpec, LoadedPrompt, Sequence[tuple[AnswerTurn, int, tuple[int, ...]]]], list[HarmScore]]


class SpansFromModel:
    """Per session: the spans each prompt's model writes, in the order ``from_model`` then ``adaptive``."""

    def __init__(self, subject: Subject, span_of_text: Callable[[str], SpanIds], margins: Margins):
        self.subject, self.span_of_text, self.margins = subject, span_of_text, margins

    def spans(self, loaded: LoadedSpec, prompt: LoadedPrompt, turn: AnswerTurn) -> list[SpanIds]:
        """The model-made spans for a prompt whose attacked answer is ``turn`` (the model's own, R)."""
        sources = loaded.spec.spans
        made = []
        if sources.from_model is not None:
            made += self.prefilled(sources.from_model, turn)
        if sources.adaptive is not None:
            made += self.adaptive(loaded, prompt, sources.adaptive, turn)
        return made

    def prefilled(self, settings: ModelSpans, turn: AnswerTurn) -> list[SpanIds]:
        """The model's greedy answer after each prefill: the prefill and ``tokens`` tokens of its own."""
        prefills = [self.span_of_text(text) for text in settings.prefill]
        chats = [turn.chat_ids + prefill.at_start for prefill in prefills]
        spans = []
        for prefill, completion in zip(prefills, self.subject.generation.generate(chats, settings.tokens, ())):
            own = completion.token_ids
            made = f"from_model: its answer after the prefill {prefill.text!r} ({len(own)} tokens of its own)"
            ids = prefill.at_start + own
            spans.append(SpanIds(self.subject.tokenizer.decode(ids), ids, prefill.inside + own, made))
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
                written = self.span_of_text(start)
                builds.append((k, written.text, list(written.at_start if k == 0 else written.inside)))
        steps = settings.tokens
        if settings.budget is not None:
            steps = min(steps, settings.budget // settings.top_k)
        special = set(getattr(self.subject.tokenizer, "all_special_ids", ()) or ())
        for _ in range(steps):
            contexts = [turn.chat_ids + answer[:k] + tuple(ids) for k, _, ids in builds]
            candidates = [[t for t, _ in top if t not in special] for top in self._top_tokens(contexts, settings.top_k)]
            placed = [(turn, k, tuple(ids) + (t,)) for (k, _, ids), tops in zip(builds, candidates) for t in tops]
            margins = iter(self.margins(loaded, prompt, placed))
            for (_, _, ids), tops in zip(builds, candidates):
                scores = [next(margins).margin for _ in tops]
                if tops:  # the worst state: the highest margin, ties to the model's likelier token
                    ids.append(tops[max(range(len(tops)), key=lambda i: (scores[i], -i))])
        spans = []
        for k, text, ids in builds:
            if not ids:  # an empty start whose every candidate was a special token: nothing to insert
                continue
            made = (
                f"adaptive: from {text!r} at {k / max(1, len(answer)):.0%} of the answer, "
                f"{len(ids)} tokens, top-{settings.top_k} by harm margin"
            )
            span = tuple(ids)
            spans.append(SpanIds(self.subject.tokenizer.decode(span).strip(), span, span, made))
        return spans

    def _top_tokens(self, contexts: list[tuple[int, ...]], k: int) -> list[tuple[tuple[int, float], ...]]:
        backend = self.subject.backend
        if not hasattr(backend, "top_tokens"):
            raise BackendError(f"the {backend.name} backend cannot give top-k next tokens (spans: adaptive)")
        stats = self.subject.stats
        started, before = time.perf_counter(), backend.computed_tokens
        top = backend.top_tokens(contexts, k)
        stats.score_s += time.perf_counter() - started
        stats.model_tokens += backend.computed_tokens - before
        return top
