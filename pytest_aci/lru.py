"""The one cache: least recently used entries dropped past a size (continuations, verdicts)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A map of at most ``max_entries``; ``hits`` counts the lookups it answered."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.hits = 0

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """The entries among ``keys`` that are known."""
        return {key: value for key in keys if (value := self.get(key)) is not None}

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def put_many(self, entries: Mapping[K, V]) -> None:
        for key, value in entries.items():
            self.put(key, value)

    def keys(self) -> list[K]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
