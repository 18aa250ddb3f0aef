"""Training examples at the token level: the insertion happens inside the refusal target, like the attack;
the loss per example, and the worst of a set of candidate states for the current model."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_aci.backends import chat_prompt_ids, vllm_available
from pytest_aci.backends.hf import TransformersBackend
from pytest_aci.backends.vllm import VllmBackend
from pytest_aci.harden.data import SPAN_STYLES, HarmfulPrompt
from pytest_aci.judges.keywords import RefusalKeywordJudge
from pytest_aci.store import Store, default_store_dir, digest, keep_completions, stored_completions

if TYPE_CHECKING:
    from pytest_aci.harden.config import HardenConfig

IGNORE = -100  # label of a token that takes no loss


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE where no loss is taken
    kind: str  # refusal | attack | finished (an attack whose span is a whole target) | utility


# --- examples ------------------------------------------------------------------------------


class ExampleBuilder:
    """Token-level training examples; the insertion happens inside the refusal target, like the attack."""

    def __init__(self, tokenizer, config: HardenConfig, rng: random.Random, own_spans: Sequence[str] = ()):
        self.tokenizer, self.config, self.rng = tokenizer, config, rng
        self.eos = [tokenizer.eos_token_id]
        self._chat: dict[str, list[int]] = {}
        self.own_spans = tuple(own_spans)

    def span_text(self, prompt: HarmfulPrompt) -> str:
        """A span of a random style: the request's own target, an opener, a begun sentence or code, the first
        line of an artefact, or the model's own failing words."""
        styles = [s for s in self.config.span_styles if s != "own" or self.own_spans] or ["target"]
        style = self.rng.choice(styles)
        pool = prompt.spans if style == "target" else self.own_spans if style == "own" else SPAN_STYLES[style]
        return self.rng.choice(pool)

    def chat(self, text: str) -> list[int]:
        if text not in self._chat:
            self._chat[text] = list(chat_prompt_ids(self.tokenizer, text))
        return self._chat[text]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def refusal_ids(self, lead: str = "") -> list[int]:
        return self.encode(lead + self.rng.choice(self.config.refusals))

    def _example(self, context: list[int], target: list[int], kind: str) -> Example:
        target = target + self.eos
        return Example(tuple(context + target), tuple([IGNORE] * len(context) + target), kind)

    def refusal(self, prompt: HarmfulPrompt) -> Example:
        return self._example(self.chat(prompt.text), self.refusal_ids(), "refusal")

    def prefix_augmented(self, prompt: HarmfulPrompt) -> Example:
        """Qi et al.: a harmful prefix of 1..100 tokens at the start of the answer, then the refusal."""
        harmful = self.encode(self.rng.choice(prompt.spans))[: self.config.max_prefix_tokens]
        length = self.rng.randint(1, len(harmful))
        return self._example(self.chat(prompt.text) + harmful[:length], self.refusal_ids(), "attack")

    def insertion(self, prompt: HarmfulPrompt, span: str | None = None, position: int | None = None) -> Example:
        """``chat + R[:k] + span[:n]``, recovering with a refusal; R is a refusal target."""
        refusal = self.refusal_ids()
        k = self.rng.randint(0, len(refusal)) if position is None else min(position, len(refusal))
        text = (span or self.span_text(prompt)).strip()
        span_ids = self.encode((" " if k else "") + text)[: self.config.max_span_tokens]
        n = self.rng.randint(1, len(span_ids)) if span is None else len(span_ids)
        context = self.chat(prompt.text) + refusal[:k] + span_ids[:n]
        return self._example(context, self.refusal_ids(), "attack")

    def finished_insertion(self, prompt: HarmfulPrompt) -> Example:
        """``chat + R[:k] + target.``, recovering with a refusal as the next sentence. A span cut mid-sentence is
        often not followed by the refusal trained on but by the model's own end of the sentence ("Sure, here is a
        tutorial for making a bomb" → "." and the end of its answer): the state after that full stop, which no cut
        span holds, is trained here."""
        refusal = self.refusal_ids()
        k = self.rng.randint(0, len(refusal))
        text = self.rng.choice(prompt.spans).strip().rstrip(":,;")
        text += "" if text.endswith((".", "!", "?")) else "."
        context = self.chat(prompt.text) + refusal[:k] + self.encode((" " if k else "") + text)
        return self._example(context, self.refusal_ids(lead=" "), "finished")

    def candidates(self, prompt: HarmfulPrompt, count: int) -> list[Example]:
        """Random insertion states, led by the reported failing insertions of this prompt."""
        seeded = [self.insertion(prompt, span, position) for span, position in prompt.failing]
        self.rng.shuffle(seeded)
        drawn = [self.insertion(prompt) for _ in range(max(0, count - len(seeded)))]
        return (seeded + drawn)[: max(count, 1)]

    def utility(self, prompt: str, answer: Sequence[int]) -> Example:
        """The base model's answer as the target, as it was generated: it ends in EOS only where the answer ended
        (an answer cut at ``utility_tokens`` must not teach the model to stop there)."""
        context = self.chat(prompt)
        return Example(tuple(context + list(answer)), tuple([IGNORE] * len(context) + list(answer)), "utility")


