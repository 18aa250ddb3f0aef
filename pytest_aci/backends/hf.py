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

        A row attends to the first ``cut`` positions of the cached base (the others are masked out)
        and continues at position ``cut``: the same computation as a forward pass over
        ``base[:cut] + suffix + target``, without recomputing the shared prefix per row.
        """
        import torch

        results: list[tuple[float, ...]] = [()] * len(requests)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.base, []).append(index)
        with torch.inference_mode():
            for base, indices in groups.items():
                out = self.model(input_ids=torch.tensor([base], device=self.device), use_cache=True)
                base_logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
                self.computed_tokens += len(base)
                for start in range(0, len(indices), rows_per_batch):
                    chunk = indices[start : start + rows_per_batch]
                    rows = [requests[i] for i in chunk]
                    for index, logprobs in zip(chunk, self._score_rows(rows, out.past_key_values, base_logprobs)):
                        results[index] = logprobs
        return results

    def _score_rows(self, rows: Sequence[ScoreRequest], base_cache, base_logprobs) -> list[tuple[float, ...]]:
        import copy

        import torch

        width = len(rows[0].base)
        seqs = [row.suffix + row.target for row in rows]
        length = max(len(seq) for seq in seqs)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width + length), dtype=torch.long)
        position_ids = torch.zeros((len(rows), length), dtype=torch.long)
        for b, (row, seq) in enumerate(zip(rows, seqs)):
            input_ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[b, : row.cut] = 1
            attention_mask[b, width : width + len(seq)] = 1
            position_ids[b] = torch.arange(row.cut, row.cut + length)
        cache = copy.deepcopy(base_cache)
        cache.batch_repeat_interleave(len(rows))
        # Only the positions that predict a target token go through the output layer.
        needed = sorted({len(row.suffix) + j - 1 for row in rows for j in range(len(row.target))} - {-1})
        column = {position: i for i, position in enumerate(needed)}
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=torch.tensor(needed or [0], device=self.device),
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        self.computed_tokens += sum(len(seq) for seq in seqs)
        results = []
        for b, row in enumerate(rows):
            values = []
            for j, token in enumerate(row.target):
                at = len(row.suffix) + j - 1  # the position that predicts this target token
                source = logprobs[b, column[at]] if at >= 0 else base_logprobs[row.cut - 1].cpu()
                values.append(float(source[token]))
            results.append(tuple(values))
        return results

    def _stop_criteria(self, stop: tuple[str, ...]):
        # Building a StopStringCriteria scans the whole vocabulary: do it once per stop list.
        from transformers import StoppingCriteriaList, StopStringCriteria

        if stop not in self._stop_cache:
            self._stop_cache[stop] = StoppingCriteriaList([StopStringCriteria(self.tokenizer, list(stop))])
        return self._stop_cache[stop]

    def close(self) -> None:
        self.model = None
