"""The transformers backend: batched, left-padded greedy generation under ``torch.inference_mode``."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_aci.backends import BackendError, Completion, ScoreRequest, eos_token_ids, trim_completion


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
        self._bases: dict[tuple[int, ...], tuple] = {}  # shared base -> (attention cache, log-probs)

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
        """Teacher-forced target log-probs; each distinct ``base`` runs once, its cache serves every cut.

        Requests that share (base, cut) are packed into one row as a prefix tree of their
        ``suffix + target`` sequences, under a tree attention mask: a token sees the cached
        ``base[:cut]`` and its own ancestors in the tree, nothing else. So spans cut from one span
        share their tokens, and targets that open alike (", I can't" and ", I'm sorry") share their
        opening. This is the computation of a forward pass over ``base[:cut] + suffix + target`` per
        request, without recomputing what they share.
        """
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
                    results_chunk = self._score_packed(chunk, len(base), base_cache, base_logprobs)
                    for index, logprobs in results_chunk.items():
                        results[index] = logprobs
        return results

    def _base(self, base: tuple[int, ...]):
        """The attention cache and log-probs of a shared base, kept for the last few bases.

        A search scores one prompt's states over many calls: its base runs once, not once per call.
        """
        import torch

        if base in self._bases:
            self._bases[base] = self._bases.pop(base)  # most recently used last
            return self._bases[base]
        out = self.model(input_ids=torch.tensor([base], device=self.device), use_cache=True)
        self.computed_tokens += len(base)
        entry = (out.past_key_values, torch.log_softmax(out.logits[0].float(), dim=-1).cpu())
        self._bases[base] = entry
        while len(self._bases) > 8:
            self._bases.pop(next(iter(self._bases)))
        return entry

    def _score_packed(self, rows, width: int, base_cache, base_logprobs) -> dict[int, tuple[float, ...]]:
        """One batch of packed rows ``(cut, [(request index, request), …])`` over a cached base."""
        import copy

        import torch

        layouts = []  # per row: token ids, slot of each fed prefix, ancestors per slot, position ids
        for cut, members in rows:
            ids: list[int] = []
            positions: list[int] = []
            slot_of: dict[tuple[int, ...], int] = {}
            ancestors: list[list[int]] = []
            for _, request in members:
                sequence = request.suffix + request.target
                # The last token predicts nothing we read: only the proper prefixes are fed.
                for end in range(1, len(sequence)):
                    prefix = sequence[:end]
                    if prefix not in slot_of:
                        slot_of[prefix] = len(ids)
                        ancestors.append((ancestors[slot_of[prefix[:-1]]] if end > 1 else []) + [len(ids)])
                        ids.append(prefix[-1])
                        positions.append(cut + end - 1)
            layouts.append((ids, slot_of, ancestors, positions))
        length = max(1, max(len(ids) for ids, _, _, _ in layouts))
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((batch, length), dtype=torch.long)
        mask = torch.zeros((batch, 1, length, width + length), dtype=torch.bool)
        for b, ((cut, _), (ids, _, ancestors, positions)) in enumerate(zip(rows, layouts)):
            n = len(ids)
            mask[b, 0, :, :cut] = True  # every slot (padding too: no empty softmax) sees base[:cut]
            if n:
                input_ids[b, :n] = torch.tensor(ids, dtype=torch.long)
                position_ids[b, :n] = torch.tensor(positions, dtype=torch.long)
                for slot, seen in enumerate(ancestors):
                    mask[b, 0, slot, [width + j for j in seen]] = True
        if self.model.config._attn_implementation == "eager":
            attention = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        else:
            attention = mask
        cache = copy.deepcopy(base_cache)
        cache.batch_repeat_interleave(batch)
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            position_ids=position_ids.to(self.device),
            past_key_values=cache,
            use_cache=True,
        ).logits
        self.computed_tokens += sum(len(ids) for ids, _, _, _ in layouts)
        results: dict[int, tuple[float, ...]] = {}
        for b, ((cut, members), (ids, slot_of, _, _)) in enumerate(zip(rows, layouts)):
            row = torch.log_softmax(logits[b, : len(ids)].float(), dim=-1)  # once per slot, shared by requests
            for index, request in members:
                sequence, start = request.suffix + request.target, len(request.suffix)
                # Token j is predicted at the slot of sequence[:j]; the first one at the base's last position.
                slots = [slot_of[sequence[:j]] for j in range(max(1, start), len(sequence))]
                values = row[slots, list(sequence[len(sequence) - len(slots) :])].tolist()  # one gather, one copy
                if start == 0:
                    values.insert(0, float(base_logprobs[cut - 1][sequence[0]]))
                results[index] = tuple(values)
        return results

    def _stop_criteria(self, stop: tuple[str, ...]):
        # Building a StopStringCriteria scans the whole vocabulary: do it once per stop list.
        from transformers import StoppingCriteriaList, StopStringCriteria

        if stop not in self._stop_cache:
            self._stop_cache[stop] = StoppingCriteriaList([StopStringCriteria(self.tokenizer, list(stop))])
        return self._stop_cache[stop]

    def close(self) -> None:
        self.model = None
