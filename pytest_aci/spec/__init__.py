"""Safety specs: the YAML files that become pytest items.

``schema`` (the pydantic models, ``SpecError``), ``loading`` (``load_spec``: YAML with line numbers,
prompt files), ``regressions`` (saved failing cases, fitted to the model, replayed first).
"""

from pytest_aci.spec.loading import load_spec
from pytest_aci.spec.schema import (
    INSERTION_CHECKS,
    SPEC_SUFFIXES,
    Check,
    Generation,
    LoadedPrompt,
    LoadedSpec,
    PromptFile,
    Spec,
    SpecError,
)

__all__ = [
    "INSERTION_CHECKS",
    "SPEC_SUFFIXES",
    "Check",
    "Generation",
    "LoadedPrompt",
    "LoadedSpec",
    "PromptFile",
    "Spec",
    "SpecError",
    "load_spec",
]
