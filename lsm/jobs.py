"""Background work: memtable flushes, compactions and the WAL syncer.

Each runs on its own thread, owned by :class:`Jobs` and joined on close. A
flush never waits for a compaction, so writes keep going while level 0 is
being merged (until the stop trigger says otherwise). Failures latch the
database read-only and are retried with backoff; the first success clears
the latch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from lsm import compaction as policy
from lsm import filenames, table_writer
from lsm.errors import StorageIOError
from lsm.keys import Entry
from lsm.manifest import FileMeta, VersionEdit
from lsm.memtable import MemTable

if TYPE_CHECKING:
    from lsm.db import DB

log = logging.getLogger("lsm.jobs")

_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 1.0


class _Aborted(Exception):
    """The database is closing; the job's partial output is discarded."""


class Jobs:
    def __init__(self, db: DB) -> None:
        self.db = db
        self._flush_wake = threading.Event()
        self._compact_wake = threading.Event()
        self._sync_wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.busy = False
        self._use_child = db.options.compaction_in_process
        # pause(): no new flush or compaction starts; _active counts running ones.
        self._idle = threading.Condition()
        self._paused = False
        self._active = 0

    def start(self) -> None:
        db = self.db
        targets = [("flush", self._flush_loop), ("compact", self._compaction_loop)]
        if db.options.fsync == "interval":
            targets.append(("wal-sync", self._sync_loop))
        if not db.options.background_threads:
            targets = [t for t in targets if t[0] == "wal-sync"]
        for name, target in targets:
            t = threading.Thread(target=target, name=f"lsm-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.wake()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        self._sync_wake.set()
        for t in self._threads:
            t.join()
        self._threads.clear()

    def wake(self) -> None:
        self._flush_wake.set()
        self._compact_wake.set()

    def pause(self) -> None:
        """Start no new flush or compaction; return once running ones end."""
        with self._idle:
            self._paused = True
            self._idle.wait_for(lambda: self._active == 0)

    def resume(self) -> None:
        with self._idle:
            self._paused = False
        self.wake()

    def _begin(self) -> bool:
        with self._idle:
            if self._paused:
                return False
            self._active += 1
            return True

    def _end(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    @staticmethod
    def _wait(event: threading.Event, seconds: float) -> None:
        event.wait(seconds)
        event.clear()

    def compaction_due(self) -> bool:
        db = self.db
        return policy.pick_compaction(db._state[2], db.options, db._pointers) is not None

    # -- WAL syncer -----------------------------------------------------------
    def wake_syncer(self) -> None:
        """The current WAL has ``wal_bytes_per_sync`` unsynced bytes."""
        self._sync_wake.set()

    def _sync_loop(self) -> None:
        db = self.db
        interval = db.options.fsync_interval_ms / 1000
        while True:
            self._wait(self._sync_wake, interval)
            if self._stop.is_set():
                return
            try:
                db.sync_current_wal()
            except StorageIOError as exc:
                log.error("%s: periodic WAL sync failed: %s", db.path, exc)

    # -- flush ----------------------------------------------------------------
    def _flush_loop(self) -> None:
        db = self.db
        backoff = _BACKOFF_MIN_S
        while not db._closing:
            imms = db._state[1]
            if not imms or not self._begin():
                self._wait(self._flush_wake, 0.1)
                continue
            try:
                try:
                    self.flush_one(imms[-1])
                finally:
                    self._end()
                backoff = _BACKOFF_MIN_S
                db.clear_error("flush")
            except StorageIOError as exc:
                db.latch_error(exc, "flush")
                self._wait(self._flush_wake, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            except _Aborted:
                return
            except Exception as exc:  # corruption or a bug: stay read-only, retry slowly
                log.exception("%s: flush failed", db.path)
                db.latch_error(StorageIOError(f"flush failed: {exc!r}"), "flush")
                self._wait(self._flush_wake, _BACKOFF_MAX_S)

    def flush_one(self, mem: MemTable) -> None:
        """Write one immutable memtable to level 0, then retire its WAL."""
        db = self.db
        with db._sync_lock:
            wal = db._wals.get(mem.wal_number)
            if wal is not None:
                wal.sync()
        # Flushes stay on this thread: in a child process (tried) the start-up
        # and WAL re-read made immutable memtables pile up and stall writers.
        outputs = self.write_tables(mem.entries(), split=False) if len(mem) else []
        with db._mu:
            live = [m for m in db._state[1] if m is not mem] + [db._state[0]]
            log_number = min(m.wal_number for m in live)
            last_seq = db._last_seq
        edit = VersionEdit(
            log_number=log_number,
            next_file_number=db._next_file,
            last_seq=last_seq,
            added=tuple((0, f) for f in outputs),
        )
        db.install(edit, flushed=mem)
        db.counters["flushes"] += 1
        db.counters["flush_bytes"] += sum(f.size for f in outputs)
        with db._sync_lock:
            wal = db._wals.pop(mem.wal_number, None)
            db._synced.pop(mem.wal_number, None)
        if wal is not None:
            wal.close()
        self._remove(filenames.wal_path(db.path, mem.wal_number))
        self._compact_wake.set()

    # -- compaction -----------------------------------------------------------
    def _compaction_loop(self) -> None:
        db = self.db
        backoff = _BACKOFF_MIN_S
        while not db._closing:
            self._wait(self._compact_wake, 0.25)
            while not db._closing:
                with db._compaction_lock:
                    task = policy.pick_compaction(db._state[2], db.options, db._pointers)
                    if task is None or not self._begin():
                        break
                    self.busy = True
                    try:
                        self.run(task)
                        backoff = _BACKOFF_MIN_S
                        db.clear_error("compaction")
                    except _Aborted:
                        return
                    except StorageIOError as exc:
                        db.latch_error(exc, "compaction")
                        break
                    except Exception as exc:  # corruption or a bug
                        log.exception("%s: compaction failed", db.path)
                        db.latch_error(StorageIOError(f"compaction failed: {exc!r}"), "compaction")
                        break
                    finally:
                        self.busy = False
                        self._end()
            if db._error is not None and db._error_source == "compaction":
                self._wait(self._compact_wake, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def compact_range(self, start: bytes | None, end: bytes | None, bottommost: bool) -> None:
        """Manual compaction in the caller's thread (background compactions
        wait on ``_compaction_lock`` meanwhile)."""
        db = self.db
        with db._compaction_lock:
            last = max(1, db._state[2].last_nonempty_level())
            for level in range(last):
                task = policy.manual_tasks_for_level(db._state[2], level, start, end)
                if task is not None:
                    self.run(task)
            if bottommost:
                task = policy.bottom_rewrite_task(db._state[2], start, end)
                if task is not None:
                    self.run(task)
        self.wake()

    def run(self, task: policy.CompactionTask) -> None:
        db = self.db
        started = time.perf_counter()
        if task.is_trivial_move:
            db.install(policy.trivial_move_edit(task))
            db.counters["trivial_moves"] += 1
            return
        sources: list[tuple[int, ...]] = [(f.number,) for f in task.inputs]
        if task.next_inputs:
            sources.append(tuple(f.number for f in task.next_inputs))
        read = task.input_bytes()
        reserved = table_writer.reserve_count(read, db.options)
        with db._mu:
            first = db._next_file
            db._next_file += reserved
        job = table_writer.CompactionJob(
            db.path, tuple(sources), task.bottommost, first, reserved, db.options
        )
        closing = lambda: db._closing  # noqa: E731
        out: table_writer.CompactionOutput | None = None
        where = "thread"
        try:
            if self._use_child and table_writer.can_run_in_child(job):
                # Log the reservation first: if this process is killed, its
                # child may write these numbers for a moment longer, and a
                # restarted engine must not hand them out meanwhile.
                db.install(VersionEdit(next_file_number=first + reserved))
                try:
                    out = table_writer.run_in_child(job, closing)
                    where = "child process"
                except table_writer.ChildUnavailable as exc:
                    log.warning("%s: compacting in-process from now on: %s", db.path, exc)
                    self._use_child = False
            if out is None:
                out = table_writer.execute(job, db.fs, db.tables.get, closing)
        except table_writer.Aborted:
            raise _Aborted from None
        db.install(policy.result_edit(task, out.files, db._last_seq))
        written = sum(f.size for f in out.files)
        db.counters["compactions"] += 1
        db.counters["compaction_bytes_read"] += read
        db.counters["compaction_bytes_written"] += written
        db.counters["compaction_dropped_tombstones"] += out.dropped_tombstones
        db.counters["compaction_filtered"] += out.filtered
        db.counters["compaction_merge_operands"] += out.merge_operands
        log.debug(
            "%s: compacted L%d->L%d (%s) in a %s: %d files %d bytes -> %d files %d bytes "
            "in %.2fs",
            db.path, task.level, task.output_level, task.reason, where, len(task.all_inputs()),
            read, len(out.files), written, time.perf_counter() - started,
        )
        with db._mu:
            db._obsolete_tables.update(f.number for _, f in task.all_inputs())
        self.delete_obsolete_tables()

    # -- output ---------------------------------------------------------------
    def write_tables(self, entries: Iterable[Entry], split: bool) -> list[FileMeta]:
        db = self.db

        def closing() -> bool:
            return db._closing

        try:
            return table_writer.write_tables(
                db.fs, db.path, db.options, entries,
                split=split, next_number=db.new_file_number, should_abort=closing,
            )
        except table_writer.Aborted:
            raise _Aborted from None

    def delete_obsolete_tables(self) -> None:
        db = self.db
        with db._mu:
            live = db._state[2].file_numbers()
            doomed = [n for n in db._obsolete_tables if n not in live and not db._pins[n]]
            db._obsolete_tables.difference_update(doomed)
        for number in doomed:
            db.tables.evict(number)
            self._remove(filenames.table_path(db.path, number))

    def _remove(self, path: str) -> None:
        table_writer.remove_quietly(self.db.fs, path)


