"""The engine: public API, write path, read path and recovery.

Concurrency model
-----------------
``_mu`` guards the write path: sequence numbers, the current WAL, memtable
switches. Everything a reader needs is one tuple, ``_state = (memtable,
immutable memtables newest first, version)``, replaced whole under ``_mu``;
readers take it with a single attribute read and never lock.

Background work runs in :mod:`lsm.jobs` on two threads (flush, compaction)
plus a WAL syncer in ``interval`` mode. Lock order: ``_manifest_lock`` ->
``_mu`` -> ``_sync_lock``. Threads may hold ``_mu`` across I/O (a writer
switching to a new WAL creates it and syncs the directory, ``close`` syncs
the WALs), so the calls for an event loop (``try_write``, ``get_cached``)
never wait for it: they try it without blocking, or read ``_state`` only.

Failure model
-------------
A failed write to disk (ENOSPC, EIO) latches ``_error`` and the engine turns
read-only: writes raise that error, reads go on. A WAL failure is retried by
the next write (at most every ``_RESUME_INTERVAL_S``) by rolling to a fresh
WAL; a flush or compaction failure is retried by its thread with backoff.
The first success clears the latch, so writes resume without a restart.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from lsm import filenames
from lsm.batch import WriteBatch
from lsm.cache import BlockCache
from lsm.errors import (
    ClosedError,
    CorruptionError,
    InvalidArgumentError,
    StorageIOError,
)
from lsm.filenames import FileType
from lsm.iterators import live_items, merge_newest, merge_resolving
from lsm.jobs import Jobs
from lsm.keys import KIND_DELETE, KIND_MERGE, KIND_VALUE, MAX_KEY_BYTES, MAX_VALUE_BYTES, Entry, Op
from lsm.lookup import NeedsRead, State, lookup
from lsm.manifest import ManifestWriter, VersionEdit, read_current, read_manifest, set_current
from lsm.memtable import MemTable
from lsm.merging import NOT_CACHED, NotCached
from lsm.options import Options
from lsm.recovery import recover
from lsm.stats import collect as collect_stats
from lsm.table_cache import TableCache
from lsm.version import LsmVersion
from lsm.wal import WalWriter, encode_batch

log = logging.getLogger("lsm.db")

_RESUME_INTERVAL_S = 0.05



class DB:
    """An open LSM database. Thread-safe; one process per directory."""

    def __init__(self, path: str, options: Options) -> None:
        # Use DB.open(); the constructor only sets fields.
        self.path = path
        self.options = options
        self.fs = options.fs
        self._mu = threading.Lock()
        self._cv = threading.Condition(self._mu)
        self._sync_lock = threading.Lock()
        self._manifest_lock = threading.Lock()
        self._compaction_lock = threading.Lock()
        self._state: State
        self._wals: dict[int, WalWriter] = {}
        self._wal: WalWriter
        self._wal_good = 0  # bytes of the current WAL known to hold whole records
        self._synced: dict[int, int] = {}
        self._last_seq = 0
        self._next_file = 2
        self._manifest: ManifestWriter
        self._manifest_broken = False
        self._log_number = 0  # WALs below this number are obsolete
        self._pointers: dict[int, bytes] = {}
        self._pins: Counter[int] = Counter()
        self._obsolete_tables: set[int] = set()
        self._error: StorageIOError | None = None
        self._error_source = ""
        self._last_resume = 0.0
        self._closed = False
        self._closing = False
        self.block_cache = BlockCache(options.block_cache_bytes)
        self.tables = TableCache(self.fs, path, self.block_cache)
        self._lock_handle: Any = None
        self.counters: Counter[str] = Counter()
        self._jobs = Jobs(self)

    # -- lifecycle ------------------------------------------------------------
    @classmethod
    def open(cls, path: str, options: Options | None = None) -> DB:
        """Open (or create) the database at ``path``; returns once the WAL has
        been replayed, i.e. when the database is ready to serve."""
        options = options or Options()
        options.validate()
        db = cls(path, options)
        db.fs.mkdirs(path)
        db._lock_handle = db.fs.lock(os.path.join(path, filenames.LOCK))
        try:
            recover(db)
        except BaseException:
            db.tables.close()
            db._lock_handle.release()
            raise
        db._jobs.start()
        return db

    def close(self) -> None:
        """Stop background work, sync the WAL and release the directory.
        Unflushed memtables stay in their WALs and are replayed on open."""
        with self._mu:
            if self._closed:
                return
            self._closing = True
            self._cv.notify_all()
        self._jobs.stop()
        with self._mu, self._sync_lock:
            self._closed = True
            for wal in self._wals.values():
                try:
                    wal.sync()
                    wal.close()
                except StorageIOError as exc:
                    log.warning("closing %s: %s", self.path, exc)
            self._wals.clear()
        try:
            self._manifest.close()
        except StorageIOError as exc:  # every edit was synced when appended
            log.warning("closing %s: %s", self.path, exc)
        self.tables.close()
        self._lock_handle.release()

    def kill(self) -> None:
        """Test kit: stop like a killed process would. Background threads end,
        nothing is synced or closed, the directory lock is let go (as the
        kernel does for a dead process); what reached the file system stays.
        Pair with ``FaultFileSystem.crash()`` for a power cut."""
        with self._mu:
            self._closing = True
            self._cv.notify_all()
        self._jobs.stop()
        self._closed = True
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

    # -- writes ---------------------------------------------------------------
    def put(self, key: bytes, value: bytes) -> None:
        _check_key(key)
        _check_value(value)
        self._write([(KIND_VALUE, key, value)], False)

    def delete(self, key: bytes) -> None:
        _check_key(key)
        self._write([(KIND_DELETE, key, b"")], False)

    def merge(self, key: bytes, operand: bytes) -> None:
        """Apply ``operand`` to the value of ``key`` with
        ``Options.merge_operator`` (lsm.merging), without reading it."""
        _check_key(key)
        _check_value(operand)
        self._check_merge_operator()
        self._write([(KIND_MERGE, key, operand)], True)

    def write(self, batch: WriteBatch) -> None:
        """Apply every operation of ``batch`` atomically (one WAL record)."""
        if not len(batch):
            return
        self._write(list(batch.ops), self._check_batch(batch))

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
        opts = self.options
        if opts.fsync == "always":
            return False
        mu = self._mu
        if not mu.acquire(blocking=False):
            self.counters["try_write_refused"] += 1
            return False
        try:
            mem, _, version = self._state
            if (
                self._error is not None or self._closed or self._closing
                or mem.approx_bytes >= opts.memtable_bytes
                or len(version.levels[0]) >= opts.l0_slowdown_trigger
            ):
                self.counters["try_write_refused"] += 1
                return False
            self._append(mem, list(batch.ops), merges)
        finally:
            mu.release()
        return True

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
        if self.options.merge_operator is None:
            raise InvalidArgumentError(
                f"merge needs a merge operator: open {self.path} with Options.merge_operator set"
            )

    def _write(self, ops: list[Op], merges: bool) -> None:
        with self._mu:
            if self._error is not None or self._closed:
                self._check_writable()
            mem = self._state[0]
            if mem.approx_bytes >= self.options.memtable_bytes or self._l0_pressure():
                self._make_room()
                mem = self._state[0]
            wal = self._append(mem, ops, merges)
            target = self._wal_good
        if self.options.fsync == "always":
            self.sync_wal(wal.number, target)
        elif (
            self.options.fsync == "interval"
            and 0 < self.options.wal_bytes_per_sync <= target - self._synced.get(wal.number, 0)
        ):
            self._jobs.wake_syncer()

    def _append(self, mem: MemTable, ops: list[Op], merges: bool) -> WalWriter:
        """Log ``ops`` in the WAL and apply them to ``mem`` (``_mu`` held).
        Merge operands are combined before anything is logged, so an
        operator that raises leaves no trace."""
        seq = self._last_seq + 1
        staged = mem.stage(seq, ops) if merges else None
        wal = self._wal
        try:
            wal.append([encode_batch(seq, ops)])
            wal.flush()
        except StorageIOError as exc:
            wal.discard_buffer()
            self._latch(exc, "wal")
            raise
        self._last_seq = seq + len(ops) - 1
        if staged is None:
            mem.add_batch(seq, ops)
        else:
            mem.commit(staged, ops)
        self._wal_good = wal.size()
        return wal

    def sync_wal(self, number: int, upto: int) -> None:
        """Group commit: make the WAL durable up to ``upto``. Whoever gets the
        lock fsyncs everything flushed so far; writers queued behind it usually
        find their bytes already covered."""
        with self._sync_lock:
            try:
                self._sync_locked(number, upto)
            except StorageIOError as exc:
                with self._mu:
                    self._latch(exc, "wal")
                raise

    def _sync_locked(self, number: int, upto: int) -> None:
        """fsync WAL ``number`` unless ``upto`` bytes are already covered
        (``_sync_lock`` held)."""
        if self._synced.get(number, -1) >= upto:
            return
        wal = self._wals.get(number)
        if wal is None:  # rotated out and synced by the flush job
            return
        covered = wal.flushed_size  # not size(): buffered bytes are not covered
        start = time.perf_counter()
        wal.sync_flushed()
        self.counters["wal_syncs"] += 1
        self.counters["wal_sync_us"] += int((time.perf_counter() - start) * 1e6)
        self._synced[number] = covered

    def sync(self) -> None:
        """Make durable everything that writes have handed to the OS so far,
        in every live WAL. For callers that acknowledge something they did
        not write themselves (an idempotent retry that found its value
        already there) under ``fsync="always"``."""
        with self._sync_lock:
            wals = [(number, wal.flushed_size) for number, wal in self._wals.items()]
        for number, upto in wals:
            self.sync_wal(number, upto)

    def sync_current_wal(self) -> None:
        """One tick of the ``interval`` syncer: fsync what the current WAL
        has handed to the OS."""
        wal = self._wal
        self.sync_wal(wal.number, wal.flushed_size)

    def _l0_pressure(self) -> bool:
        return len(self._state[2].levels[0]) >= self.options.l0_slowdown_trigger

    def _make_room(self) -> None:
        """Called with ``_mu`` held before a write: slow down or stop while
        level 0 is over its triggers, and switch a full memtable."""
        opts = self.options
        slowed = False
        stall_start: float | None = None
        try:
            while True:
                self._check_writable()
                mem, imms, version = self._state
                l0 = len(version.levels[0])
                if l0 >= opts.l0_stop_trigger or (
                    mem.approx_bytes >= opts.memtable_bytes
                    and len(imms) >= opts.max_immutable_memtables
                ):
                    if stall_start is None:
                        stall_start = time.perf_counter()
                        self.counters["write_stalls"] += 1
                    self._jobs.wake()
                    self._cv.wait(0.1)
                    continue
                if l0 >= opts.l0_slowdown_trigger and not slowed:
                    slowed = True
                    self.counters["write_slowdowns"] += 1
                    self._cv.wait(opts.slowdown_sleep_s)
                    continue
                if mem.approx_bytes >= opts.memtable_bytes:
                    self._switch_memtable()
                return
        finally:
            if stall_start is not None:
                self.counters["stall_us"] += int((time.perf_counter() - stall_start) * 1e6)

    def _switch_memtable(self) -> None:
        """Start a new memtable and WAL (``_mu`` held). The old WAL is closed
        by the flush job once its memtable is on disk.

        Unless fsync is "never", the old WAL is synced first: the new one's
        records must not become durable (by the syncer, or by the OS writing
        pages back in any order) while older acknowledged records are not,
        or a power cut would leave a hole in the middle of the history."""
        old = self._wal
        number = self._new_file_number()
        path = filenames.wal_path(self.path, number)
        try:
            if self.options.fsync != "never":
                with self._sync_lock:
                    self._sync_locked(old.number, old.flushed_size)
            f = self.fs.create(path)
            self.fs.sync_dir(self.path)
        except StorageIOError as exc:
            self._latch(exc, "wal")
            raise
        wal = WalWriter(f, number)
        with self._sync_lock:
            self._wals[number] = wal
        self._wal = wal
        self._wal_good = 0
        mem, imms, version = self._state
        self._state = (MemTable(number, self.options.merge_operator), (mem, *imms), version)
        self._jobs.wake()

    def _new_file_number(self) -> int:
        number = self._next_file
        self._next_file += 1
        return number

    def new_file_number(self) -> int:
        with self._mu:
            return self._new_file_number()

    # -- error latch ----------------------------------------------------------
    def _latch(self, exc: StorageIOError, source: str) -> None:
        if self._error is None:
            log.error("%s: turning read-only after %s failure: %s", self.path, source, exc)
            self.counters["bg_errors" if source != "wal" else "wal_errors"] += 1
        self._error = exc
        self._error_source = source
        self._cv.notify_all()

    def latch_error(self, exc: StorageIOError, source: str) -> None:
        with self._mu:
            self._latch(exc, source)

    def clear_error(self, source: str) -> None:
        with self._mu:
            if self._error is not None and self._error_source == source:
                log.warning("%s: writes resume (%s recovered)", self.path, source)
                self._error = None
                self._cv.notify_all()

    def _check_writable(self) -> None:
        if self._closed or self._closing:
            raise ClosedError(f"database {self.path} is closed")
        err = self._error
        if err is None:
            return
        now = time.monotonic()
        if self._error_source == "wal" and now - self._last_resume >= _RESUME_INTERVAL_S:
            self._last_resume = now
            self._resume_wal()
            if self._error is None:
                return
        raise type(err)(f"database is read-only: {err}", err.errno)

    def _resume_wal(self) -> None:
        """After a failed WAL write: cut the partial record off the old WAL and
        start a new one. Whatever fails leaves the latch set."""
        old = self._wal
        try:
            old.discard_buffer()
            self.fs.truncate(old.path, self._wal_good)
            self._switch_memtable()
        except StorageIOError as exc:
            self._error = exc
            return
        log.warning("%s: writes resume on WAL %d", self.path, self._wal.number)
        self._error = None

    # -- reads ----------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or ``None`` if absent or deleted."""
        if self._closed:
            raise ClosedError(f"database {self.path} is closed")
        while True:
            state = self._state
            try:
                return lookup(state, self.tables, self.options.merge_operator, key, False)
            except (StorageIOError, FileNotFoundError):
                # A compaction may have deleted a file of the version we read;
                # retry on the newer version, or fail if nothing changed.
                if self._state[2] is state[2]:
                    raise

    def get_cached(self, key: bytes) -> bytes | NotCached | None:
        """:meth:`get` for a caller on an event loop: the answer if the
        memtables, bloom filters and block cache give it without reading a
        file, else ``lsm.NOT_CACHED`` (then call :meth:`get` from a thread,
        which reads the blocks and leaves them cached). Never waits on a
        lock or the disk."""
        if self._closed:
            raise ClosedError(f"database {self.path} is closed")
        try:
            return lookup(self._state, self.tables, self.options.merge_operator, key, True)
        except NeedsRead:
            self.counters["get_not_cached"] += 1
            return NOT_CACHED

    def scan(
        self, start: bytes | None = None, end: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Live ``(key, value)`` pairs with ``start <= key < end`` in key order,
        as of the call. Files the scan reads are pinned until it finishes."""
        return live_items(self.scan_entries(start), end)

    def scan_entries(self, start: bytes | None = None) -> Iterator[Entry]:
        """Raw merged entries (tombstones included) from ``start``."""
        if self._closed:
            raise ClosedError(f"database {self.path} is closed")
        with self._mu:
            mem, imms, version = self._state
            mem_entries = mem.entries()
            pinned = [f.number for files in version.levels for f in files]
            self._pins.update(pinned)
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
            sources: list[Any] = [_from(mem_entries, start)]
            sources += [_from(imm.entries(), start) for imm in imms]
            for f in version.levels[0]:
                sources.append(self.tables.get(f.number).iter(start))
            for level in range(1, len(version.levels)):
                files = [f for f in version.levels[level] if start is None or f.largest >= start]
                if files:
                    sources.append(self._level_iter(files, start))
            op = self.options.merge_operator
            if op is None:
                yield from merge_newest(sources)
            else:
                yield from merge_resolving(sources, op, bottom=True)
        finally:
            self.unpin(pinned)

    def _level_iter(self, files: list[Any], start: bytes | None) -> Iterator[Entry]:
        for f in files:
            yield from self.tables.get(f.number).iter(start)

    def unpin(self, numbers: list[int]) -> None:
        with self._mu:
            self._pins.subtract(numbers)
            self._pins += Counter()  # drop zero counts
        self._jobs.delete_obsolete_tables()

    # -- maintenance ----------------------------------------------------------
    def flush(self) -> None:
        """Write the memtable to a level-0 table and wait until it is there."""
        with self._mu:
            self._check_writable()
            mem, imms, _ = self._state
            waiting = list(imms)
            if len(mem):
                self._switch_memtable()
                waiting.append(mem)
            while any(m is w for m in self._state[1] for w in waiting):
                if self._error is not None:
                    raise type(self._error)(str(self._error), self._error.errno)
                if self._closing:
                    raise ClosedError(f"database {self.path} is closed")
                self._jobs.wake()
                self._cv.wait(0.1)

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
        deadline = time.monotonic() + timeout
        with self._mu:
            while self._state[1] or self._jobs.compaction_due() or self._jobs.busy:
                if self._error is not None:
                    raise type(self._error)(str(self._error), self._error.errno)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"compactions of {self.path} still running")
                self._jobs.wake()
                self._cv.wait(min(remaining, 0.05))

    def stats(self) -> dict[str, Any]:
        return collect_stats(self)

    # -- used by jobs and recovery ---------------------------------------------
    def install(self, edit: VersionEdit, flushed: MemTable | None = None) -> LsmVersion:
        """Log ``edit`` durably in the manifest and make it the current version."""
        with self._manifest_lock:
            new_version = self._state[2].apply(edit)
            if edit.log_number is not None:
                log_number = max(self._log_number, edit.log_number)
            else:
                log_number = self._log_number
            if self._manifest_broken:
                self._roll_manifest(new_version, log_number)
            else:
                try:
                    self._manifest.append(edit)
                except StorageIOError:
                    self._manifest_broken = True
                    raise
            self._log_number = log_number
            with self._mu:
                mem, imms, _ = self._state
                if flushed is not None:
                    imms = tuple(m for m in imms if m is not flushed)
                self._state = (mem, imms, new_version)
                for level, key in edit.compact_pointers:
                    self._pointers[level] = key
                self._cv.notify_all()
        return new_version

    def _roll_manifest(self, version: LsmVersion, log_number: int) -> None:
        """Start a new manifest holding a snapshot of ``version``, because the
        last append to the old one failed and may have left a partial frame.
        ``_manifest_lock`` held."""
        number = self.new_file_number()
        old = self._manifest
        self._manifest = ManifestWriter.create(
            self.fs, self.path, number, [self.snapshot_edit(version, log_number)]
        )
        set_current(self.fs, self.path, number)
        self._manifest_broken = False
        try:
            old.close()
            self.fs.remove(old.path)
        except (StorageIOError, FileNotFoundError) as exc:  # removed on the next open
            log.warning("could not remove old manifest %s: %s", old.path, exc)
        log.warning("%s: switched to manifest %d after a failed append", self.path, number)

    def snapshot_edit(self, version: LsmVersion, log_number: int) -> VersionEdit:
        op = self.options.merge_operator
        return VersionEdit(
            log_number=log_number,
            next_file_number=self._next_file,
            last_seq=self._last_seq,
            added=tuple((n, f) for n, files in enumerate(version.levels) for f in files),
            compact_pointers=tuple(sorted(self._pointers.items())),
            merge_operator=None if op is None else op.name,
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