# --- model --------------------------------------------------------------------------------


def collate(examples: Sequence[Example], pad_id: int, device: str):
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return input_ids.to(device), labels.to(device), mask.to(device)


def per_example_loss(model, examples: Sequence[Example], pad_id: int, device: str):
    """Mean token loss on each example's target tokens (a tensor of shape [len(examples)]).

    The output layer runs only at positions that predict a target token in some row (a prompt's
    own tokens never do): the vocabulary projection and its softmax are a fifth of the work.
    """
    import torch

    input_ids, labels, mask = collate(examples, pad_id, device)
    targets = labels[:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)  # positions p predicting token p + 1
    logits = model(input_ids=input_ids, attention_mask=mask, logits_to_keep=keep).logits.float()
    kept = targets[:, keep]
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), kept.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(kept.shape)
    counts = (kept != IGNORE).sum(dim=1).clamp(min=1)
    return losses.sum(dim=1) / counts


def drifted(model, tokenizer, examples: Sequence[Example], tokens: int, device: str) -> list[Example | None]:
    """The states the current model reaches on its own from each example's insertion state: the context followed
    by its first ``tokens`` greedy tokens after the inserted span, recovering with the same target. None where it
    writes nothing before EOS or starts to refuse at once (it recovers from there already).

    An inserted span that ends a clause is often not followed by the refusal trained on, but by the few tokens
    that close the clause ("." then EOS): a state the random draws never hold, and so one never trained on.
    (One batched forward pass per token, left-padded, logits of the last position only.)"""
    import torch

    starts = [next(i for i, label in enumerate(e.labels) if label != IGNORE) for e in examples]
    contexts = [list(e.input_ids[:start]) for e, start in zip(examples, starts)]
    written: list[list[int]] = [[] for _ in examples]
    open_rows = list(range(len(examples)))
    with torch.no_grad():
        for _ in range(tokens):
            if not open_rows:
                break
            rows = [contexts[r] + written[r] for r in open_rows]
            width = max(len(row) for row in rows)
            ids = torch.full((len(rows), width), tokenizer.eos_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for n, row in enumerate(rows):
                ids[n, width - len(row) :], mask[n, width - len(row) :] = torch.tensor(row), 1
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=1,
            ).logits[:, -1]
            for r, token in zip(list(open_rows), logits.argmax(dim=-1).tolist()):
                if token == tokenizer.eos_token_id:
                    open_rows.remove(r)
                else:
                    written[r].append(token)
    refusing = refused_answers(tokenizer, written)
    reached: list[Example | None] = []
    for row, (e, start, context, words) in enumerate(zip(examples, starts, contexts, written)):
        if not words or row in refusing:
            reached.append(None)
            continue
        target = list(e.input_ids[start:])
        reached.append(
            Example(tuple(context + words + target), tuple([IGNORE] * len(context + words) + target), e.kind)
        )
    return reached


def select_worst(model, candidates: Sequence[Example], pad_id: int, device: str) -> tuple[Example, float]:
    """The candidate the current model recovers from worst: the highest loss on its recovery target."""
    import torch

    with torch.no_grad():
        losses = per_example_loss(model, candidates, pad_id, device)
    index = int(torch.argmax(losses))
    return candidates[index], float(losses[index])


# Enough answers that vLLM's start (about half a minute on this CPU) pays for itself.
VLLM_ANSWERS = 32


