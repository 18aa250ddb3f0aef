"""Inference-time defences wrapped around the model's generation: does a defence hold at every depth?

``--aci-defence NAME`` (or a spec's ``defence:``) makes every answer of the model under test — its
plain answers and its continuations of insertion states — go through one of:

- ``header:N`` — assistant-header re-injection (after "any-depth alignment", 2025): every N generated
  tokens the model's own assistant header (``<|im_start|>assistant\\n`` for ChatML) is put after what
  it wrote so far and the model writes a short probe from there. A probe that opens with a refusal
  ends the answer with that refusal (the defence caught it); otherwise the probe is dropped and the
  answer goes on as written. ``header`` alone is ``header:16``.
- ``reset:TOKEN`` — a model trained to emit a reset token when it notices it went wrong (backtracking,
  2024): the answer the user sees is what follows the last TOKEN. TOKEN must be one token of the model.

A defence is a name the records carry (``defence``), so that ``aci report`` shows a defended and an
undefended run of one model side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pytest_aci.backends import BackendError, Completion, conversation_ids
from pytest_aci.judges.keywords import RefusalKeywordJudge

Generate = Callable[[Sequence[tuple[int, ...]], int, tuple[str, ...]], list[Completion]]
PROBE_TOKENS = 12


@dataclass(frozen=True)
class HeaderReinjection:
    name: str
    interval: int
    header_ids: tuple[int, ...]
    decode: Callable[[Sequence[int]], str]
    refuses: Callable[[str], bool]

    def generate(
        self, generate: Generate, prompts: Sequence[tuple[int, ...]], max_new_tokens: int, stop: tuple[str, ...]
    ) -> list[Completion]:
        """Generate in chunks of ``interval`` tokens (each chunk one batched call over every open answer);
        after each chunk, one batched probe from the re-injected header."""
        written: list[tuple[int, ...]] = [() for _ in prompts]
        endings: list[str | None] = [None] * len(prompts)  # eos, stop or defence once an answer ended
        caught: dict[int, tuple[int, ...]] = {}
        while True:
            open_ = [i for i, end in enumerate(endings) if end is None and len(written[i]) < max_new_tokens]
            if not open_:
                break
            step = min(self.interval, max_new_tokens - min(len(written[i]) for i in open_))
            chunks = generate([prompts[i] + written[i] for i in open_], step, stop)
            for i, chunk in zip(open_, chunks):
                written[i] += chunk.token_ids
                if chunk.finish_reason != "length":
                    endings[i] = chunk.finish_reason
            probed = [i for i in open_ if endings[i] is None and len(written[i]) < max_new_tokens]
            probes = generate([prompts[i] + written[i] + self.header_ids for i in probed], PROBE_TOKENS, ())
            for i, probe in zip(probed, probes):
                if self.refuses(probe.text):
                    caught[i], endings[i] = probe.token_ids, "defence"
        completions = []
        for i, ids in enumerate(written):
            text = self.decode(ids)
            if i in caught:  # what the user sees: the answer so far, then the refusal the probe opened with
                text = f"{text}\n{self.decode(caught[i]).strip()}"
            completions.append(Completion(ids + caught.get(i, ()), text, endings[i] or "length"))
        return completions


@dataclass(frozen=True)
class ResetToken:
    name: str
    token: str

    def generate(
        self, generate: Generate, prompts: Sequence[tuple[int, ...]], max_new_tokens: int, stop: tuple[str, ...]
    ) -> list[Completion]:
        """The model's answers, each shown from after its last reset token."""
        completions = generate(prompts, max_new_tokens, stop)
        return [
            replace(c, text=c.text.rsplit(self.token, 1)[1].lstrip()) if self.token in c.text else c
            for c in completions
        ]


Defence = HeaderReinjection | ResetToken


def make_defence(name: str, tokenizer: Any, model: str) -> Defence:
    """The defence ``name`` for the model behind ``tokenizer``; a ``BackendError`` naming the model when
    the model cannot have it (no chat template header, no such reset token)."""
    kind, _, argument = name.partition(":")
    if kind == "reset":
        ids = tokenizer.encode(argument, add_special_tokens=False)
        if len(ids) != 1:
            raise BackendError(
                f"--aci-defence {name}: --aci-model {model} has no reset token {argument!r} "
                f"(it is {len(ids)} tokens of this model, not one)"
            )
        return ResetToken(name, argument)

    keywords = RefusalKeywordJudge()
    return HeaderReinjection(
        name,
        int(argument),
        assistant_header(tokenizer, model),
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        lambda text: keywords.first_marker(text) is not None,
    )


def assistant_header(tokenizer: Any, model: str) -> tuple[int, ...]:
    """The tokens the chat template opens an assistant turn with: the generation prompt's own tail."""

    messages = [{"role": "user", "content": "Hi"}]
    opened = conversation_ids(tokenizer, messages)
    plain = tuple(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    if len(opened) <= len(plain) or opened[: len(plain)] != plain:
        raise BackendError(
            f"--aci-defence header: --aci-model {model}: its chat template has no assistant header to re-inject"
        )
    return opened[len(plain) :]
