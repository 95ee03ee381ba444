"""The write path: sequence numbers, the current WAL, the memtables, write
stalls and the error latch (the part of LevelDB's DBImpl that writes).

``_mu`` guards all of it. What a reader needs is one tuple, :attr:`state`
``= (memtable, immutable memtables newest first, version)``, replaced whole
under ``_mu`` and read without a lock. New versions come from the
:class:`~lsm.version_set.VersionSet` (through :meth:`install_version`, called
under its lock); WAL files and their fsyncs belong to the
:class:`~lsm.wal_set.WalSet`, called under ``_mu``. Threads may hold ``_mu``
across I/O (a switch to a new WAL syncs what writes added to the old one
while it was being synced; recovery from a WAL failure, ``close``), so
:meth:`try_write` only tries it. The engine's lock order is written in
lsm.db.

Switching memtables: the thread that switches lets ``_mu`` go while it
syncs the old WAL and creates and syncs the new one, so writers keep
appending to the old WAL and memtable meanwhile (up to twice its size);
then, under ``_mu`` again, it syncs what they added (nothing if none came)
and installs the new ones. The old WAL is durable before the new one
receives a byte, as before; a put waits for that last sync only, not for
the whole switch (which a compaction's flush forces on every worker).

Failure model: a failed write to disk (ENOSPC, EIO) latches ``_error`` and
writes raise it until the failed part recovers; reads go on. A WAL failure
is retried by the next write (at most every ``_RESUME_INTERVAL_S``) by
rolling to a fresh WAL; a flush or compaction failure is retried by its
thread (lsm.jobs), whose first success clears the latch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from lsm import filenames
from lsm.errors import ClosedError, StorageIOError
from lsm.fs import WritableFile
from lsm.keys import Entry, Op
from lsm.lookup import State
from lsm.memtable import MemTable
from lsm.options import Options
from lsm.version import LsmVersion
from lsm.version_set import VersionSet
from lsm.wal import WalWriter, encode_batch
from lsm.wal_set import WalSet

log = logging.getLogger("lsm.write_path")

_RESUME_INTERVAL_S = 0.05


class WritePath:
    def __init__(
        self,
        path: str,
        options: Options,
        versions: VersionSet,
        wals: WalSet,
        *,
        wal: WalWriter,
        state: State,
        last_seq: int,
        wake: Callable[[], None],
        wake_syncer: Callable[[], None],
    ) -> None:
        self._path = path
        self._options = options
        self._fs = options.fs
        self._versions = versions
        self._wals = wals
        self._counters: Counter[str] = Counter()  # stalls, refusals, errors
        self._wake = wake  # background work: a memtable waits, or writers stall
        self._wake_syncer = wake_syncer
        self._mu = threading.Lock()
        self._cv = threading.Condition(self._mu)
        self._state = state
        self._wal = wal
        self._wal_good = 0  # bytes of the current WAL known to hold whole records
        self._last_seq = last_seq
        self._error: StorageIOError | None = None
        self._error_source = ""
        self._last_resume = 0.0
        self._closing = False
        self._closed = False
        self._switching = False  # a thread is switching memtables, _mu let go

    # -- read-only views ------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def error(self) -> StorageIOError | None:
        return self._error

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def counters(self) -> Counter[str]:
        return self._counters

    def reconfigure(self, options: Options) -> None:
        """Use ``options`` (run-time knobs changed) from the next write on;
        stalled writers look again within their 0.1 s wait."""
        self._options = options

    # -- writes ---------------------------------------------------------------
    def write(self, ops: list[Op], merges: bool) -> None:
        with self._mu:
            if self._error is not None or self._closed:
                self._check_writable()
            mem = self._state[0]
            if mem.approx_bytes >= self._options.memtable_bytes or self._l0_pressure():
                self._make_room()
                mem = self._state[0]
            wal = self._append(mem, ops, merges)
            target = self._wal_good
        opts = self._options
        if opts.fsync == "always":
            self.sync_wal(wal.number, target)
        elif (
            opts.fsync == "interval"
            and 0 < opts.wal_bytes_per_sync <= target - self._wals.synced(wal.number)
        ):
            self._wake_syncer()

    def try_write(self, ops: list[Op], merges: bool) -> bool:
        """:meth:`write` if nothing has to wait (see ``DB.try_write``)."""
        opts = self._options
        if opts.fsync == "always":
            return False
        mu = self._mu
        if not mu.acquire(blocking=False):
            self._counters["try_write_refused"] += 1
            return False
        try:
            mem, _, version = self._state
            if (
                self._error is not None or self._closed or self._closing
                or mem.approx_bytes >= opts.memtable_bytes
                or len(version.levels[0]) >= opts.l0_slowdown_trigger
            ):
                self._counters["try_write_refused"] += 1
                return False
            self._append(mem, ops, merges)
        finally:
            mu.release()
        return True

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

    def _l0_pressure(self) -> bool:
        return len(self._state[2].levels[0]) >= self._options.l0_slowdown_trigger

    def _make_room(self) -> None:
        """Called with ``_mu`` held before a write: slow down or stop while
        level 0 is over its triggers, and switch a full memtable."""
        slowed = False
        stall_start: float | None = None
        try:
            while True:
                self._check_writable()
                opts = self._options
                mem, imms, version = self._state
                l0 = len(version.levels[0])
                if l0 >= opts.l0_stop_trigger or (
                    mem.approx_bytes >= opts.memtable_bytes
                    and len(imms) >= opts.max_immutable_memtables
                ):
                    if stall_start is None:
                        stall_start = time.perf_counter()
                        self._counters["write_stalls"] += 1
                    self._wake()
                    self._cv.wait(0.1)
                    continue
                if l0 >= opts.l0_slowdown_trigger and not slowed:
                    slowed = True
                    self._counters["write_slowdowns"] += 1
                    self._cv.wait(opts.slowdown_sleep_s)
                    continue
                if mem.approx_bytes >= opts.memtable_bytes:
                    if not self._switching:
                        self._switch_memtable()  # lets _mu go: look again
                        continue
                    if mem.approx_bytes >= 2 * opts.memtable_bytes:
                        self._cv.wait(0.1)  # the switch under way takes too long
                        continue
                    # else: the switch under way takes this memtable, this write too
                return
        finally:
            if stall_start is not None:
                self._counters["stall_us"] += int((time.perf_counter() - stall_start) * 1e6)

    def _switch_memtable(self) -> None:
        """Start a new memtable and WAL (``_mu`` held on entry and on return,
        let go meanwhile: see the module's docstring). The old WAL is closed
        by the flush job once its memtable is on disk. Returns without a
        switch if the engine started closing or failed meanwhile; callers
        check again.

        Unless fsync is "never", the old WAL is synced first: the new one's
        records must not become durable (by the syncer, or by the OS writing
        pages back in any order) while older acknowledged records are not,
        or a power cut would leave a hole in the middle of the history."""
        old = self._wal
        self._switching = True
        failure: StorageIOError | None = None
        self._mu.release()
        try:
            created = self._prepare_wal(old)
        except StorageIOError as exc:
            failure = exc
        finally:
            self._mu.acquire()
            self._switching = False
            self._cv.notify_all()
        if failure is not None:
            self._latch(failure, "wal")
            raise failure
        if self._closing or self._error is not None:
            self._discard_wal(*created)
            return
        try:
            self._sync_old_wal(old)  # what writers added while _mu was free
        except StorageIOError as exc:
            self._discard_wal(*created)
            self._latch(exc, "wal")
            raise
        self._install_wal(*created)

    def _prepare_wal(self, old: WalWriter) -> tuple[WritableFile, int]:
        """Sync ``old`` and create the next WAL, durably named."""
        number = self._versions.new_file_number()
        self._sync_old_wal(old)
        f = self._fs.create(filenames.wal_path(self._path, number))
        try:
            self._fs.sync_dir(self._path)
        except StorageIOError:
            self._discard_wal(f, number)
            raise
        return f, number

    def _sync_old_wal(self, old: WalWriter) -> None:
        if self._options.fsync != "never":
            self._wals.sync(old.number, old.flushed_size)

    def _discard_wal(self, f: WritableFile, number: int) -> None:
        """Drop a WAL that never took a record (an empty one left behind is
        replayed as empty)."""
        with contextlib.suppress(StorageIOError, FileNotFoundError):
            f.close()
            self._fs.remove(filenames.wal_path(self._path, number))

    def _install_wal(self, f: WritableFile, number: int) -> None:
        """Make the new WAL and a new memtable current (``_mu`` held)."""
        wal = WalWriter(f, number)
        self._wals.add(wal)
        self._wal = wal
        self._wal_good = 0
        mem, imms, version = self._state
        self._state = (MemTable(number, self._options.merge_operator), (mem, *imms), version)
        self._wake()

    # -- durability -----------------------------------------------------------
    def sync_wal(self, number: int, upto: int) -> None:
        """Group commit (see lsm.wal_set); a failure latches the engine
        read-only once the WAL set's lock is released."""
        try:
            self._wals.sync(number, upto)
        except StorageIOError as exc:
            with self._mu:
                self._latch(exc, "wal")
            raise

    def sync_all(self) -> None:
        for number, upto in self._wals.flushed_sizes():
            self.sync_wal(number, upto)

    def sync_current_wal(self) -> None:
        wal = self._wal
        self.sync_wal(wal.number, wal.flushed_size)

    # -- flushes and versions -------------------------------------------------
    def flush(self) -> None:
        """Switch a non-empty memtable and wait until every memtable that
        holds data now is on disk."""
        with self._mu:
            self._check_writable()
            while self._switching:  # let a writer's switch finish first
                self._cv.wait(0.1)
                self._check_writable()
            mem, imms, _ = self._state
            waiting = list(imms)
            if len(mem):
                waiting.append(mem)
                while self._state[0] is mem:
                    self._check_writable()  # raises, or resumes with a new memtable
                    self._switch_memtable()
            while any(m is w for m in self._state[1] for w in waiting):
                self._raise_latched()
                if self._closing:
                    raise ClosedError(f"database {self._path} is closed")
                self._wake()
                self._cv.wait(0.1)

    def wait_for_background(self, busy: Callable[[], bool], timeout: float) -> None:
        """Block until no memtable waits for a flush and ``busy()`` (called
        under ``_mu``) is false, or raise TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._mu:
            while self._state[1] or busy():
                self._raise_latched()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"compactions of {self._path} still running")
                self._wake()
                self._cv.wait(min(remaining, 0.05))

    def flush_marks(self, mem: MemTable) -> tuple[int, int]:
        """``(log number, last sequence number)`` for the edit that records
        the flush of ``mem``: the oldest WAL still needed without it."""
        with self._mu:
            live = [m for m in self._state[1] if m is not mem] + [self._state[0]]
            return min(m.wal_number for m in live), self._last_seq

    def install_version(self, version: LsmVersion, flushed: MemTable | None = None) -> None:
        """Make ``version`` the readers' one; ``flushed`` is in it now."""
        with self._mu:
            mem, imms, _ = self._state
            if flushed is not None:
                imms = tuple(m for m in imms if m is not flushed)
            self._state = (mem, imms, version)
            self._cv.notify_all()

    def scan_sources(
        self, pin: Callable[[list[int]], None]
    ) -> tuple[list[Entry], tuple[MemTable, ...], LsmVersion, list[int]]:
        """The memtable's sorted entries, the immutable memtables and the
        version of one moment, with the version's tables ``pin``-ned before
        a compaction can retire them; also the pinned numbers."""
        with self._mu:
            mem, imms, version = self._state
            pinned = [f.number for files in version.levels for f in files]
            pin(pinned)
            return mem.entries(), imms, version, pinned

    # -- error latch ----------------------------------------------------------
    def latch_error(self, exc: StorageIOError, source: str) -> None:
        with self._mu:
            self._latch(exc, source)

    def clear_error(self, source: str) -> None:
        with self._mu:
            if self._error is not None and self._error_source == source:
                log.warning("%s: writes resume (%s recovered)", self._path, source)
                self._error = None
                self._cv.notify_all()

    def failed(self, source: str) -> bool:
        """Whether the latched error came from ``source``."""
        return self._error is not None and self._error_source == source

    def _latch(self, exc: StorageIOError, source: str) -> None:
        if self._error is None:
            log.error("%s: turning read-only after %s failure: %s", self._path, source, exc)
            self._counters["bg_errors" if source != "wal" else "wal_errors"] += 1
        self._error = exc
        self._error_source = source
        self._cv.notify_all()

    def _raise_latched(self) -> None:
        if self._error is not None:
            raise type(self._error)(str(self._error), self._error.errno)

    def _check_writable(self) -> None:
        if self._closed or self._closing:
            raise ClosedError(f"database {self._path} is closed")
        err = self._error
        if err is None:
            return
        now = time.monotonic()
        if (self._error_source == "wal" and not self._switching
                and now - self._last_resume >= _RESUME_INTERVAL_S):
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
            self._fs.truncate(old.path, self._wal_good)
            self._install_wal(*self._prepare_wal(old))  # _mu held throughout
        except StorageIOError as exc:
            self._error = exc
            return
        log.warning("%s: writes resume on WAL %d", self._path, self._wal.number)
        self._error = None

    # -- lifecycle ------------------------------------------------------------
    def begin_close(self) -> bool:
        """Refuse new writes and wake waiters; False if already closed."""
        with self._mu:
            if self._closed:
                return False
            self._closing = True
            self._cv.notify_all()
            return True

    def close(self) -> None:
        """Sync and close the WALs (background work has stopped)."""
        with self._mu:
            self._closed = True
            self._wals.close(self._path)

    def abandon(self) -> None:
        """Like a killed process: closed, nothing synced."""
        self._closed = True
