"""The live WAL files and group commit.

A :class:`WalSet` holds the open WAL of every memtable that is not on disk
yet: the current one, which takes the writes, and those of the immutable
memtables waiting for a flush. It remembers how much of each an fsync has
covered, so that writers queued behind one fsync find their bytes durable
and return without another (group commit).

``_lock`` guards the set and the sync marks and is held across each fsync;
nothing else is taken under it (it is the innermost lock, see lsm.db). A
failed fsync is raised to the caller, which latches it once the lock is
released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable

from lsm.errors import StorageIOError
from lsm.wal import WalWriter

log = logging.getLogger("lsm.wal_set")


class WalSet:
    def __init__(self, wals: Iterable[WalWriter]) -> None:
        self._lock = threading.Lock()
        self._wals = {wal.number: wal for wal in wals}
        self._synced: dict[int, int] = {}
        self._counters: Counter[str] = Counter()  # fsyncs and their time

    @property
    def counters(self) -> Counter[str]:
        return self._counters

    def add(self, wal: WalWriter) -> None:
        with self._lock:
            self._wals[wal.number] = wal

    def synced(self, number: int) -> int:
        """Bytes of WAL ``number`` an fsync covered (a hint: read unlocked)."""
        return self._synced.get(number, 0)

    def sync(self, number: int, upto: int) -> None:
        """fsync WAL ``number`` unless its first ``upto`` bytes are covered.
        Whoever gets the lock syncs everything handed to the OS so far."""
        with self._lock:
            if self._synced.get(number, -1) >= upto:
                return
            wal = self._wals.get(number)
            if wal is None:  # retired: synced by the flush of its memtable
                return
            covered = wal.flushed_size  # not size(): buffered bytes are not covered
            start = time.perf_counter()
            wal.sync_flushed()
            self._counters["wal_syncs"] += 1
            self._counters["wal_sync_us"] += int((time.perf_counter() - start) * 1e6)
            self._synced[number] = covered

    def flushed_sizes(self) -> list[tuple[int, int]]:
        """``(number, bytes handed to the OS)`` of every live WAL."""
        with self._lock:
            return [(number, wal.flushed_size) for number, wal in self._wals.items()]

    def sync_all_of(self, number: int) -> None:
        """fsync WAL ``number`` whole, before its memtable is flushed."""
        with self._lock:
            wal = self._wals.get(number)
            if wal is not None:
                wal.sync()

    def retire(self, number: int) -> None:
        """Close WAL ``number``: its memtable is in a table now."""
        with self._lock:
            wal = self._wals.pop(number, None)
            self._synced.pop(number, None)
        if wal is not None:
            wal.close()

    def close(self, path: str) -> None:
        """Sync and close every WAL (on close of the database at ``path``)."""
        with self._lock:
            for wal in self._wals.values():
                try:
                    wal.sync()
                    wal.close()
                except StorageIOError as exc:
                    log.warning("closing %s: %s", path, exc)
            self._wals.clear()

    def count(self) -> int:
        return len(self._wals)

    def total_bytes(self) -> int:
        return sum(wal.size() for wal in list(self._wals.values()))
