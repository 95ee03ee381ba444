"""Merging iterators over memtables and tables.

Every source yields entries ``(key, seq, kind, value)`` in key order with at
most one entry per key (memtables keep the newest version only, and flushes
and compactions write one version per key). Sources are passed newest first;
``heapq.merge`` is stable, so among equal keys the newest source's entry comes
out first and the rest are skipped. That avoids a per-entry sort key.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from operator import itemgetter

from lsm.keys import KIND_DELETE, KIND_VALUE, Entry
from lsm.options import CompactionFilter, Decision

_KEY = itemgetter(0)


def merge_newest(sources: list[Iterable[Entry]]) -> Iterator[Entry]:
    """Merge key-ordered sources given newest first; one entry per key."""
    if len(sources) == 1:
        yield from sources[0]
        return
    last: bytes | None = None
    for entry in heapq.merge(*sources, key=_KEY):
        key = entry[0]
        if key != last:
            last = key
            yield entry


def live_items(
    entries: Iterable[Entry], end: bytes | None
) -> Iterator[tuple[bytes, bytes]]:
    """User view of merged entries: skip tombstones, stop before ``end``."""
    for key, _seq, kind, value in entries:
        if end is not None and key >= end:
            return
        if kind == KIND_VALUE:
            yield key, value


class CompactionStats:
    __slots__ = ("dropped_tombstones", "filtered", "replaced")

    def __init__(self) -> None:
        self.dropped_tombstones = 0
        self.filtered = 0
        self.replaced = 0


def compaction_stream(
    merged: Iterable[Entry],
    bottommost: bool,
    compaction_filter: CompactionFilter | None,
    stats: CompactionStats,
) -> Iterator[Entry]:
    """Apply tombstone and filter rules to merged compaction input.

    Tombstones are dropped only at the bottom (nothing older can hide below).
    A filter's DROP becomes a tombstone above the bottom for the same reason:
    removing the entry outright could resurrect an older version deeper down.
    """
    for entry in merged:
        key, seq, kind, value = entry
        if kind == KIND_DELETE:
            if bottommost:
                stats.dropped_tombstones += 1
                continue
            yield entry
            continue
        if compaction_filter is not None:
            decision, new_value = compaction_filter(key, value)
            if decision == Decision.DROP:
                stats.filtered += 1
                if not bottommost:
                    yield (key, seq, KIND_DELETE, b"")
                continue
            if decision == Decision.REPLACE and new_value is not None:
                stats.replaced += 1
                yield (key, seq, KIND_VALUE, new_value)
                continue
        yield entry
