"""Optional parts of pytest-aci and the pip extra that installs each.

The core install runs specs against the transformers backend or a served model (``--aci-endpoint``);
the in-process vLLM engine, ``aci-harden`` and the report's plot need more.
"""

from __future__ import annotations

import importlib

EXTRAS = {
    "vllm": ("vllm",),
    "train": ("peft", "accelerate"),
    "report": ("matplotlib", "jinja2"),
}


class MissingExtra(RuntimeError):
    """A feature whose packages are not installed; the message says which extra installs them."""


def require(extra: str, feature: str) -> None:
    """Raise ``MissingExtra`` naming ``feature`` and ``pip install 'pytest-aci[extra]'`` if a package is missing."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtra(
            f"{feature} needs {', '.join(missing)}, which is not installed: pip install 'pytest-aci[{extra}]'"
        )
