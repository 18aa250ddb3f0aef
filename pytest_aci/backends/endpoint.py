"""Talking to an OpenAI-compatible server over HTTP: the API key, TLS, and retries.

The key is read from an environment variable (``OPENAI_API_KEY`` unless ``--aci-api-key-env`` names
another) and sent as a bearer token; it is never stored in options, replay commands, reports or
messages. A 401/403 is not retried: it is a one-line error naming the endpoint and the variable.
HTTPS uses the system's certificate store, or the CA bundle ``--aci-ca-bundle`` names. Connection
errors, timeouts, 408, 429 and 5xx answers are retried (tenacity: exponential backoff with jitter, or
the server's ``Retry-After``), then the call fails with a ``BackendError`` naming the endpoint.
"""

from __future__ import annotations

import os
from typing import Any

from pytest_aci.backends.base import DEFAULT_API_KEY_ENV, BackendError

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
AUTH_STATUS = {401, 403}


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


class EndpointClient:
    """JSON requests to one server, retried; shared by the threads of one backend."""

    def __init__(
        self,
        endpoint: str,
        *,
        max_in_flight: int = 8,
        retries: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 300.0,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        ca_bundle: str | None = None,
    ):
        import httpx

        self.endpoint = _base(endpoint)
        self.api_key_env, self.ca_bundle = api_key_env, ca_bundle
        self.retries, self.backoff_s = retries, backoff_s
        self._down = False
        self.client = httpx.Client(
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=max_in_flight),
            headers=auth_headers(api_key_env),
            verify=tls_verify(ca_bundle),
        )

    def request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
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

    def close(self) -> None:
        self.client.close()
