"""Point reads: the value of one key in a snapshot of the engine.

A read looks at the memtable, the immutable memtables (newest first), the
level-0 tables whose range covers the key (newest first), then the one
candidate table of each deeper level. The first entry found decides, unless
it is a merge operand: then the walk goes on collecting operands down to a
VALUE or DELETE or the end (lsm.merging.finish applies them).

``cached=True`` is the variant for callers on an event loop
(``DB.get_cached``): where a file would be read (a table not open yet, a
data block not in the block cache) it raises :class:`NeedsRead` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsm.keys import KIND_DELETE, KIND_MERGE, KIND_VALUE, Hit
from lsm.memtable import MemTable
from lsm.merging import NOT_CACHED, finish
from lsm.table_cache import TableCache
from lsm.version import LsmVersion

if TYPE_CHECKING:
    from lsm.options import MergeOperator

#: What a reader needs: ``(memtable, immutable memtables newest first,
#: version)``, replaced whole by the engine and read without a lock.
State = tuple[MemTable, tuple[MemTable, ...], LsmVersion]


class NeedsRead(Exception):
    """A ``cached`` lookup would have to read a file."""


def lookup(
    state: State, tables: TableCache, op: MergeOperator | None, key: bytes, cached: bool
) -> bytes | None:
    """The value of ``key`` in ``state``, or ``None`` if absent or deleted."""
    mem, imms, version = state
    hit = mem.get(key)
    if hit is None:
        for imm in imms:
            hit = imm.get(key)
            if hit is not None:
                break
        else:
            return _from_tables(version, tables, op, key, cached, operands=None)
    kind = hit[1]
    if kind == KIND_VALUE:
        return hit[2]
    if kind == KIND_DELETE:
        return None
    operands: list[bytes] = []  # a memtable operand: walk the memtables again
    for m in (mem, *imms):
        hit = m.get(key)
        if hit is not None:
            if hit[1] != KIND_MERGE:
                return finish(op, key, hit, operands)
            operands.append(hit[2])
    return _from_tables(version, tables, op, key, cached, operands=operands)


def _from_tables(
    version: LsmVersion, tables: TableCache, op: MergeOperator | None, key: bytes, cached: bool,
    *, operands: list[bytes] | None,
) -> bytes | None:
    """The value of ``key`` from the tables, on top of the merge ``operands``
    (newest first) found above them, if any."""
    for f in version.levels[0]:
        if f.smallest <= key <= f.largest:
            hit = _probe(tables, f.number, key) if cached else tables.get(f.number).get(key)
            if hit is not None:
                if hit[1] != KIND_MERGE:
                    return _settle(op, key, hit, operands)
                operands = _push(operands, hit[2])
    for level in version.deep_levels:
        f2 = version.find_in_level(level, key)
        if f2 is not None:
            hit = _probe(tables, f2.number, key) if cached else tables.get(f2.number).get(key)
            if hit is not None:
                if hit[1] != KIND_MERGE:
                    return _settle(op, key, hit, operands)
                operands = _push(operands, hit[2])
    return None if operands is None else finish(op, key, None, operands)


def _settle(
    op: MergeOperator | None, key: bytes, base: Hit, operands: list[bytes] | None
) -> bytes | None:
    if operands is None:
        return base[2] if base[1] == KIND_VALUE else None
    return finish(op, key, base, operands)


def _push(operands: list[bytes] | None, operand: bytes) -> list[bytes]:
    if operands is None:
        return [operand]
    operands.append(operand)
    return operands


def _probe(tables: TableCache, number: int, key: bytes) -> Hit | None:
    """A table lookup that reads no file, or :class:`NeedsRead`."""
    reader = tables.if_open(number)
    if reader is None:
        raise NeedsRead
    hit = reader.get_cached(key)
    if hit is NOT_CACHED:
        raise NeedsRead
    return hit
