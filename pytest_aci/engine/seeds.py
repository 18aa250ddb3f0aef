"""Per-item seeds: a search's and a depth sample's draws depend only on the session seed and the item."""

from __future__ import annotations

import hashlib


def derive_seed(session_seed: int, nodeid: str) -> int:
    """A per-item seed that depends only on the session seed and the item, not on run order."""
    digest = hashlib.sha256(f"{session_seed}:{nodeid}".encode()).digest()
    return int.from_bytes(digest[:8], "big")
