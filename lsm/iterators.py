"""Merging iterators over memtables and tables.

Every source yields entries ``(key, seq, kind, value)`` in key order with at
most one entry per key (memtables keep one entry per key, and flushes and
compactions write one entry per key). Sources are passed newest first;
``heapq.merge`` is stable, so among equal keys the newest source's entry comes
out first and the rest are skipped. That avoids a per-entry sort key.

With a merge operator configured, :func:`merge_resolving` is used instead:
a key whose newest entry is a merge operand takes the older entries of that
key in too, and comes out resolved (lsm.merging).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from operator import itemgetter

from lsm.keys import KIND_DELETE, KIND_MERGE, KIND_VALUE, Entry
from lsm.merging import fold
from lsm.options import CompactionFilter, Decision, MergeOperator

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


def merge_resolving(
    sources: list[Iterable[Entry]],
    op: MergeOperator | None,
    bottom: bool,
    stats: CompactionStats | None = None,
) -> Iterator[Entry]:
    """:func:`merge_newest` for databases that may hold merge operands: one
    entry per key, a run of operands folded into it (``lsm.merging.fold``).
    ``bottom``: the sources hold every entry older than them (a scan, or a
    compaction whose output is the bottom for its key range)."""
    stream = sources[0] if len(sources) == 1 else heapq.merge(*sources, key=_KEY)
    last: bytes | None = None
    head: Entry | None = None  # newest entry of ``last`` while it is a run of operands
    operands: list[bytes] = []
    for entry in stream:
        key = entry[0]
        if key == last:
            if head is not None:
                if entry[2] == KIND_MERGE:
                    operands.append(entry[3])
                    continue
                if stats is not None:
                    stats.merge_operands += len(operands)
                yield fold(op, head, operands, entry, bottom)
                head = None
            continue
        if head is not None:
            if stats is not None:
                stats.merge_operands += len(operands)
            yield fold(op, head, operands, None, bottom)
            head = None
        last = key
        if entry[2] == KIND_MERGE:
            head = entry
            operands = [entry[3]]
            continue
        yield entry
    if head is not None:
        if stats is not None:
            stats.merge_operands += len(operands)
        yield fold(op, head, operands, None, bottom)


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
    __slots__ = ("dropped_tombstones", "filtered", "merge_operands", "replaced")

    def __init__(self) -> None:
        self.dropped_tombstones = 0
        self.filtered = 0
        self.replaced = 0
        self.merge_operands = 0  # operands folded into another entry


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
    The filter sees values only: a merge operand still in ``merged`` (above
    the bottom, with no base in this compaction) passes through untouched,
    since what it resolves to depends on entries deeper down.
    """
    for entry in merged:
        key, seq, kind, value = entry
        if kind == KIND_DELETE:
            if bottommost:
                stats.dropped_tombstones += 1
                continue
            yield entry
            continue
        if compaction_filter is not None and kind == KIND_VALUE:
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
