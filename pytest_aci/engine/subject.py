"""The model under test as the engine's stages reach it: what each of them receives instead of the runtime."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_aci.backends import Backend, LazyBackend
from pytest_aci.engine.defences import Defence
from pytest_aci.engine.generation import Generation, GenerationStats
from pytest_aci.spec import LoadedSpec


@dataclass
class Subject:
    """Its name as given (``--aci-model``), its backend (started on first use), generation through the session's
    cache, and the inference-time defence a spec puts around it."""

    model: str
    lazy_backend: LazyBackend
    generation: Generation
    defence_for: Callable[[LoadedSpec], Defence | None]

    @property
    def backend(self) -> Backend:
        backend = self.lazy_backend.get()
        self.stats.startup_s = self.lazy_backend.startup_s
        return backend

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    @property
    def stats(self) -> GenerationStats:
        return self.generation.stats
