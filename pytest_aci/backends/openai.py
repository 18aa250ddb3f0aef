"""The served backend: token-id prompts to an OpenAI-compatible completions server (``vllm serve``).

Many pytest-xdist workers, and many hosts, share one engine this way — with vLLM's tensor and
pipeline parallelism behind it for big models. Prompts go as token ids (never re-tokenized text)
and come back as token ids (vLLM's ``return_token_ids``); the tokenizer for chat templates and
spans is the local ``--aci-model``. Batches go out concurrently, at most ``max_in_flight`` requests
at a time; a server that does not answer fails the call with a ``BackendError`` naming the endpoint
(after retries) — never a silent pass.

The HTTP side (API key, TLS, retries) is ``endpoint.EndpointClient``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pytest_aci.backends.base import (
    DEFAULT_API_KEY_ENV,
    BackendError,
    Completion,
    ScoreRequest,
    best_first,
    eos_token_ids,
    trim_completion,
)
from pytest_aci.backends.endpoint import EndpointClient

if TYPE_CHECKING:
    from pytest_aci.backends.registry import BackendSettings

MAX_SERVER_STOP = 4  # the OpenAI schema (and vLLM's server) takes at most 4 stop strings


def cut_at_stop(ids: Sequence[int], stop: Sequence[str], decode) -> tuple[tuple[int, ...], bool]:
    """End ``ids`` with the token that completes the first stop string, as an in-process engine does."""
    ids = tuple(ids)
    if not stop or not any(s in decode(ids) for s in stop):
        return ids, False
    for end in range(1, len(ids) + 1):
        text = decode(ids[:end])
        if any(s in text for s in stop):
            return ids[:end], True
    return ids, False


class OpenAIBackend:
    name = "openai"

    @classmethod
    def from_settings(cls, model_path: str, settings: BackendSettings) -> OpenAIBackend:
        assert settings.endpoint, "pick_backend makes sure an endpoint is given"
        return cls(
            settings.endpoint,
            model_path,
            max_in_flight=settings.max_in_flight,
            api_key_env=settings.api_key_env,
            ca_bundle=settings.ca_bundle,
        )

    def __init__(
        self,
        endpoint: str,
        model_path: str,
        *,
        max_in_flight: int = 8,
        prompts_per_request: int = 16,
        retries: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 300.0,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        ca_bundle: str | None = None,
    ):
        from transformers import AutoTokenizer

        self.http = EndpointClient(
            endpoint,
            max_in_flight=max_in_flight,
            retries=retries,
            backoff_s=backoff_s,
            timeout_s=timeout_s,
            api_key_env=api_key_env,
            ca_bundle=ca_bundle,
        )
        self.endpoint = self.http.endpoint
        self.prompts_per_request = prompts_per_request
        self.computed_tokens = 0  # as the server reports them (usage), cached prefill included
        self.pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="aci-openai")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load the tokenizer of {model_path!r} for --aci-endpoint: {exc}") from exc
        self.eos_ids = eos_token_ids(self.tokenizer)
        self.served_model = self._served_model()
        self._check_token_id_prompts()

    def _served_model(self) -> str:
        models = self.http.request("GET", "/v1/models").get("data") or []
        if not models:
            raise BackendError(f"--aci-endpoint {self.endpoint}: the server lists no model under /v1/models")
        return models[0]["id"]

    def _check_token_id_prompts(self) -> None:
        """A server that takes a token-id prompt but cannot answer with token ids would be re-tokenized: refuse it."""
        probe = list(self.tokenizer.encode("Hello", add_special_tokens=False)) or [0]
        try:
            choice = self._complete([probe], max_new_tokens=1, stop=())[0]
        except BackendError as exc:
            raise BackendError(
                f"--aci-endpoint {self.endpoint}: the server does not accept token-id prompts ({exc}); "
                "pytest-aci needs vLLM's OpenAI server (python -m vllm.entrypoints.openai.api_server)"
            ) from None
        if not isinstance(choice.get("token_ids"), list):
            raise BackendError(
                f"--aci-endpoint {self.endpoint}: the server does not answer with token ids "
                "(return_token_ids); pytest-aci needs vLLM's OpenAI server"
            )

    def _complete(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str]) -> list[dict]:
        payload = {
            "model": self.served_model,
            "prompt": [list(map(int, p)) for p in prompts],
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            # The server stops at the first few; the rest are applied here (``cut_at_stop``).
            "stop": list(stop)[:MAX_SERVER_STOP] or None,
            "include_stop_str_in_output": True,
            "skip_special_tokens": True,
            "return_token_ids": True,
        }
        return self._choices(payload, len(prompts))

    def _choices(self, payload: dict[str, Any], count: int) -> list[dict]:
        answer = self.http.request("POST", "/v1/completions", payload)
        usage = answer.get("usage") or {}
        self.computed_tokens += int(usage.get("total_tokens") or 0)
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != count:
            raise BackendError(f"--aci-endpoint {self.endpoint}: asked for {count} completions, got {len(choices)}")
        return choices

    # --- the backend interface -------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()
    ) -> list[Completion]:
        if not prompts:
            return []
        size = self.prompts_per_request
        chunks = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        answers = self.pool.map(lambda chunk: self._complete(chunk, max_new_tokens, stop), chunks)
        completions = []
        for choices in answers:  # in order; the first failed chunk raises here
            for choice in choices:
                ids, ended = trim_completion(choice.get("token_ids") or [], self.eos_ids)
                ids, stopped = cut_at_stop(ids, stop, self._decode)
                text = self._decode(ids)
                if stopped or isinstance(choice.get("stop_reason"), str):
                    reason = "stop"
                else:
                    reason = "eos" if ended or choice.get("finish_reason") == "stop" else "length"
                completions.append(Completion(token_ids=ids, text=text, finish_reason=reason))
        return completions

    def score(self, requests: Sequence[ScoreRequest]) -> list[tuple[float, ...]]:
        """Teacher-forced target log-probs from the server's prompt log-probs (vLLM's ``prompt_logprobs``)."""
        if not requests:
            return []
        sequences = [list(map(int, r.context + r.target)) for r in requests]
        size = self.prompts_per_request
        chunks = [sequences[i : i + size] for i in range(0, len(sequences), size)]

        def ask(chunk: list[list[int]]) -> list[dict]:
            payload = {"model": self.served_model, "prompt": chunk, "max_tokens": 1, "temperature": 0.0}
            return self._choices({**payload, "prompt_logprobs": 0}, len(chunk))

        results = []
        choices = [choice for answer in self.pool.map(ask, chunks) for choice in answer]
        for request, sequence, choice in zip(requests, sequences, choices):
            logprobs = choice.get("prompt_logprobs")
            if not isinstance(logprobs, list) or len(logprobs) != len(sequence):
                raise BackendError(f"--aci-endpoint {self.endpoint}: the server did not return prompt log-probs")
            start = len(sequence) - len(request.target)
            results.append(tuple(float(logprobs[i][str(sequence[i])]["logprob"]) for i in range(start, len(sequence))))
        return results

    def top_tokens(self, contexts: Sequence[Sequence[int]], k: int) -> list[tuple[tuple[int, float], ...]]:
        """The k most likely next tokens after each context, from the server's sample log-probs, as token ids
        (vLLM's ``return_tokens_as_token_ids``; a server caps k at its ``--max-logprobs``, 20 by default)."""
        if not contexts:
            return []
        size = self.prompts_per_request
        chunks = [[list(map(int, c)) for c in contexts[i : i + size]] for i in range(0, len(contexts), size)]

        def ask(chunk: list[list[int]]) -> list[dict]:
            payload = {"model": self.served_model, "prompt": chunk, "max_tokens": 1, "temperature": 0.0}
            return self._choices({**payload, "logprobs": k, "return_tokens_as_token_ids": True}, len(chunk))

        results = []
        for choice in (choice for answer in self.pool.map(ask, chunks) for choice in answer):
            top = ((choice.get("logprobs") or {}).get("top_logprobs") or [None])[0]
            if not isinstance(top, dict) or not all(str(t).startswith("token_id:") for t in top):
                raise BackendError(f"--aci-endpoint {self.endpoint}: the server sent no top log-probs as token ids")
            results.append(best_first([(int(str(t).split(":", 1)[1]), float(lp)) for t, lp in top.items()], k))
        return results

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()
