"""The served backend: token-id prompts to an OpenAI-compatible completions server (``vllm serve``).

Many pytest-xdist workers, and many hosts, share one engine this way — with vLLM's tensor and
pipeline parallelism behind it for big models. Prompts go as token ids (never re-tokenized text)
and come back as token ids (vLLM's ``return_token_ids``); the tokenizer for chat templates and
spans is the local ``--aci-model``. Batches go out concurrently, at most ``max_in_flight`` requests
at a time; connection errors, timeouts, 408, 429 and 5xx answers are retried (tenacity: exponential
backoff with jitter, or the server's ``Retry-After``), then the call fails with a ``BackendError``
naming the endpoint — never a silent pass.

Authenticated servers (``vllm serve --api-key``, gateways): the key is read from an environment
variable (``OPENAI_API_KEY`` unless ``--aci-api-key-env`` names another) and sent as a bearer token;
it is never stored in options, replay commands, reports or messages. A 401/403 is not retried: it is
a one-line error naming the endpoint and the variable. HTTPS uses the system's certificate store, or
the CA bundle ``--aci-ca-bundle`` names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pytest_aci.backends import (
    DEFAULT_API_KEY_ENV,
    BackendError,
    Completion,
    ScoreRequest,
    eos_token_ids,
    trim_completion,
)

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
AUTH_STATUS = {401, 403}
MAX_SERVER_STOP = 4  # the OpenAI schema (and vLLM's server) takes at most 4 stop strings


def _api_key(api_key_env: str) -> str:
    return os.environ.get(api_key_env, "").strip()


def auth_headers(api_key_env: str) -> dict[str, str]:
    key = _api_key(api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def tls_verify(ca_bundle: str | None):
    """What httpx verifies HTTPS with: the system's certificate store, or the CA bundle named."""
    import ssl

    try:
        return ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise BackendError(f"--aci-ca-bundle {ca_bundle}: cannot read it as PEM certificates ({exc})") from None


def auth_error(endpoint: str, status: int, api_key_env: str) -> BackendError:
    why = f"the key in ${api_key_env} was refused"
    if not _api_key(api_key_env):
        why = f"it wants an API key: set ${api_key_env}"
    return BackendError(f"--aci-endpoint {endpoint}: HTTP {status}: {why} (--aci-api-key-env names another variable)")


def check_access(
    endpoint: str, *, api_key_env: str = DEFAULT_API_KEY_ENV, ca_bundle: str | None = None, timeout_s: float = 10.0
) -> None:
    """Raise ``BackendError`` when the server turns the key away (401/403) or its certificate is not trusted.

    Called once at session start so that these end the session as a usage error; a server that does not
    answer yet is left to the items (it may be starting), as before."""
    import httpx

    url = f"{_base(endpoint)}/v1/models"
    try:
        response = httpx.get(url, headers=auth_headers(api_key_env), verify=tls_verify(ca_bundle), timeout=timeout_s)
    except httpx.ConnectError as exc:
        _raise_if_untrusted(exc, url, ca_bundle)
        return
    except httpx.TransportError:
        return
    if response.status_code in AUTH_STATUS:
        raise auth_error(_base(endpoint), response.status_code, api_key_env)


def _raise_if_untrusted(exc: Exception, url: str, ca_bundle: str | None) -> None:
    """An untrusted certificate is an error of its own: retrying will not make it trusted."""
    if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
        return
    where = f"the CA bundle {ca_bundle}" if ca_bundle else "the system's certificate store"
    if not ca_bundle:
        where += " (--aci-ca-bundle PEM names a private CA)"
    raise BackendError(f"--aci-endpoint {url}: the server's certificate is not trusted by {where}: {exc}") from None


def _base(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint[: -len("/v1")] if endpoint.endswith("/v1") else endpoint


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


MAX_RETRY_AFTER_S = 60.0  # a server's Retry-After is honoured up to this


class Retryable(Exception):
    """An attempt that another attempt may cure: a transport error, 408, 429 or 5xx (with its Retry-After)."""

    def __init__(self, problem: str, retry_after_s: float | None = None):
        super().__init__(problem)
        self.retry_after_s = retry_after_s


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def retry_wait(backoff_s: float):
    """tenacity's wait: the server's Retry-After (capped) when it sent one, else exponential backoff with
    full jitter, so that many xdist workers that failed together do not retry in lockstep."""
    from tenacity import wait_exponential, wait_random

    backoff = wait_exponential(multiplier=backoff_s, max=30.0) + wait_random(0, backoff_s)

    def wait(state) -> float:
        asked = getattr(state.outcome.exception(), "retry_after_s", None)
        return min(asked, MAX_RETRY_AFTER_S) if asked is not None else backoff(state)

    return wait


class OpenAIBackend:
    name = "openai"

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
        import httpx
        from transformers import AutoTokenizer

        self.endpoint = _base(endpoint)
        self.api_key_env, self.ca_bundle = api_key_env, ca_bundle
        self.max_in_flight, self.prompts_per_request = max_in_flight, prompts_per_request
        self.retries, self.backoff_s = retries, backoff_s
        self._down = False
        self.computed_tokens = 0  # as the server reports them (usage), cached prefill included
        self.client = httpx.Client(
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=max_in_flight),
            headers=auth_headers(api_key_env),
            verify=tls_verify(ca_bundle),
        )
        self.pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="aci-openai")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load the tokenizer of {model_path!r} for --aci-endpoint: {exc}") from exc
        self.eos_ids = eos_token_ids(self.tokenizer)
        self.served_model = self._served_model()
        self._check_token_id_prompts()

    # --- requests ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

        url = f"{self.endpoint}{path}"
        # Once a call has used up its retries, later calls try once each until the server answers
        # again: the rest of a session whose server died fails fast instead of waiting per item.
        attempts = 1 if self._down else self.retries + 1
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=retry_wait(self.backoff_s),
            retry=retry_if_exception_type(Retryable),
            reraise=True,
        )
        try:
            response = retrying(self._send, method, url, payload)
        except Retryable as exc:
            self._down = True
            raise BackendError(f"--aci-endpoint {url}: no answer after {attempts} attempt(s) ({exc})") from None
        self._down = False
        if response.status_code >= 400:
            raise BackendError(f"--aci-endpoint {url}: HTTP {response.status_code}: {response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"--aci-endpoint {url}: the answer is not JSON: {response.text[:200]!r}") from None

    def _send(self, method: str, url: str, payload: dict[str, Any] | None):
        """One attempt: the response, or ``Retryable`` for what another attempt may cure."""
        import httpx

        try:
            response = self.client.request(method, url, json=payload)
        except httpx.ConnectError as exc:
            _raise_if_untrusted(exc, url, self.ca_bundle)
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        except httpx.TransportError as exc:  # refused, reset, timed out …
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in AUTH_STATUS:  # retrying will not make the key right
            raise auth_error(self.endpoint, response.status_code, self.api_key_env)
        if response.status_code in RETRYABLE_STATUS:
            raise Retryable(
                f"HTTP {response.status_code}: {response.text[:200]}", retry_after(response.headers.get("Retry-After"))
            )
        return response

    def _served_model(self) -> str:
        models = self._request("GET", "/v1/models").get("data") or []
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
        answer = self._request("POST", "/v1/completions", payload)
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

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
