"""The internal entry model shared by memtable, WAL, SSTables and iterators.

An entry is the plain tuple ``(key, seq, kind, value)``; tuples keep the hot
paths free of attribute lookups. Internal order is key ascending, then
sequence number descending, so the newest version of a key comes first.
``seq`` is a 56-bit counter; on disk it is packed with ``kind`` into one
64-bit trailer, ``seq << 8 | kind``, as LevelDB does.

Kinds: a VALUE holds the key's value, a DELETE (tombstone) hides every older
entry, a MERGE holds an operand for ``Options.merge_operator`` that applies
on top of the older entries (RocksDB's kTypeMerge, also 2; see lsm.merging).
"""

from __future__ import annotations

KIND_DELETE = 0
KIND_VALUE = 1
KIND_MERGE = 2

MAX_KEY_BYTES = 1 << 16
MAX_VALUE_BYTES = 1 << 28

Entry = tuple[bytes, int, int, bytes]
#: What one memtable or table holds for a key: ``(seq, kind, value)``.
Hit = tuple[int, int, bytes]
#: One operation of a write batch: ``(kind, key, value)``.
Op = tuple[int, bytes, bytes]


def pack_trailer(seq: int, kind: int) -> int:
    return (seq << 8) | kind


def unpack_trailer(trailer: int) -> tuple[int, int]:
    return trailer >> 8, trailer & 0xFF


def kind_name(kind: int) -> str:
    return _KIND_NAMES.get(kind, f"unknown({kind})")


_KIND_NAMES = {KIND_DELETE: "delete", KIND_VALUE: "value", KIND_MERGE: "merge"}
