"""The engine against a model of its writes, with crashes, disk full and EIO.

Runs on the crashable in-memory file system, once with ``fsync="always"`` and
once with ``fsync="interval"``. In interval mode the background syncer's
period is an hour and the ``tick`` rule does what one period does, so that
hypothesis decides when syncs happen and can replay them.

Crashes come three ways: a power cut between operations (``crash``), a
process kill (``kill``: nothing acknowledged may be lost), and a power cut
*inside* an operation (``crash_inside``: the file system cuts power at the
n-th next fsync, rename, write, ... of any thread, and stays down until the
test restarts it). After a power cut the recovered state must be the state
after some prefix of the writes that holds every acknowledged write an fsync
had covered (see ``write_history``); the file system's high-water marks say
which writes those are, independently of the engine.

Faults: the disk fills, or EIO starts on one kind of operation (write, fsync,
create, rename, directory fsync, read, open, truncate) on one kind of file
(WAL, table, manifest, CURRENT, any) and lasts until ``fault_cleared``, after
which writes must resume without a restart. A write that raised may or may
not have happened. ``pause`` holds flushes back, as a slow disk does under
load, so that immutable memtables' WALs wait while newer writes are synced.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lsm import filenames
from lsm.batch import WriteBatch
from lsm.db import DB
from lsm.errors import StorageIOError
from lsm.faultfs import FaultFileSystem
from lsm.filenames import FileType
from lsm.options import FsyncMode, Options
from tests.lsm.helpers import wait_until
from tests.property.write_history import Value, Write, WriteHistory

pytestmark = pytest.mark.property

DB_DIR = "/db"
PROBE = b"\xff-probe"

keys_st = st.binary(min_size=1, max_size=12)
# Large values now and then, so that a few writes fill a memtable and switch WALs.
values_st = st.binary(max_size=300) | st.binary(min_size=800, max_size=1200)
# Where a crash inside an operation may fall (any of them, or one kind), and
# where EIO may be injected.
_ANY_OP = ("fsync", "fsync directory", "rename", "write", "create", "remove", "truncate")
crash_ops_st = st.sampled_from(
    [_ANY_OP, _ANY_OP, _ANY_OP, ("fsync",), ("write",), ("fsync directory",), ("rename",),
     ("create", "remove")]
)
# Mostly early, so that the crash falls inside the work rather than after it.
countdown_st = st.integers(min_value=0, max_value=3) | st.integers(min_value=0, max_value=12)
eio_ops_st = st.sampled_from(
    ["write", "fsync", "create", "rename", "fsync directory", "read", "open", "truncate"]
)
eio_files_st = st.sampled_from([".log", ".sst", "MANIFEST-", "CURRENT", ""])


class EngineModel(RuleBasedStateMachine):
    FSYNC: FsyncMode = "always"
    keys = Bundle("keys")
    # Fresh keys as well as known ones: a lost write shows only if no later
    # write to its key hides it.
    bursts_st = st.lists(st.tuples(keys | keys_st, values_st), min_size=1, max_size=25)

    def __init__(self) -> None:
        super().__init__()
        self.fs = FaultFileSystem(seed=7)
        self.options = Options(
            fs=self.fs,
            fsync=self.FSYNC,
            # The tick rule stands in for the syncer's timer and byte trigger.
            fsync_interval_ms=3_600_000,
            wal_bytes_per_sync=0,
            memtable_bytes=4096,
            block_bytes=512,
            target_file_bytes=8192,
            level1_bytes=16384,
            level_fanout=2,
            l0_compaction_trigger=2,
            l0_slowdown_trigger=4,
            l0_stop_trigger=8,
            num_levels=4,
            block_cache_bytes=1 << 16,
        )
        self.db: DB | None = DB.open(DB_DIR, self.options)
        self.history = WriteHistory()
        # Which faults are in force. Preconditions read these, not the file
        # system: background threads make its state vary between runs, and
        # hypothesis needs preconditions to replay.
        self.disk_limited = False
        self.eio: tuple[str, str] | None = None  # (operation, file name part)
        # Background work paused: the flush lags behind the writes, as under
        # load. Writes are skipped while they would stall (see room()).
        self.paused = False

    @property
    def live(self) -> DB:
        assert self.db is not None
        return self.db

    @initialize(target=keys, key=keys_st)
    def first_key(self, key: bytes) -> bytes:
        return key

    @rule(target=keys, key=keys_st)
    def new_key(self, key: bytes) -> bytes:
        return key

    # -- writes ---------------------------------------------------------------
    def _write(self, ops: list[tuple[bytes, Value]], write: Callable[[], None]) -> None:
        if not self.room():
            return  # it would wait for a flush that is paused
        generation = self.fs.generation
        try:
            write()
        except StorageIOError:
            self.history.add(Write(tuple(ops), acked=False))
            return
        wal, end = self._wal_end()
        if self.fs.generation != generation:
            wal = None  # crashed meanwhile: where the record ended is unknown
        self.history.add(Write(tuple(ops), acked=True, wal=wal, end=end))
        if self.FSYNC == "always" and wal is not None:
            assert self.fs.synced_high_water(wal) >= end, "acknowledged before its fsync"

    def _wal_end(self) -> tuple[str | None, int]:
        """The current WAL (the newest one) and its length: where the write
        that just returned ended. Only the test's thread appends to it."""
        wals = [p[1] for n in self.fs.listdir(DB_DIR) if (p := filenames.parse(n))
                and p[0] is FileType.WAL]
        if not wals:
            return None, 0
        path = filenames.wal_path(DB_DIR, max(wals))
        return path, self.fs.file_size(path)

    def _put(self, key: bytes, value: bytes) -> None:
        self._write([(key, value)], lambda: self.live.put(key, value))

    def room(self) -> bool:
        """Whether a write (of at most one memtable switch) can go ahead
        without waiting for a flush: always while background work runs. Not
        a precondition: what it reads can depend on timing (a WAL resumed
        after a fault switches memtables), and preconditions must replay."""
        if not self.paused:
            return True
        stats = self.live.stats()
        return bool(
            stats["immutable_memtables"] < self.options.max_immutable_memtables
            or stats["memtable_bytes"] < self.options.memtable_bytes
        )

    @rule(key=keys, value=values_st)
    def put(self, key: bytes, value: bytes) -> None:
        self._put(key, value)

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        self._write([(key, None)], lambda: self.live.delete(key))

    @rule(ops=st.lists(st.tuples(keys, st.none() | values_st), min_size=1, max_size=8))
    def batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        b = WriteBatch()
        final: dict[bytes, bytes | None] = {}
        for key, value in ops:
            if value is None:
                b.delete(key)
            else:
                b.put(key, value)
            final[key] = value
        self._write(list(final.items()), lambda: self.live.write(b))

    # -- reads and maintenance --------------------------------------------------
    def _reads_may_fail(self) -> bool:
        return self.eio is not None and self.eio[0] in ("read", "open")

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        try:
            assert self.live.get(key) in self.history.possible(key)
        except StorageIOError:
            assert self._reads_may_fail()

    @precondition(lambda self: not self.paused)
    @rule()
    def flush(self) -> None:
        with contextlib.suppress(StorageIOError):
            self.live.flush()

    @precondition(lambda self: not self.paused)
    @rule()
    def compact(self) -> None:
        with contextlib.suppress(StorageIOError):
            self.live.compact_range()

    @rule()
    def tick(self) -> None:
        """What the interval syncer does once a period."""
        with contextlib.suppress(StorageIOError):
            self.live.sync_current_wal()

    @rule()
    def sync(self) -> None:
        try:
            self.live.sync()
        except StorageIOError:
            return
        marks = self._marks()
        assert self.history.durable_count(marks) == self.history.acked_count()

    def _no_fault(self) -> bool:
        return not self.disk_limited and self.eio is None

    @precondition(lambda self: not self.paused and self._no_fault())
    @rule()
    def pause(self) -> None:
        # Drained first, so that what follows depends on the writes alone. A
        # failure latched just before a fault was cleared is retried.
        def drained() -> bool:
            try:
                self.live.wait_for_compactions(timeout=30)
            except StorageIOError:
                return False
            return True

        wait_until(drained, timeout=30, what="flushes and compactions to finish")
        self.live.pause_background_work()
        self.paused = True

    @precondition(lambda self: self.paused)
    @rule()
    def resume(self) -> None:
        self.live.continue_background_work()
        self.paused = False

    def _burst(self, writes: list[tuple[bytes, bytes]], tick_every: int) -> None:
        """Puts under load: the syncer ticks after every ``tick_every`` of
        them (never if 0); a paused engine takes them while it has room."""
        for n, (key, value) in enumerate(writes, 1):
            self._put(key, value)
            if tick_every and n % tick_every == 0:
                self.tick()

    @rule(
        writes=bursts_st,
        tick_every=st.integers(min_value=0, max_value=6),
    )
    def burst(self, writes: list[tuple[bytes, bytes]], tick_every: int) -> None:
        self._burst(writes, tick_every)

    # -- restarts and crashes -------------------------------------------------------
    def _open(self) -> None:
        """Open after a restart. Faults end with the restart whether or not
        the open hit them, so that the model's flags, which preconditions
        read, never depend on timing."""
        self.paused = False
        try:
            self.db = DB.open(DB_DIR, self.options)
        except StorageIOError:
            # Opening writes a new WAL and manifest; with a fault in force it
            # must fail cleanly and succeed once the fault is gone.
            assert self.disk_limited or self.eio is not None
            self._clear_faults()
            self.db = DB.open(DB_DIR, self.options)
        self._clear_faults()

    def _clear_faults(self) -> None:
        self.fs.space_limit = None
        self.fs.fail = None
        self.disk_limited = False
        self.eio = None

    @rule()
    def reopen(self) -> None:
        self.live.close()
        self._open()
        self.check(self.history.acked_count())

    @rule()
    def kill(self) -> None:
        """A killed process: what reached the OS stays, nothing is lost."""
        self.live.kill()
        self._open()
        self.check(self.history.acked_count())

    def _marks(self) -> dict[str, int]:
        paths = {w.wal for w in self.history.writes if w.wal is not None}
        return {p: self.fs.synced_high_water(p) for p in paths}

    def _power_cut(self, tear: bool) -> None:
        """Kill the process, cut the power (unless an armed crash already
        did), restart and check: every write an fsync covered is there."""
        if self.db is not None:
            self.db.kill()
        lowest = self.history.durable_count(self._marks())
        self._clear_faults()
        if self.fs.down:
            self.fs.restart()
        else:
            self.fs.crash(tear=tear)
        self._open()
        self.check(lowest, settle=True)

    @rule(tear=st.booleans())
    def crash(self, tear: bool) -> None:
        self._power_cut(tear)

    @rule(
        work=st.sampled_from(["writes", "flush", "compact", "reopen"]),
        ops=crash_ops_st,
        countdown=countdown_st,
        tear=st.booleans(),
        writes=bursts_st,
        tick_every=st.integers(min_value=0, max_value=6),
        lagging=st.booleans(),
    )
    def crash_inside(
        self,
        *,
        work: str,
        ops: tuple[str, ...],
        countdown: int,
        tear: bool,
        writes: list[tuple[bytes, bytes]],
        tick_every: int,
        lagging: bool,
    ) -> None:
        """A power cut inside ``work`` (or right after it, if it makes fewer
        than ``countdown`` such operations); with ``lagging``, flushes are
        held back meanwhile (as on a slow disk), so WALs of immutable
        memtables wait while the syncer ticks on the current one."""
        lag = lagging and not self.paused and self._no_fault()
        if lag:
            self.pause()
        if self.paused and work in ("flush", "compact"):
            work = "writes"
        self.fs.crash_at(ops, countdown, tear)
        try:
            if work == "writes":
                self._burst(writes, tick_every)
            elif work == "reopen":
                self.live.close()
                self.db = None
                self.paused = False
                self.db = DB.open(DB_DIR, self.options)
            else:
                with contextlib.suppress(StorageIOError):
                    getattr(self.live, "flush" if work == "flush" else "compact_range")()
        except StorageIOError:
            assert self.fs.down or self.eio is not None or self.disk_limited
        finally:
            self.fs.disarm()
        lagged = " behind a paused flush" if self.paused else ""
        event(f"power cut {'inside' if self.fs.down else 'after'} {work}{lagged}")
        self._power_cut(tear)

    # -- faults -----------------------------------------------------------------------
    @precondition(lambda self: not self.paused and self._no_fault())
    @rule(headroom=st.integers(min_value=0, max_value=6000))
    def disk_fills(self, headroom: int) -> None:
        self.disk_limited = True
        self.fs.space_limit = self.fs.used_bytes() + headroom

    @precondition(lambda self: not self.paused and self._no_fault())
    @rule(op=eio_ops_st, name_part=eio_files_st, skip=st.integers(min_value=0, max_value=5))
    def eio_starts(self, op: str, name_part: str, skip: int) -> None:
        """From the ``skip``-th next matching operation on, every ``op`` on a
        file whose name holds ``name_part`` fails with EIO."""
        self.eio = (op, name_part)
        seen = [0]

        def hook(what: str, path: str) -> int | None:
            if what != op or name_part not in os.path.basename(path):
                return None
            seen[0] += 1
            return errno.EIO if seen[0] > skip else None

        self.fs.fail = hook

    @precondition(lambda self: self.disk_limited or self.eio is not None)
    @rule()
    def fault_cleared(self) -> None:
        """Space comes back, or the failing device recovers: writes resume
        without a restart."""
        self._clear_faults()
        acked = self.history.acked_count

        def writable() -> bool:
            before = acked()
            self._put(PROBE, b"")
            return acked() > before

        wait_until(writable, timeout=10, what="writes to resume after the fault cleared")

    # -- checks --------------------------------------------------------------------------
    def check(self, lowest: int, settle: bool = False) -> None:
        """The database holds the state after some prefix of the writes that
        is at least ``lowest`` long; reads by key agree with the scan."""
        if self._reads_may_fail():
            self._clear_faults()
        seen = dict(self.live.scan())
        for key in self.history.keys() | set(seen):
            assert self.live.get(key) == seen.get(key), key
        problem = self.history.explain_mismatch(seen, lowest)
        assert problem is None, problem
        if settle:
            self.history.settle(seen)

    @invariant()
    def readable(self) -> None:
        # Reads keep working whatever state the engine is in (unless reads
        # themselves are what fails).
        for key in sorted(self.history.keys())[:3]:
            try:
                assert self.live.get(key) in self.history.possible(key)
            except StorageIOError:
                assert self._reads_may_fail()

    def teardown(self) -> None:
        self._clear_faults()
        if self.db is not None:
            self.db.close()


class IntervalEngineModel(EngineModel):
    FSYNC: FsyncMode = "interval"


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    # Every injected fault logs an error; thousands of them drown a failure.
    caplog.set_level(logging.CRITICAL, logger="lsm")


_EXAMPLES = {"ci": 150, "soak": 5000}.get(os.environ.get("HYPOTHESIS_PROFILE", ""), 25)
_SETTINGS = settings(max_examples=_EXAMPLES, stateful_step_count=40, deadline=None)
EngineModel.TestCase.settings = _SETTINGS
IntervalEngineModel.TestCase.settings = _SETTINGS
TestEngineModelAlways = EngineModel.TestCase
TestEngineModelInterval = IntervalEngineModel.TestCase
