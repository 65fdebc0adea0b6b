"""A small cache of structures derived from a PipelineDef, keyed by the definition's identity.

Definitions hold dicts (conditions, retry policies), so they are not hashable; the callers keep
one object per definition (models/snapshots.Frozen), which makes identity the right key. Each
entry holds the definition itself, so its id cannot be reused by another object while cached.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

from .types import PipelineDef

T = TypeVar("T")


class DefinitionCache(Generic[T]):
    """LRU of `build(defn)` results, at most `size` definitions, safe across threads."""

    def __init__(self, build: Callable[[PipelineDef], T], size: int):
        self._build, self.size = build, size
        self._entries: OrderedDict[int, tuple[PipelineDef, T]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, defn: PipelineDef) -> T:
        key = id(defn)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] is defn:
                self._entries.move_to_end(key)
                return hit[1]
        value = self._build(defn)  # outside the lock: building a large graph takes milliseconds
        with self._lock:
            self._entries[key] = (defn, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value
