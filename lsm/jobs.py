"""Background work: memtable flushes, compactions and the WAL syncer.

Each runs on its own thread, owned by :class:`Jobs` and joined on close. A
flush never waits for a compaction, so writes keep going while level 0 is
being merged (until the stop trigger says otherwise). Failures latch the
write path read-only and are retried with backoff; the first success clears
the latch.

Jobs talk to the rest of the engine through methods: the write path gives
the memtables to flush and takes new versions, the version set picks
compactions, hands out file numbers and logs edits, the WAL set syncs and
retires WALs, the table cache says which tables may be deleted.
``_compaction_lock`` is held across a whole compaction (pick, run, install),
so a manual compaction step and the background one never overlap; a manual
compaction takes it once per bounded step and merges a due level 0 between
steps. The engine's lock order is written in lsm.db.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable

from lsm import compaction as policy
from lsm import filenames, table_writer
from lsm.errors import StorageIOError
from lsm.keys import Entry
from lsm.manifest import FileMeta, VersionEdit
from lsm.memtable import MemTable
from lsm.options import Options
from lsm.priority import lower_thread_priority
from lsm.table_cache import TableCache
from lsm.version import LsmVersion
from lsm.version_set import VersionSet
from lsm.wal_set import WalSet
from lsm.write_path import WritePath

log = logging.getLogger("lsm.jobs")

_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 1.0
#: A manual compaction step reads about this many target-sized files (one
#: level-n file and the ~fan-out files below it, like a background one).
_MANUAL_STEP_FILES = 10


class _Aborted(Exception):
    """The database is closing; the job's partial output is discarded."""


