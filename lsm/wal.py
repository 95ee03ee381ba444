"""The write-ahead log: one record per write batch, in record_log frames.

A WAL file ``NNNNNN.log`` belongs to exactly one memtable. Each frame's
payload is one write batch::

    offset  size  field
    0       8     first_seq    sequence number of the first operation, u64
    8       4     count        number of operations, u32
    12      ...   count operations, each:
                  0   1  kind       0 = delete, 1 = value, 2 = merge
                  1   4  key_len    u32
                  5   4  value_len  u32 (0 for a delete; a merge's value is its operand)
                  9   .. key, then value

Operation i of the batch has sequence number ``first_seq + i``. A batch is
applied whole or not at all, because its frame is checked as a whole.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from lsm.errors import CorruptionError
from lsm.fs import FileSystem, WritableFile
from lsm.keys import KIND_MERGE, Op
from lsm.record_log import HEADER_SIZE, Damage, encode_frame, read_log

log = logging.getLogger("lsm.wal")

BATCH_HEADER = struct.Struct("<QI")
OP_HEADER = struct.Struct("<BII")
_ONE_OP = struct.Struct("<QIBII")  # batch header + op header, for the common case


def encode_batch(first_seq: int, ops: list[Op]) -> bytes:
    if len(ops) == 1:
        kind, key, value = ops[0]
        return b"".join((_ONE_OP.pack(first_seq, 1, kind, len(key), len(value)), key, value))
    parts = [BATCH_HEADER.pack(first_seq, len(ops))]
    pack = OP_HEADER.pack
    for kind, key, value in ops:
        parts += (pack(kind, len(key), len(value)), key, value)
    return b"".join(parts)


def decode_batch(payload: bytes, where: str = "WAL record") -> tuple[int, list[Op]]:
    """Inverse of :func:`encode_batch`; raises ValueError naming the problem
    (the caller adds file and offset)."""
    if len(payload) < BATCH_HEADER.size:
        raise ValueError(f"{where}: batch header needs 12 bytes, found {len(payload)}")
    first_seq, count = BATCH_HEADER.unpack_from(payload, 0)
    pos = BATCH_HEADER.size
    end = len(payload)
    ops: list[Op] = []
    unpack = OP_HEADER.unpack_from
    for i in range(count):
        if pos + OP_HEADER.size > end:
            raise ValueError(f"{where}: operation {i} of {count} header runs past the record")
        kind, klen, vlen = unpack(payload, pos)
        pos += OP_HEADER.size
        if kind > KIND_MERGE:
            raise ValueError(f"{where}: operation {i} has unknown kind {kind}")
        if pos + klen + vlen > end:
            raise ValueError(f"{where}: operation {i} of {count} runs past the record")
        key = payload[pos : pos + klen]
        pos += klen
        value = payload[pos : pos + vlen]
        pos += vlen
        ops.append((kind, key, value))
    if pos != end:
        raise ValueError(f"{where}: {end - pos} unexpected bytes after {count} operations")
    return first_seq, ops


class WalWriter:
    """Appends batches to one WAL file. Not thread-safe by itself: the engine
    appends under its write lock and syncs under its sync lock."""

    __slots__ = ("_file", "flushed_size", "number", "path")

    def __init__(self, file: WritableFile, number: int) -> None:
        self._file = file
        self.number = number
        self.path = file.path
        # Bytes handed to the OS: what an fsync started now is sure to cover.
        # Set after the write returns, so other threads never see more than
        # what really reached the OS.
        self.flushed_size = file.size()

    def append(self, payloads: list[bytes]) -> None:
        f = self._file
        for payload in payloads:
            f.append(encode_frame(payload))

    def flush(self) -> None:
        self._file.flush()
        self.flushed_size = self._file.size()

    def sync(self) -> None:
        self._file.sync()
        self.flushed_size = self._file.size()

    def sync_flushed(self) -> None:
        self._file.sync_flushed()

    def discard_buffer(self) -> None:
        self._file.discard_buffer()

    def size(self) -> int:
        return self._file.size()

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True, slots=True)
class ReplayResult:
    records: int
    operations: int
    last_seq: int
    valid_end: int
    damage: Damage | None

    @property
    def torn_tail(self) -> int | None:
        return self.damage.offset if self.damage and self.damage.torn else None


def replay_file(
    fs: FileSystem,
    path: str,
    apply: Callable[[int, list[Op]], None],
) -> ReplayResult:
    """Feed every batch of the WAL at ``path`` to ``apply(first_seq, ops)``.

    A torn tail is reported (and logged) but not removed: the caller truncates
    the file to ``valid_end``. Damage before the tail raises CorruptionError.
    """
    data = fs.read_file(path)
    result = read_log(data, path)
    last_seq = 0
    operations = 0
    for record in result.records:
        try:
            first_seq, ops = decode_batch(record.payload)
        except ValueError as exc:
            raise CorruptionError(path, record.offset + HEADER_SIZE, str(exc)) from None
        apply(first_seq, ops)
        operations += len(ops)
        if ops:
            last_seq = max(last_seq, first_seq + len(ops) - 1)
    if result.damage is not None:
        log.warning(
            "%s: torn tail at offset %d (%s); dropping %d bytes of an unfinished write",
            path, result.damage.offset, result.damage.reason, len(data) - result.valid_end,
        )
    return ReplayResult(len(result.records), operations, last_seq, result.valid_end, result.damage)