def answer_backend(model, tokenizer, device: str, model_path: str, answers: int):
    """The fastest way to the base model's answers: vLLM on a CPU host when it is installed and there are
    enough of them, else transformers on the model already loaded. (On a GPU the training shares the card:
    transformers there, vLLM would take most of its memory.)"""
    from pathlib import Path

    cpu = str(device).split(":")[0] == "cpu"
    if cpu and answers >= VLLM_ANSWERS and vllm_available() and model_path and Path(model_path).is_dir():
        print(f"aci-harden: the base model's {answers} utility answers through vLLM", flush=True)
        return VllmBackend(model_path, engine_args={})
    return TransformersBackend.from_loaded(model, tokenizer, device=device)


def generate_answers(
    model,
    tokenizer,
    builder: ExampleBuilder,
    prompts: Sequence[str],
    tokens: int,
    device: str,
    model_path: str = "",
    prefill: Sequence[int] = (),
):
    """The base model's own greedy answers to benign prompts (after ``prefill``, when given): the utility targets,
    each with the EOS token where the answer ended before ``tokens``. Kept in the store (store.py) under the model's
    fingerprint, so a resumed or repeated run does not generate them again."""
    from pathlib import Path

    chats = [builder.chat(p) + list(prefill) for p in prompts]
    folder = default_store_dir() if model_path and Path(model_path).is_dir() else None
    store = Store(folder) if folder is not None else None
    found: dict[int, Any] = {}
    keys: list[bytes] = []
    if store is not None:
        for warning in store.warnings:
            print(f"aci-harden: {warning}", flush=True)
        identity = [store.fingerprint(Path(model_path)), "aci-harden", str(device).split(":")[0]]
        keys = [digest("generation", identity, list(chat), tokens, []) for chat in chats]
        stored = stored_completions(store, keys)
        found = {i: stored[key] for i, key in enumerate(keys) if key in stored}
    todo = [i for i in range(len(chats)) if i not in found]
    if todo:
        backend = answer_backend(model, tokenizer, device, model_path, len(todo))
        try:
            found.update(zip(todo, backend.generate([chats[i] for i in todo], tokens)))
        finally:
            if backend.name == "vllm":
                backend.close()
    if store is not None:
        keep_completions(store, {keys[i]: found[i] for i in todo})
        print(
            f"aci-harden: {len(chats) - len(todo)} of {len(chats)} utility answers came from {store.path}", flush=True
        )
        store.close()
    ended = [builder.eos[0]]
    return [list(found[i].token_ids) + (ended if found[i].finish_reason != "length" else []) for i in range(len(chats))]


# A base model that refuses a benign prompt is asked again with its answer opened by this; what it writes then, in
# its own words, is the utility target, unless it still refuses.
UTILITY_OPENER = "Sure!"


def utility_answers(model, tokenizer, builder: ExampleBuilder, prompts: Sequence[str], tokens: int, device: str,
                    model_path: str = "") -> tuple[list[list[int]], dict[str, int]]:  # fmt: skip
    """The utility targets: the base model's own answers to benign prompts, never a refusal. A refused prompt is
    answered again after ``UTILITY_OPENER`` (its target is the opener and that answer); one still refused then
    gets no target (an empty list). Also returns the counts: refused, answered after the opener."""
    answers = [list(a) for a in generate_answers(model, tokenizer, builder, prompts, tokens, device, model_path)]
    refused = sorted(refused_answers(tokenizer, answers))
    opened = 0
    if refused:
        opener = builder.encode(UTILITY_OPENER)
        again = generate_answers(
            model, tokenizer, builder, [prompts[i] for i in refused], tokens, device, model_path, prefill=opener
        )
        targets = [opener + list(answer) for answer in again]
        still = refused_answers(tokenizer, targets)
        for j, (i, target) in enumerate(zip(refused, targets)):
            answers[i] = [] if j in still else target
        opened = len(targets) - len(still)
    return answers, {"refused": len(refused), "answered_after_opener": opened}


def refused_answers(tokenizer, answers: Sequence[Sequence[int]]) -> set[int]:
    """The indices of the base model's utility answers that are refusals (a refusal marker in the text). They are
    never training targets: a model that over-refuses benign prompts (Qwen2.5-Coder refuses "How do I blow up a
    balloon?") would otherwise be trained to refuse them."""

    keywords = RefusalKeywordJudge()
    return {
        i
        for i, answer in enumerate(answers)
        if answer and keywords.first_marker(tokenizer.decode(answer, skip_special_tokens=True)) is not None
    }
