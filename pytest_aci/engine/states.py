"""Insertion states as token ids: the model's own answer R, the spans, and ``chat(prompt) + R[:k] + span[:n]``.

``chat(prompt)`` is the prompt in its conversation: the spec's system prompt and earlier exchanges, then
the prompt as the last user turn and the assistant header, by the model's own chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytest_aci.backends import ChatTemplateError, conversation_ids
from pytest_aci.engine.span_sources import Margins, SpansFromModel
from pytest_aci.engine.subject import Subject
from pytest_aci.spec import LoadedPrompt, LoadedSpec
from pytest_aci.types import AnswerTurn, InsertionCase, Reference, SpanIds


class InsertionStates:
    """Per session: each prompt's answer R (generated once, with the spec's other wanted prompts in one call),
    its spans' token ids, and the token ids of any state."""

    def __init__(self, subject: Subject, margins: Margins):
        """``margins``: the harm margins of placed spans (``HarmScorer.margins``), for spans grown by them."""
        self.subject = subject
        self.wanted_prompts: dict[Path, set[str]] = {}  # spec path -> the prompts collected items will ask for
        self._references: dict[tuple[Path, str], Reference] = {}
        self._span_ids: dict[tuple[Path, str], list[SpanIds]] = {}
        self._lead_ids: dict[Path, list[SpanIds]] = {}
        self._turns: dict[tuple[Path, str], list[AnswerTurn]] = {}
        self._from_model = SpansFromModel(subject, self.span_of_text, margins)

    def reference(self, loaded: LoadedSpec, prompt: LoadedPrompt) -> Reference:
        key = (loaded.path, prompt.id)
        if key not in self._references:
            wanted = self.wanted_prompts.get(loaded.path, set()) | {prompt.id}
            missing = [p for p in loaded.prompts if p.id in wanted and (loaded.path, p.id) not in self._references]
            chats = [self.conversation_ids(p) for p in missing]
            defence = self.subject.defence_for(loaded)
            completions = self.subject.generation.generate(chats, loaded.spec.response.max_new_tokens, (), defence)
            for p, chat, completion in zip(missing, chats, completions):
                self._references[(loaded.path, p.id)] = Reference(chat, completion.token_ids, completion.text)
        return self._references[key]

    def conversation_ids(self, prompt: LoadedPrompt) -> tuple[int, ...]:
        """``chat(prompt)``: the prompt in its conversation, and the assistant header."""
        try:
            return conversation_ids(self.subject.tokenizer, prompt.messages())
        except ChatTemplateError as exc:
            parts = ["a system prompt"] if prompt.system else []
            parts += [f"{len(prompt.history)} earlier exchange(s)"] if prompt.history else []
            what = " and ".join(parts) or "a user turn"
            model = self.subject.model
            raise ChatTemplateError(f"--aci-model {model}: its chat template cannot render {what}: {exc}") from None

    def span_ids(self, loaded: LoadedSpec, prompt: LoadedPrompt) -> list[SpanIds]:
        key = (loaded.path, prompt.id)
        if key not in self._span_ids:
            cap = loaded.spec.max_span_tokens
            spans = [self.span_of_text(text, cap) for text in loaded.spans_for(prompt)]
            if loaded.spec.spans.made_by_model:  # after the written ones: their indices stay as they were
                spans += self._from_model.spans(loaded, prompt, self.turns(loaded, prompt)[-1])
            self._span_ids[key] = spans
        return self._span_ids[key]

    def span_made(self, loaded: LoadedSpec, prompt: LoadedPrompt, case: InsertionCase) -> str | None:
        """How the model made a case's span; None for a span written in the spec."""
        return self.span_ids(loaded, prompt)[case.span_index].made

    def span_of_text(self, text: str, cap: int | None = None) -> SpanIds:
        """A written text as a span: its ids at the answer's start and, after a leading space, inside it."""
        text, encode = text.strip(), self.subject.tokenizer.encode
        at_start = tuple(encode(text, add_special_tokens=False))
        inside = tuple(encode(" " + text, add_special_tokens=False))
        return SpanIds(text, at_start[:cap], inside[:cap])

    def lead_ids(self, loaded: LoadedSpec) -> list[SpanIds]:
        if loaded.path not in self._lead_ids:
            self._lead_ids[loaded.path] = [self.span_of_text(lead) for lead in loaded.spec.span_leads]
        return self._lead_ids[loaded.path]

    def turns(self, loaded: LoadedSpec, prompt: LoadedPrompt) -> list[AnswerTurn]:
        """The assistant turns insertions go into: the answer to the prompt, and under ``insert_in: any``
        the history's answers before it."""
        key = (loaded.path, prompt.id)
        if key not in self._turns:
            ref = self.reference(loaded, prompt)
            if loaded.spec.insert_in == "any":  # every answer of the conversation, numbered in order
                last = AnswerTurn(ref.chat_ids, ref.response_ids, prompt.text, len(prompt.history))
                self._turns[key] = [*self._history_turns(prompt), last]
            else:
                self._turns[key] = [AnswerTurn(ref.chat_ids, ref.response_ids, prompt.text)]
        return self._turns[key]

    def _history_turns(self, prompt: LoadedPrompt) -> list[AnswerTurn]:
        """The history's answers as turns; the template must render each as the assistant header (what
        ``chat`` ends with) followed by the answer, else a state there would not be what the model saw."""
        tokenizer, turns = self.subject.tokenizer, []
        messages, offset = prompt.messages(), 1 if prompt.system else 0
        for index, exchange in enumerate(prompt.history):
            before = prompt.model_copy(update={"text": exchange.user, "history": prompt.history[:index]})
            chat_ids = self.conversation_ids(before)
            opened = tokenizer.apply_chat_template(before.messages(), add_generation_prompt=True, tokenize=False)
            whole = tokenizer.apply_chat_template(messages[: offset + 2 * index + 2], tokenize=False)
            if not whole.startswith(opened + exchange.assistant):
                raise ChatTemplateError(
                    f"--aci-model {self.subject.model}: its chat template cannot continue an earlier "
                    f"assistant turn (insert_in: any): the answer of exchange {index + 1} is not rendered right "
                    "after the assistant header"
                )
            response_ids = tuple(tokenizer.encode(exchange.assistant, add_special_tokens=False))
            turns.append(AnswerTurn(chat_ids, response_ids, exchange.user, index))
        return turns

    def answer_len(self, loaded: LoadedSpec, prompt: LoadedPrompt) -> int:
        """The last insertion position: |R|, or under ``insert_in: any`` over every assistant turn."""
        return sum(len(turn.response_ids) + 1 for turn in self.turns(loaded, prompt)) - 1

    def locate(self, loaded: LoadedSpec, prompt: LoadedPrompt, position: int) -> tuple[AnswerTurn, int]:
        """The assistant turn a position falls in, and the cut k inside it."""
        turns = self.turns(loaded, prompt)
        for turn in turns[:-1]:
            if position <= len(turn.response_ids):
                return turn, position
            position -= len(turn.response_ids) + 1
        return turns[-1], min(position, len(turns[-1].response_ids))

    def case_ids(self, loaded: LoadedSpec, prompt: LoadedPrompt, case: InsertionCase) -> tuple[int, ...]:
        """The inserted token ids of a case: ``span[:n]``, or ``lead + " " + span[:n]``."""
        span = self.span_ids(loaded, prompt)[case.span_index]
        _, k = self.locate(loaded, prompt, case.position)
        if case.lead < 0:
            return span.ids_at(k, case.span_tokens)
        lead = self.lead_ids(loaded)[case.lead]
        return (lead.at_start if k == 0 else lead.inside) + span.inside[: max(1, case.span_tokens)]

    def insertions(
        self, loaded: LoadedSpec, prompt: LoadedPrompt, cases: Sequence[InsertionCase]
    ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(inserted span ids, ``chat(prompt) + R[:k] + span[:n]``) for each case."""
        pairs = []
        for case in cases:
            ids = self.case_ids(loaded, prompt, case)
            turn, k = self.locate(loaded, prompt, case.position)
            pairs.append((ids, turn.chat_ids + turn.response_ids[:k] + ids))
        return pairs

    def insertion_prefixes(
        self, loaded: LoadedSpec, prompt: LoadedPrompt, cases: Sequence[InsertionCase]
    ) -> list[tuple[int, ...]]:
        """``chat(prompt) + R[:k] + span[:n]`` for each case, as token ids."""
        return [prefix for _, prefix in self.insertions(loaded, prompt, cases)]
