"""The transformers backend: batched, left-padded greedy generation under ``torch.inference_mode``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pytest_aci.backends.base import BackendError, Completion, ScoreRequest, best_first, eos_token_ids, trim_completion
from pytest_aci.backends.prefix_cache import next_logprobs
from pytest_aci.backends.tree_attention import score_packed
from pytest_aci.lru import LruCache

if TYPE_CHECKING:
    from pytest_aci.backends.registry import BackendSettings


class TransformersBackend:
    name = "hf"

    def __init__(
        self, model_path: str, *, device: str | None = None, dtype: str = "float32", batch_size: str | int = 16
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load model {model_path!r} with transformers: {exc}") from exc
        self._attach(model, tokenizer, device or ("cuda" if torch.cuda.is_available() else "cpu"), batch_size)

    @classmethod
    def from_settings(cls, model_path: str, settings: BackendSettings) -> TransformersBackend:
        return cls(model_path)  # --aci-vllm-arg values are for the vLLM engine only

    @classmethod
    def from_loaded(cls, model, tokenizer, *, device: str, batch_size: int = 16) -> TransformersBackend:
        """Generate with a model already in memory (``aci-harden``'s base model, before training)."""
        backend = cls.__new__(cls)
        backend._attach(model, tokenizer, device, batch_size)
        return backend

    def _attach(self, model, tokenizer, device: str, batch_size: str | int) -> None:
        self.device, self.batch_size, self.tokenizer = device, int(batch_size), tokenizer
        self.model = model.to(device).eval()
        self.eos_ids = eos_token_ids(tokenizer, model.generation_config)
        self._stop_cache: dict[tuple[str, ...], object] = {}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.computed_tokens = 0
        self._bases: LruCache[tuple[int, ...], tuple] = LruCache(8)  # shared base -> (attention cache, log-probs)
        self._contexts: LruCache[tuple[int, ...], object] = LruCache(8)  # top_tokens' contexts -> attention cache

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()
    ) -> list[Completion]:
        # Similar lengths share a batch so that little compute is spent on padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for index, completion in zip(
                chunk, self._generate_batch([prompts[i] for i in chunk], max_new_tokens, stop)
            ):
                results[index] = completion
        return [r for r in results if r is not None]

    def _generate_batch(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str]
    ) -> list[Completion]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        extra = {"stopping_criteria": self._stop_criteria(tuple(stop))} if stop else {}
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
                **extra,
            )
        self.computed_tokens += sum(len(p) for p in prompts)
        completions = []
        for row in output[:, width:].tolist():
            ids, ended = trim_completion(row, self.eos_ids)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if stop and any(s in text for s in stop):
                reason = "stop"
            else:
                reason = "eos" if ended else "length"
            completions.append(Completion(token_ids=ids, text=text, finish_reason=reason))
            self.computed_tokens += len(ids)
        return completions

    def score(self, requests: Sequence[ScoreRequest], rows_per_batch: int = 32) -> list[tuple[float, ...]]:
        """Teacher-forced target log-probs; each distinct ``base`` runs once, its cache serves every cut, and
        the requests of one (base, cut) share a row under a tree attention mask (``tree_attention``)."""
        import torch

        results: list[tuple[float, ...]] = [()] * len(requests)
        groups: dict[tuple[int, ...], dict[int, list[int]]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.base, {}).setdefault(request.cut, []).append(index)
        with torch.inference_mode():
            for base, packed in groups.items():
                base_cache, base_logprobs = self._base(base)
                rows = [(cut, [(i, requests[i]) for i in indices]) for cut, indices in packed.items()]
                for start in range(0, len(rows), rows_per_batch):
                    chunk = rows[start : start + rows_per_batch]
                    found, fed = score_packed(
                        self.model, chunk, len(base), base_cache, base_logprobs, self.pad_id, self.device
                    )
                    self.computed_tokens += fed
                    for index, logprobs in found.items():
                        results[index] = logprobs
        return results

    def top_tokens(self, contexts: Sequence[Sequence[int]], k: int) -> list[tuple[tuple[int, float], ...]]:
        """The k most likely next tokens after each context, each run from its longest cached prefix (a scored
        base, or an earlier context: an adaptive span's previous step, ``prefix_cache``)."""
        import torch

        results = []
        with torch.inference_mode():
            for context in map(tuple, contexts):
                cached = [(ids, self._bases.get(ids)[0]) for ids in self._bases.keys()]
                cached += [(ids, self._contexts.get(ids)) for ids in self._contexts.keys()]
                logprobs, cache, fed = next_logprobs(self.model, context, cached, self.device)
                self.computed_tokens += fed
                self._contexts.put(context, cache)  # for the step after it
                top = logprobs.topk(k + 1)  # one spare: ties are cut by id
                results.append(best_first(list(zip(top.indices.tolist(), top.values.tolist())), k))
        return results

    def _base(self, base: tuple[int, ...]):
        """The attention cache and log-probs of a shared base, kept for the last few bases.

        A search scores one prompt's states over many calls: its base runs once, not once per call.
        """
        import torch

        entry = self._bases.get(base)
        if entry is None:
            out = self.model(input_ids=torch.tensor([base], device=self.device), use_cache=True)
            self.computed_tokens += len(base)
            entry = (out.past_key_values, torch.log_softmax(out.logits[0].float(), dim=-1).cpu())
            self._bases.put(base, entry)
        return entry

    def _stop_criteria(self, stop: tuple[str, ...]):
        # Building a StopStringCriteria scans the whole vocabulary: do it once per stop list.
        from transformers import StoppingCriteriaList, StopStringCriteria

        if stop not in self._stop_cache:
            self._stop_cache[stop] = StoppingCriteriaList([StopStringCriteria(self.tokenizer, list(stop))])
        return self._stop_cache[stop]

    def close(self) -> None:
        self.model = None
