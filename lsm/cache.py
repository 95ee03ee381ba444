"""The block cache: decoded data blocks under a byte budget, LRU.

Shared by every table of one engine. Entries are charged their decoded size
plus a fixed overhead, so the budget bounds memory, not just block count.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Any

ENTRY_OVERHEAD = 200


class BlockCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[int, int], tuple[Any, int]] = OrderedDict()
        self._usage = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: tuple[int, int]) -> Any:
        """The cached value or ``None``."""
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        with contextlib.suppress(KeyError):  # evicted by another thread meanwhile
            self._items.move_to_end(key)
        return item[0]

    def peek(self, key: tuple[int, int]) -> Any:
        """:meth:`get` for a probe that falls back to a read on a miss: a
        hit counts, a miss does not (the read that follows counts it)."""
        item = self._items.get(key)
        if item is None:
            return None
        self.hits += 1
        with contextlib.suppress(KeyError):
            self._items.move_to_end(key)
        return item[0]

    def put(self, key: tuple[int, int], value: Any, charge: int) -> None:
        charge += ENTRY_OVERHEAD
        if charge > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._usage -= old[1]
            self._items[key] = (value, charge)
            self._usage += charge
            while self._usage > self.capacity:
                _, (_, freed) = self._items.popitem(last=False)
                self._usage -= freed
                self.evictions += 1

    def stats(self) -> dict[str, int | float]:
        lookups = self.hits + self.misses
        return {
            "capacity_bytes": self.capacity,
            "usage_bytes": self._usage,
            "entries": len(self._items),
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "hit_rate": round(self.hits / lookups, 4) if lookups else 0.0,
        }
