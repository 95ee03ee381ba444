"""Background work: memtable flushes, compactions and the WAL syncer.

Each runs on its own thread, owned by :class:`Jobs` and joined on close. A
flush never waits for a compaction, so writes keep going while level 0 is
being merged (until the stop trigger says otherwise). Failures latch the
database read-only and are retried with backoff; the first success clears
the latch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from lsm import compaction as policy
from lsm import filenames
from lsm.errors import LSMError, StorageIOError
from lsm.fs import WritableFile
from lsm.iterators import CompactionStats, compaction_stream, merge_newest
from lsm.keys import Entry
from lsm.manifest import FileMeta, VersionEdit
from lsm.memtable import MemTable
from lsm.sstable import TableBuilder

if TYPE_CHECKING:
    from lsm.db import DB

log = logging.getLogger("lsm.jobs")

_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 1.0
_ABORT_CHECK_EVERY = 1024


class _Aborted(Exception):
    """The database is closing; the job's partial output is discarded."""


class Jobs:
    def __init__(self, db: DB) -> None:
        self.db = db
        self._flush_wake = threading.Event()
        self._compact_wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.busy = False
        self._compactions_paused = 0

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
        for t in self._threads:
            t.join()
        self._threads.clear()

    def wake(self) -> None:
        self._flush_wake.set()
        self._compact_wake.set()

    @staticmethod
    def _wait(event: threading.Event, seconds: float) -> None:
        event.wait(seconds)
        event.clear()

    def compaction_due(self) -> bool:
        db = self.db
        return policy.pick_compaction(db._state[2], db.options, db._pointers) is not None

    # -- WAL syncer -----------------------------------------------------------
    def _sync_loop(self) -> None:
        db = self.db
        interval = db.options.fsync_interval_ms / 1000
        while not self._stop.wait(interval):
            wal = db._wal
            try:
                db.sync_wal(wal.number, wal.size())
            except StorageIOError as exc:
                log.error("%s: periodic WAL sync failed: %s", db.path, exc)

    # -- flush ----------------------------------------------------------------
    def _flush_loop(self) -> None:
        db = self.db
        backoff = _BACKOFF_MIN_S
        while not db._closing:
            imms = db._state[1]
            if not imms:
                self._wait(self._flush_wake, 0.1)
                continue
            try:
                self.flush_one(imms[-1])
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
                    if task is None:
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
            if db._error is not None and db._error_source == "compaction":
                self._wait(self._compact_wake, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def compact_range(self, start: bytes | None, end: bytes | None) -> None:
        """Manual compaction in the caller's thread (background compactions
        wait on ``_compaction_lock`` meanwhile)."""
        db = self.db
        with db._compaction_lock:
            last = max(1, db._state[2].last_nonempty_level())
            for level in range(last):
                task = policy.manual_tasks_for_level(db._state[2], level, start, end)
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
        sources: list[Iterable[Entry]] = [db.tables.get(f.number).iter() for f in task.inputs]
        if task.next_inputs:
            sources.append(self._chain(task.next_inputs))
        stats = CompactionStats()
        stream = compaction_stream(
            merge_newest(sources), task.bottommost, db.options.compaction_filter, stats
        )
        outputs = self.write_tables(stream, split=True)
        db.install(policy.result_edit(task, outputs, db._last_seq))
        read = task.input_bytes()
        written = sum(f.size for f in outputs)
        db.counters["compactions"] += 1
        db.counters["compaction_bytes_read"] += read
        db.counters["compaction_bytes_written"] += written
        db.counters["compaction_dropped_tombstones"] += stats.dropped_tombstones
        db.counters["compaction_filtered"] += stats.filtered
        log.debug(
            "%s: compacted L%d->L%d (%s): %d files %d bytes -> %d files %d bytes in %.2fs",
            db.path, task.level, task.output_level, task.reason, len(task.all_inputs()),
            read, len(outputs), written, time.perf_counter() - started,
        )
        with db._mu:
            db._obsolete_tables.update(f.number for _, f in task.all_inputs())
        self.delete_obsolete_tables()

    def _chain(self, files: Iterable[FileMeta]) -> Iterator[Entry]:
        for f in files:
            yield from self.db.tables.get(f.number).iter()

    # -- output ---------------------------------------------------------------
    def write_tables(self, entries: Iterable[Entry], split: bool) -> list[FileMeta]:
        """Write ``entries`` to new tables (split at the target file size when
        ``split``), sync them and their directory. On failure, remove what was
        written and re-raise."""
        db = self.db
        target = db.options.target_file_bytes if split else 1 << 62
        outputs: list[FileMeta] = []
        paths: list[str] = []
        builder: TableBuilder | None = None
        out: WritableFile | None = None
        number = 0
        try:
            for n, (key, seq, kind, value) in enumerate(entries):
                if builder is None or out is None:
                    number = db.new_file_number()
                    path = filenames.table_path(db.path, number)
                    paths.append(path)
                    out = db.fs.create(path)
                    builder = TableBuilder(out, db.options)
                builder.add(key, seq, kind, value)
                if n % _ABORT_CHECK_EVERY == 0 and db._closing:
                    raise _Aborted
                if builder.estimated_size() >= target:
                    outputs.append(_finish(builder, out, number))
                    builder = out = None
            if builder is not None and out is not None:
                outputs.append(_finish(builder, out, number))
                builder = out = None
            db.fs.sync_dir(db.path)
        except BaseException:
            if out is not None:
                out.discard_buffer()
                with contextlib.suppress(LSMError):
                    out.close()
            for path in paths:
                self._remove(path)
            raise
        return outputs

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
        try:
            self.db.fs.remove(path)
        except FileNotFoundError:
            pass
        except StorageIOError as exc:  # leftover files are removed on next open
            log.warning("could not remove %s: %s", path, exc)


def _finish(builder: TableBuilder, f: WritableFile, number: int) -> FileMeta:
    props = builder.finish()
    f.sync()
    f.close()
    return FileMeta(
        number=number,
        size=props.file_bytes,
        smallest=props.smallest_key,
        largest=props.largest_key,
        smallest_seq=props.smallest_seq,
        largest_seq=props.largest_seq,
        entries=props.entries,
        tombstones=props.tombstones,
    )
