"""The memtable: the newest version of each recently written key.

A plain dict gives O(1) puts and gets; order is needed only for scans and
flushes, so it is produced by sorting when asked and cached once the table is
immutable. The engine exposes no snapshots, so an overwrite may replace the
older version in place; the sequence check keeps this correct when group
commit applies concurrent batches out of order.
"""

from __future__ import annotations

from lsm.keys import Entry

# Per-entry bookkeeping charged on top of key and value bytes (dict slot,
# tuple, ints), so that many tiny writes still trigger a flush.
ENTRY_OVERHEAD = 64


class MemTable:
    __slots__ = ("_data", "_sorted", "approx_bytes", "wal_number")

    def __init__(self, wal_number: int) -> None:
        self._data: dict[bytes, tuple[int, int, bytes]] = {}
        self._sorted: list[Entry] | None = None
        self.approx_bytes = 0
        self.wal_number = wal_number

    def __len__(self) -> int:
        return len(self._data)

    def add(self, key: bytes, seq: int, kind: int, value: bytes) -> None:
        data = self._data
        old = data.get(key)
        if old is None or old[0] < seq:
            data[key] = (seq, kind, value)
        self.approx_bytes += len(key) + len(value) + ENTRY_OVERHEAD
        self._sorted = None

    def add_batch(self, first_seq: int, ops: list[tuple[int, bytes, bytes]]) -> None:
        data = self._data
        charge = 0
        seq = first_seq
        for kind, key, value in ops:
            old = data.get(key)
            if old is None or old[0] < seq:
                data[key] = (seq, kind, value)
            charge += len(key) + len(value) + ENTRY_OVERHEAD
            seq += 1
        self.approx_bytes += charge
        self._sorted = None

    def get(self, key: bytes) -> tuple[int, int, bytes] | None:
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
