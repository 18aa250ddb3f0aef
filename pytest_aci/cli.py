"""Command-line entry points."""

from __future__ import annotations

import sys


def harden_main(argv: list[str] | None = None) -> int:
    """``aci-harden``: worst-insertion fine-tuning (not yet implemented)."""
    print("aci-harden: not yet — worst-insertion fine-tuning arrives in a later release", file=sys.stderr)
    return 2
