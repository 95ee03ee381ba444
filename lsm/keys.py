"""The internal entry model shared by memtable, WAL, SSTables and iterators.

An entry is the plain tuple ``(key, seq, kind, value)``; tuples keep the hot
paths free of attribute lookups. Internal order is key ascending, then
sequence number descending, so the newest version of a key comes first.
``seq`` is a 56-bit counter; on disk it is packed with ``kind`` into one
64-bit trailer, ``seq << 8 | kind``, as LevelDB does.
"""

from __future__ import annotations

KIND_DELETE = 0
KIND_VALUE = 1

MAX_KEY_BYTES = 1 << 16
MAX_VALUE_BYTES = 1 << 28

Entry = tuple[bytes, int, int, bytes]


def pack_trailer(seq: int, kind: int) -> int:
    return (seq << 8) | kind


def unpack_trailer(trailer: int) -> tuple[int, int]:
    return trailer >> 8, trailer & 0xFF


def kind_name(kind: int) -> str:
    return {KIND_DELETE: "delete", KIND_VALUE: "value"}.get(kind, f"unknown({kind})")
