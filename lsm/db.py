"""The engine's public API (LevelDB's DB), a façade over the parts that own
its state:

=========================  ===================================================
:mod:`lsm.write_path`      sequence numbers, the current WAL, the memtables,
                           write stalls, the error latch; the readers' state
:mod:`lsm.version_set`     the current version, the manifest, file numbers,
                           the log number, compaction pointers
:mod:`lsm.wal_set`         the live WAL files, group commit
:mod:`lsm.jobs`            flush, compaction and WAL-sync threads
:mod:`lsm.table_cache`     open tables; which tables may be deleted
:mod:`lsm.recovery`        builds the version set and the write path's start
=========================  ===================================================

Each part counts its own events; :meth:`DB.stats` adds the counts up. The
options are frozen: :meth:`DB.set_options` swaps in a validated copy and
hands it to the parts that read run-time knobs (write path, jobs).

Reads take the write path's ``state`` (memtable, immutable memtables,
version) with one attribute read and never lock (:mod:`lsm.lookup`).

Lock order
----------
A thread holding one of these locks takes only locks further down the list::

    Jobs._compaction_lock     a whole compaction: pick, run, install
    VersionSet._lock          manifest append, then publish to the write path
    WritePath._mu (+ _cv)     the write path and the readers' state
    WalSet._lock              the WAL set; held across each fsync

Below them all, and taking none of them: ``VersionSet._numbers`` (the
file-number counter), ``TableCache._pins_lock`` (table pins), the table and
block caches' locks, ``Jobs._idle`` (pause) and ``DB._options_lock``
(:meth:`DB.set_options`). Each part's module says what it calls under its
own lock.

Threads hold ``WritePath._mu`` across I/O (a memtable switch syncs the tail
the old WAL took while it was being synced, ``close`` syncs the WALs; the
switch lets the lock go for the rest of its I/O), so the calls
for an event loop (``try_write``, ``get_cached``) never wait for it: they try
it without blocking, or read the state only.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from lsm import filenames
from lsm.batch import WriteBatch
from lsm.cache import BlockCache
from lsm.errors import ClosedError, CorruptionError, InvalidArgumentError, StorageIOError
from lsm.filenames import FileType
from lsm.fs import FileLock
from lsm.iterators import live_items, merge_newest, merge_resolving
from lsm.jobs import Jobs
from lsm.keys import KIND_DELETE, KIND_MERGE, KIND_VALUE, MAX_KEY_BYTES, MAX_VALUE_BYTES, Entry
from lsm.lookup import NeedsRead, lookup
from lsm.manifest import FileMeta, read_current, read_manifest, set_current
from lsm.memtable import MemTable
from lsm.merging import NOT_CACHED, NotCached
from lsm.options import Options
from lsm.recovery import Recovered, recover
from lsm.stats import collect as collect_stats
from lsm.table_cache import TableCache
from lsm.version import LsmVersion
from lsm.wal_set import WalSet
from lsm.write_path import WritePath


class DB:
    """An open LSM database. Thread-safe; one process per directory."""

    def __init__(
        self, path: str, options: Options, lock: FileLock, recovered: Recovered
    ) -> None:
        # Use DB.open(); this assembles the parts from what recovery built.
        self.path = path
        self._options = options
        self._options_lock = threading.Lock()
        self._lock_handle = lock
        self._counters: Counter[str] = Counter()  # reads the event loop sent to a thread
        self._block_cache = BlockCache(options.block_cache_bytes)
        self._tables = TableCache(options.fs, path, self._block_cache)
        self._versions = recovered.versions
        self._wals = WalSet(recovered.wals)
        self._jobs = Jobs(
            path, options,
            versions=self._versions, wals=self._wals, tables=self._tables,
        )
        self._writes = WritePath(
            path, options, self._versions, self._wals,
            wal=recovered.wal,
            state=(recovered.memtable, recovered.immutables, self._versions.current),
            last_seq=recovered.last_seq,
            wake=self._jobs.wake,
            wake_syncer=self._jobs.wake_syncer,
        )

    # -- lifecycle ------------------------------------------------------------
    @classmethod
    def open(cls, path: str, options: Options | None = None) -> DB:
        """Open (or create) the database at ``path``; returns once the WAL has
        been replayed, i.e. when the database is ready to serve."""
        options = options or Options()
        options.validate()
        fs = options.fs
        fs.mkdirs(path)
        lock = fs.lock(os.path.join(path, filenames.LOCK))
        try:
            recovered = recover(options, path)
        except BaseException:
            lock.release()
            raise
        db = cls(path, options, lock, recovered)
        db._jobs.start(db._writes)
        return db

    def close(self) -> None:
        """Stop background work, sync the WAL and release the directory.
        Unflushed memtables stay in their WALs and are replayed on open."""
        if not self._writes.begin_close():
            return
        self._jobs.stop()
        self._writes.close()
        self._versions.close()
        self._tables.close()
        self._lock_handle.release()

    def kill(self) -> None:
        """Test kit: stop like a killed process would. Background threads end,
        nothing is synced or closed, the directory lock is let go (as the
        kernel does for a dead process); what reached the file system stays.
        Pair with ``FaultFileSystem.crash()`` for a power cut."""
        self._writes.begin_close()
        self._jobs.stop()
        self._writes.abandon()
        self._lock_handle.release()

    def __enter__(self) -> DB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- options --------------------------------------------------------------
    @property
    def options(self) -> Options:
        return self._options

    def set_options(self, **changes: Any) -> None:
        """Change knobs of the open database (``lsm.options.RUNTIME_OPTIONS``:
        memtable size, level-0 triggers, level sizes, compaction filter...);
        each takes effect at its next use. Raises InvalidArgumentError, with
        nothing changed, for a knob fixed at open or a bad value."""
        with self._options_lock:
            options = self._options.changed(**changes)
            self._options = options
            self._writes.reconfigure(options)
            self._jobs.reconfigure(options)

    # -- writes ---------------------------------------------------------------
    def put(self, key: bytes, value: bytes) -> None:
        _check_key(key)
        _check_value(value)
        self._writes.write([(KIND_VALUE, key, value)], False)

    def delete(self, key: bytes) -> None:
        _check_key(key)
        self._writes.write([(KIND_DELETE, key, b"")], False)

    def merge(self, key: bytes, operand: bytes) -> None:
        """Apply ``operand`` to the value of ``key`` with
        ``Options.merge_operator`` (lsm.merging), without reading it."""
        _check_key(key)
        _check_value(operand)
        self._check_merge_operator()
        self._writes.write([(KIND_MERGE, key, operand)], True)

    def write(self, batch: WriteBatch) -> None:
        """Apply every operation of ``batch`` atomically (one WAL record)."""
        if not len(batch):
            return
        self._writes.write(list(batch.ops), self._check_batch(batch))

    def try_write(self, batch: WriteBatch) -> bool:
        """:meth:`write` for a caller on an event loop: applies ``batch`` and
        returns True only if that needs no waiting: the write lock is free
        (threads hold it across I/O), no fsync of its own (``fsync="always"``
        refuses), the memtable has room without switching to a new WAL, level
        0 is below the slowdown trigger, and the engine is not read-only. The
        WAL append (a ``write(2)`` to the page cache) is done. Otherwise
        returns False having applied nothing: call :meth:`write` from a
        thread. Bad input raises as :meth:`write` does."""
        if not len(batch):
            return True
        merges = self._check_batch(batch)
        return self._writes.try_write(list(batch.ops), merges)

    def _check_batch(self, batch: WriteBatch) -> bool:
        """Validate every operation; True if the batch holds merge operands."""
        merges = False
        for kind, key, value in batch.ops:
            _check_key(key)
            if kind != KIND_DELETE:
                _check_value(value)
                if kind == KIND_MERGE:
                    merges = True
        if merges:
            self._check_merge_operator()
        return merges

    def _check_merge_operator(self) -> None:
        if self._options.merge_operator is None:
            raise InvalidArgumentError(
                f"merge needs a merge operator: open {self.path} with Options.merge_operator set"
            )

    def sync(self) -> None:
        """Make durable everything that writes have handed to the OS so far,
        in every live WAL. For callers that acknowledge something they did
        not write themselves (an idempotent retry that found its value
        already there) under ``fsync="always"``."""
        self._writes.sync_all()

    def sync_current_wal(self) -> None:
        """One tick of the ``interval`` syncer: fsync what the current WAL
        has handed to the OS."""
        self._writes.sync_current_wal()

    def new_file_number(self) -> int:
        return self._versions.new_file_number()

    # -- reads ----------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or ``None`` if absent or deleted."""
        writes = self._writes
        if writes.closed:
            raise ClosedError(f"database {self.path} is closed")
        while True:
            state = writes.state
            try:
                return lookup(state, self._tables, self._options.merge_operator, key, False)
            except (StorageIOError, FileNotFoundError):
                # A compaction may have deleted a file of the version we read;
                # retry on the newer version, or fail if nothing changed.
                if writes.state[2] is state[2]:
                    raise

    def get_cached(self, key: bytes) -> bytes | NotCached | None:
        """:meth:`get` for a caller on an event loop: the answer if the
        memtables, bloom filters and block cache give it without reading a
        file, else ``lsm.NOT_CACHED`` (then call :meth:`get` from a thread,
        which reads the blocks and leaves them cached). Never waits on a
        lock or the disk."""
        writes = self._writes
        if writes.closed:
            raise ClosedError(f"database {self.path} is closed")
        try:
            return lookup(writes.state, self._tables, self._options.merge_operator, key, True)
        except NeedsRead:
            self._counters["get_not_cached"] += 1
            return NOT_CACHED

    def scan(
        self, start: bytes | None = None, end: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Live ``(key, value)`` pairs with ``start <= key < end`` in key order,
        as of the call. Files the scan reads are pinned until it finishes."""
        return live_items(self.scan_entries(start), end)

    def scan_entries(self, start: bytes | None = None) -> Iterator[Entry]:
        """Raw merged entries (tombstones included) from ``start``."""
        if self._writes.closed:
            raise ClosedError(f"database {self.path} is closed")
        mem_entries, imms, version, pinned = self._writes.scan_sources(self._tables.pin)
        return self._scan(mem_entries, imms, version, start, pinned)

    def _scan(
        self,
        mem_entries: list[Entry],
        imms: tuple[MemTable, ...],
        version: LsmVersion,
        start: bytes | None,
        pinned: list[int],
    ) -> Iterator[Entry]:
        try:
            sources: list[Iterable[Entry]] = [_from(mem_entries, start)]
            sources += [_from(imm.entries(), start) for imm in imms]
            for f in version.levels[0]:
                sources.append(self._tables.get(f.number).iter(start))
            for level in range(1, len(version.levels)):
                files = [f for f in version.levels[level] if start is None or f.largest >= start]
                if files:
                    sources.append(self._level_iter(files, start))
            op = self._options.merge_operator
            if op is None:
                yield from merge_newest(sources)
            else:
                yield from merge_resolving(sources, op, bottom=True)
        finally:
            self._tables.unpin(pinned)
            self._jobs.delete_obsolete_tables()

    def _level_iter(self, files: list[FileMeta], start: bytes | None) -> Iterator[Entry]:
        for f in files:
            yield from self._tables.get(f.number).iter(start)

    # -- maintenance ----------------------------------------------------------
    def flush(self) -> None:
        """Write the memtable to a level-0 table and wait until it is there."""
        self._writes.flush()

    def compact_range(
        self, start: bytes | None = None, end: bytes | None = None, *, bottommost: bool = False
    ) -> None:
        """Flush, then merge every level's files overlapping [start, end] down
        to the deepest non-empty level, dropping overwritten versions and
        tombstones there. With ``bottommost``, also rewrite the overlapping
        files of that deepest level in place, so the compaction filter sees
        data that was already at the bottom."""
        self.flush()
        self._jobs.compact_range(start, end, bottommost)

    def pause_background_work(self) -> None:
        """Let running flushes and compactions finish and start no new ones
        until ``continue_background_work()`` (RocksDB's PauseBackgroundWork).
        Meanwhile immutable memtables pile up and writes stall once
        ``max_immutable_memtables`` wait; ``flush()`` and ``compact_range()``
        wait too. Tests use it to hold the flush back, as a slow disk does."""
        self._jobs.pause()

    def continue_background_work(self) -> None:
        self._jobs.resume()

    def wait_for_compactions(self, timeout: float = 600.0) -> None:
        """Block until no flush or compaction is due (or ``timeout``)."""
        self._writes.wait_for_background(self._jobs.has_work, timeout)

    def stats(self) -> dict[str, Any]:
        return collect_stats(
            path=self.path, options=self._options, writes=self._writes, wals=self._wals,
            tables=self._tables, block_cache=self._block_cache,
            counters=(
                self._counters, self._writes.counters, self._wals.counters, self._jobs.counters
            ),
        )


def _check_value(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidArgumentError(f"value too large ({len(value)} > {MAX_VALUE_BYTES} bytes)")


def _check_key(key: bytes) -> None:
    if type(key) is not bytes:
        raise InvalidArgumentError(f"keys are bytes, not {type(key).__name__}")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidArgumentError(f"key too large ({len(key)} > {MAX_KEY_BYTES} bytes)")


def _from(entries: list[Entry], start: bytes | None) -> Iterator[Entry]:
    if start is None:
        return iter(entries)
    i = bisect.bisect_left(entries, (start,))
    return iter(entries[i:])


__all__ = [
    "DB",
    "CorruptionError",
    "FileType",
    "read_current",
    "read_manifest",
    "set_current",
]
