"""The memtable: one entry per recently written key.

A plain dict gives O(1) puts and gets; order is needed only for scans and
flushes, so it is produced by sorting when asked and cached once the table is
immutable. The engine exposes no snapshots, so an overwrite may replace the
older version in place (a late, older entry is ignored). A merge operand
added on top of a key's entry is combined with it at once
(:func:`lsm.merging.combine`): VALUE or DELETE + MERGE gives a VALUE,
MERGE + MERGE a MERGE, so memory and reads stay bounded however many
operands a key receives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsm.keys import KIND_MERGE, Entry, Hit, Op
from lsm.merging import combine

if TYPE_CHECKING:
    from lsm.options import MergeOperator

# Per-entry bookkeeping charged on top of key and value bytes (dict slot,
# tuple, ints), so that many tiny writes still trigger a flush.
ENTRY_OVERHEAD = 64


class MemTable:
    __slots__ = ("_data", "_merge", "_sorted", "approx_bytes", "wal_number")

    def __init__(self, wal_number: int, merge_operator: MergeOperator | None = None) -> None:
        self._data: dict[bytes, Hit] = {}
        self._merge = merge_operator
        self._sorted: list[Entry] | None = None
        self.approx_bytes = 0
        self.wal_number = wal_number

    def __len__(self) -> int:
        return len(self._data)

    def add(self, key: bytes, seq: int, kind: int, value: bytes) -> None:
        self.add_batch(seq, [(kind, key, value)])

    def add_batch(self, first_seq: int, ops: list[Op]) -> None:
        """Apply ``ops``; operation i has sequence number ``first_seq + i``."""
        self.approx_bytes += self._fold_into(self._data, first_seq, ops)
        self._sorted = None

    def stage(self, first_seq: int, ops: list[Op]) -> dict[bytes, Hit]:
        """The entries ``ops`` would leave, computed without changing the
        table: a batch holding merge operands calls the merge operator, and
        if that raises, nothing of the batch may be applied (nor logged)."""
        staged: dict[bytes, Hit] = {}
        self._fold_into(staged, first_seq, ops)
        return staged

    def commit(self, staged: dict[bytes, Hit], ops: list[Op]) -> None:
        """Install what :meth:`stage` computed for ``ops``."""
        self._data.update(staged)
        self.approx_bytes += sum(len(k) + len(v) + ENTRY_OVERHEAD for _, k, v in ops)
        self._sorted = None

    def _fold_into(self, out: dict[bytes, Hit], first_seq: int, ops: list[Op]) -> int:
        """Write the entries ``ops`` leave into ``out`` (the table itself, or
        a staging dict over it); return the bytes to charge."""
        data = self._data
        staging = out is not data
        charge = 0
        seq = first_seq
        for kind, key, value in ops:
            old = out.get(key)
            if old is None and staging:
                old = data.get(key)
            if old is None or (old[0] < seq and kind != KIND_MERGE):
                out[key] = (seq, kind, value)
            else:
                out[key] = combine(self._merge, key, old, (seq, kind, value))
            charge += len(key) + len(value) + ENTRY_OVERHEAD
            seq += 1
        return charge

    def get(self, key: bytes) -> Hit | None:
        return self._data.get(key)

    def entries(self) -> list[Entry]:
        """All entries in key order. Cached: callers must not mutate it."""
        cached = self._sorted
        if cached is None:
            data = self._data
            cached = [(k, *data[k]) for k in sorted(data)]
            self._sorted = cached
        return cached

    def max_seq(self) -> int:
        return max((v[0] for v in self._data.values()), default=0)