class Jobs:
    def __init__(
        self,
        path: str,
        options: Options,
        *,
        versions: VersionSet,
        wals: WalSet,
        tables: TableCache,
    ) -> None:
        self._path = path
        self._options = options
        self._fs = options.fs
        self._versions = versions
        self._wals = wals
        self._tables = tables
        self._counters: Counter[str] = Counter()  # flushes, compactions, their bytes
        self._writes: WritePath  # given to start(): it needs this object's wake()
        self._flush_wake = threading.Event()
        self._compact_wake = threading.Event()
        self._sync_wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._compaction_lock = threading.Lock()
        self._busy = False  # a compaction is running
        self._use_child = options.compaction_in_process
        # pause(): no new flush or compaction starts; _active counts running ones.
        self._idle = threading.Condition()
        self._paused = False
        self._active = 0

    def start(self, writes: WritePath) -> None:
        self._writes = writes
        targets = [("flush", self._flush_loop), ("compact", self._compaction_loop)]
        if self._options.fsync == "interval":
            targets.append(("wal-sync", self._sync_loop))
        if not self._options.background_threads:
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

    @property
    def counters(self) -> Counter[str]:
        return self._counters

    def reconfigure(self, options: Options) -> None:
        """Use ``options`` (run-time knobs changed) from the next job on."""
        self._options = options
        self.wake()

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

    def has_work(self) -> bool:
        """A compaction is due or running (no lock taken)."""
        return self._busy or self._versions.pick_compaction(self._options) is not None

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

    def _closing(self) -> bool:
        return self._stop.is_set()

    @staticmethod
    def _wait(event: threading.Event, seconds: float) -> None:
        event.wait(seconds)
        event.clear()

    def _install(self, edit: VersionEdit, flushed: MemTable | None = None) -> LsmVersion:
        return self._versions.log_and_apply(
            edit, lambda version: self._writes.install_version(version, flushed)
        )

    # -- WAL syncer -----------------------------------------------------------
    def wake_syncer(self) -> None:
        """The current WAL has ``wal_bytes_per_sync`` unsynced bytes."""
        self._sync_wake.set()

    def _sync_loop(self) -> None:
        interval = self._options.fsync_interval_ms / 1000
        while True:
            self._wait(self._sync_wake, interval)
            if self._stop.is_set():
                return
            try:
                self._writes.sync_current_wal()
            except StorageIOError as exc:
                log.error("%s: periodic WAL sync failed: %s", self._path, exc)

    # -- flush ----------------------------------------------------------------
    def _flush_loop(self) -> None:
        lower_thread_priority(self._options.flush_nice)
        writes = self._writes
        backoff = _BACKOFF_MIN_S
        while not self._stop.is_set():
            imms = writes.state[1]
            if not imms or not self._begin():
                self._wait(self._flush_wake, 0.1)
                continue
            try:
                try:
                    self._flush_one(imms[-1])
                finally:
                    self._end()
                backoff = _BACKOFF_MIN_S
                writes.clear_error("flush")
            except StorageIOError as exc:
                writes.latch_error(exc, "flush")
                self._wait(self._flush_wake, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            except _Aborted:
                return
            except Exception as exc:  # corruption or a bug: stay read-only, retry slowly
                log.exception("%s: flush failed", self._path)
                writes.latch_error(StorageIOError(f"flush failed: {exc!r}"), "flush")
                self._wait(self._flush_wake, _BACKOFF_MAX_S)

    def _flush_one(self, mem: MemTable) -> None:
        """Write one immutable memtable to level 0, then retire its WAL."""
        self._wals.sync_all_of(mem.wal_number)
        # Flushes stay on this thread: in a child process (tried) the start-up
        # and WAL re-read made immutable memtables pile up and stall writers.
        outputs = self._write_tables(mem.entries(), split=False) if len(mem) else []
        log_number, last_seq = self._writes.flush_marks(mem)
        edit = VersionEdit(
            log_number=log_number,
            next_file_number=self._versions.next_file_number,
            last_seq=last_seq,
            added=tuple((0, f) for f in outputs),
        )
        self._install(edit, flushed=mem)
        self._counters["flushes"] += 1
        self._counters["flush_bytes"] += sum(f.size for f in outputs)
        self._wals.retire(mem.wal_number)
        self._remove(filenames.wal_path(self._path, mem.wal_number))
        self._compact_wake.set()

    # -- compaction -----------------------------------------------------------
    def _compaction_loop(self) -> None:
        lower_thread_priority(self._options.compaction_nice)
        writes = self._writes
        backoff = _BACKOFF_MIN_S
        while not self._stop.is_set():
            self._wait(self._compact_wake, 0.25)
            while not self._stop.is_set():
                with self._compaction_lock:
                    task = self._versions.pick_compaction(self._options)
                    if task is None or not self._begin():
                        break
                    self._busy = True
                    try:
                        self._run(task)
                        backoff = _BACKOFF_MIN_S
                        writes.clear_error("compaction")
                    except _Aborted:
                        return
                    except StorageIOError as exc:
                        writes.latch_error(exc, "compaction")
                        break
                    except Exception as exc:  # corruption or a bug
                        log.exception("%s: compaction failed", self._path)
                        writes.latch_error(
                            StorageIOError(f"compaction failed: {exc!r}"), "compaction"
                        )
                        break
                    finally:
                        self._busy = False
                        self._end()
            if writes.failed("compaction"):
                self._wait(self._compact_wake, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def compact_range(self, start: bytes | None, end: bytes | None, bottommost: bool) -> None:
        """Manual compaction in the caller's thread, in bounded steps (at
        most ``_MANUAL_STEP_FILES`` target-sized files of input each, level 0
        whole). ``_compaction_lock`` is held per step, not for the whole
        range, and before each step a level-0 compaction that became due
        runs first (the background thread may also take the lock between
        two steps, but a lock promises no fairness). Held for the whole
        range, as it was, level 0 piled up to the stop trigger during a
        long manual compaction and writes waited for all of it."""
        level, after = 0, None
        while True:
            with self._compaction_lock:
                self._level0_first()
                current = self._versions.current
                if level >= max(1, current.last_nonempty_level()):
                    break
                task = policy.manual_step(
                    current, level, start, end, after=after, max_bytes=self._step_bytes()
                )
                if task is None or level == 0:
                    level, after = level + 1, None
                else:
                    after = max(f.largest for f in task.inputs)
                if task is not None:
                    self._run(task)
        after = None
        while bottommost:
            with self._compaction_lock:
                self._level0_first()
                task = policy.bottom_step(
                    self._versions.current, start, end, after=after, max_bytes=self._step_bytes()
                )
                if task is None:
                    break
                after = max(f.largest for f in task.inputs)
                self._run(task)
        self.wake()

    def _step_bytes(self) -> int:
        return self._options.target_file_bytes * _MANUAL_STEP_FILES

    def _level0_first(self) -> None:
        """Under ``_compaction_lock``: merge level 0 down if it is due."""
        task = policy.level0_task(self._versions.current, self._options)
        if task is not None:
            self._run(task)

    def _run(self, task: policy.CompactionTask) -> None:
        started = time.perf_counter()
        counters = self._counters
        if task.is_trivial_move:
            self._install(policy.trivial_move_edit(task))
            counters["trivial_moves"] += 1
            return
        sources: list[tuple[int, ...]] = [(f.number,) for f in task.inputs]
        if task.next_inputs:
            sources.append(tuple(f.number for f in task.next_inputs))
        read = task.input_bytes()
        options = self._options
        reserved = table_writer.reserve_count(read, options)
        first = self._versions.reserve_file_numbers(reserved)
        job = table_writer.CompactionJob(
            self._path, tuple(sources), task.bottommost, first, reserved, options
        )
        out: table_writer.CompactionOutput | None = None
        where = "thread"
        try:
            entries = sum(f.entries for _, f in task.all_inputs())
            if (self._use_child and entries >= options.compaction_child_min_entries
                    and table_writer.can_run_in_child(job)):
                # Log the reservation first: if this process is killed, its
                # child may write these numbers for a moment longer, and a
                # restarted engine must not hand them out meanwhile.
                self._install(VersionEdit(next_file_number=first + reserved))
                try:
                    out = table_writer.run_in_child(job, self._closing)
                    where = f"child process at nice {out.nice}"
                    counters["compactions_in_child"] += 1
                except table_writer.ChildUnavailable as exc:
                    log.warning("%s: compacting in-process from now on: %s", self._path, exc)
                    self._use_child = False
            if out is None:
                out = table_writer.execute(job, self._fs, self._tables.get, self._closing)
        except table_writer.Aborted:
            raise _Aborted from None
        self._install(policy.result_edit(task, out.files, self._writes.last_seq))
        written = sum(f.size for f in out.files)
        counters["compactions"] += 1
        counters["compaction_bytes_read"] += read
        counters["compaction_bytes_written"] += written
        counters["compaction_dropped_tombstones"] += out.dropped_tombstones
        counters["compaction_filtered"] += out.filtered
        counters["compaction_merge_operands"] += out.merge_operands
        log.debug(
            "%s: compacted L%d->L%d (%s) in a %s: %d files %d bytes -> %d files %d bytes "
            "in %.2fs",
            self._path, task.level, task.output_level, task.reason, where,
            len(task.all_inputs()), read, len(out.files), written, time.perf_counter() - started,
        )
        self._tables.retire(f.number for _, f in task.all_inputs())
        self.delete_obsolete_tables()

    # -- output ---------------------------------------------------------------
    def _write_tables(self, entries: Iterable[Entry], split: bool) -> list[FileMeta]:
        try:
            return table_writer.write_tables(
                self._fs, self._path, self._options, entries, split=split,
                next_number=self._versions.new_file_number, should_abort=self._closing,
            )
        except table_writer.Aborted:
            raise _Aborted from None

    def delete_obsolete_tables(self) -> None:
        """Delete retired tables that no version in use needs any more."""
        live = self._versions.current.file_numbers()
        for number in self._tables.take_deletable(live):
            self._remove(filenames.table_path(self._path, number))

    def _remove(self, path: str) -> None:
        table_writer.remove_quietly(self._fs, path)
