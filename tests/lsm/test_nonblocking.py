"""``try_write`` and ``get_cached``: the calls a shard worker makes on its
event loop. They must answer at once, and refuse (rather than wait) whenever
the work would block: a lock held across I/O, an fsync, a stall, a read."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from lsm import NOT_CACHED
from lsm.batch import WriteBatch
from lsm.db import DB
from lsm.errors import ClosedError, DiskFullError, InvalidArgumentError, StorageIOError
from lsm.faultfs import FaultFileSystem
from lsm.options import Decision, Options
from tests.lsm.helpers import wait_until
from tests.lsm.merge_ops import AppendOperator

PROMPT_S = 0.5  # "at once", with room for a loaded machine


def small(**kw: object) -> Options:
    base: dict[str, object] = dict(
        memtable_bytes=8192, block_bytes=1024, target_file_bytes=16384,
        level1_bytes=32768, level_fanout=4, l0_compaction_trigger=2, num_levels=4,
        merge_operator=AppendOperator(),
    )
    base.update(kw)
    return Options(**base)  # type: ignore[arg-type]


def _prompt(call: Callable[[], object]) -> object:
    start = time.monotonic()
    result = call()
    assert time.monotonic() - start < PROMPT_S
    return result


class SlowSync:
    """A ``FaultFileSystem.slow`` hook that parks the first thread to fsync
    a path ending in ``suffix`` (outside the file system's lock, so other
    threads' writes go on) until released: a slow disk. Later fsyncs go
    to ``then``, if given."""

    def __init__(self, suffix: str, then: SlowSync | None = None) -> None:
        self.suffix, self.then = suffix, then
        self.reached = threading.Event()
        self.release = threading.Event()
        self.armed = True

    def __call__(self, op: str, path: str) -> None:
        if not (op == "fsync" and path.endswith(self.suffix)):
            return
        if not self.armed:
            if self.then is not None:
                self.then(op, path)
            return
        self.armed = False
        self.reached.set()
        self.release.wait(30)


@pytest.fixture
def memdb() -> Iterator[tuple[DB, FaultFileSystem]]:
    fs = FaultFileSystem()
    db = DB.open("/db", small(fs=fs))
    yield db, fs
    db.close()


def test_try_write_applies_batches_with_merges(memdb: tuple[DB, FaultFileSystem]) -> None:
    db, _ = memdb
    assert db.try_write(WriteBatch().put(b"k", b"base").merge(b"k", b"a").merge(b"m", b"x"))
    assert (db.get(b"k"), db.get(b"m")) == (b"base|a", b"~|x")
    assert db.try_write(WriteBatch())  # nothing to do
    with pytest.raises(InvalidArgumentError, match="keys are bytes"):
        db.try_write(WriteBatch().put("k", b"v"))  # type: ignore[arg-type]


def test_try_write_refuses_when_the_memtable_is_full(memdb: tuple[DB, FaultFileSystem]) -> None:
    db, _ = memdb
    n = 0
    while _prompt(lambda key=b"k%05d" % n: db.try_write(WriteBatch().put(key, b"x" * 100))):
        n += 1
        assert n < 1000, "the memtable never filled up"
    assert db.get(b"k%05d" % n) is None  # the refused batch left nothing behind
    assert db.stats()["counters"]["try_write_refused"] == 1
    db.write(WriteBatch().put(b"k%05d" % n, b"x"))  # a thread's write switches memtables
    assert db.try_write(WriteBatch().put(b"after", b"1"))


def test_try_write_does_not_wait_for_a_lock_held_across_io() -> None:
    fs = FaultFileSystem()
    with DB.open("/db", small(fs=fs, fsync_interval_ms=600_000)) as db:  # no syncer tick
        db.put(b"k", b"v")
        tail = SlowSync(".log")
        fs.slow = first = SlowSync(".log", then=tail)
        flusher = threading.Thread(target=db.flush)
        flusher.start()
        try:
            assert first.reached.wait(10)  # the switch syncs the old WAL, lock let go
            db.put(b"k", b"during")
            first.release.set()
            # ... then syncs what that put added, holding the write lock
            assert tail.reached.wait(10)
            assert _prompt(lambda: db.try_write(WriteBatch().put(b"k", b"new"))) is False
            assert _prompt(lambda: db.get_cached(b"k")) == b"during"  # reads take no lock
        finally:
            first.release.set()
            tail.release.set()
            flusher.join(30)
        assert db.get(b"k") == b"during"
        wait_until(lambda: db.try_write(WriteBatch().put(b"k", b"new")), timeout=10,
                   what="try_write to accept once the lock is free")
        assert db.get(b"k") == b"new"


def test_a_put_goes_on_while_a_memtable_switch_syncs_the_old_wal() -> None:
    """A compaction's flush switches memtables: the old WAL is synced and
    the new one created while writers go on into the old one; the write
    lock is not held across those syncs (it was: puts waited for them)."""
    fs = FaultFileSystem()
    db = DB.open("/db", small(fs=fs, fsync_interval_ms=600_000))  # no syncer tick
    db.put(b"k", b"v")
    slow = SlowSync(".log")
    fs.slow = slow
    flusher = threading.Thread(target=db.flush)
    writer = threading.Thread(target=db.put, args=(b"during", b"switch"))
    flusher.start()
    try:
        assert slow.reached.wait(10), "the flush never synced the old WAL"
        writer.start()
        writer.join(10)
        assert not writer.is_alive(), "the put waited for the old WAL's fsync"
        assert db.get(b"during") == b"switch"
    finally:
        slow.release.set()
        flusher.join(30)
        writer.join(30)
    assert db.stats()["memtable_entries"] == 0  # the put went with the switched memtable
    fs.crash()  # a power cut after the flush: the put made during the switch is kept
    db.kill()
    with DB.open("/db", small(fs=fs)) as again:
        assert (again.get(b"k"), again.get(b"during")) == (b"v", b"switch")


def test_try_write_refuses_an_fsync_of_its_own(tmp_path: str) -> None:
    with DB.open(os.path.join(tmp_path, "db"), small(fsync="always")) as db:
        assert db.try_write(WriteBatch().put(b"k", b"v")) is False
        assert db.get(b"k") is None


def test_try_write_refuses_during_a_level0_slowdown() -> None:
    fs = FaultFileSystem()
    held = threading.Event()
    release = threading.Event()

    def stuck_filter(key: bytes, value: bytes) -> tuple[int, bytes | None]:
        held.set()  # a compaction is running and will not finish before release
        release.wait(30)
        return Decision.KEEP, None

    db = DB.open("/db", small(fs=fs, l0_slowdown_trigger=2, compaction_filter=stuck_filter))
    try:
        for n in range(2):
            db.put(b"k%d" % n, b"v")
            db.flush()
        assert held.wait(10)
        assert db.stats()["l0_files"] == 2
        assert _prompt(lambda: db.try_write(WriteBatch().put(b"x", b"1"))) is False
        assert db.get(b"x") is None
    finally:
        release.set()
    db.wait_for_compactions()
    wait_until(lambda: db.try_write(WriteBatch().put(b"x", b"1")), timeout=10,
               what="try_write to accept again")
    db.close()


def test_try_write_refuses_while_read_only_and_after_close(
    memdb: tuple[DB, FaultFileSystem],
) -> None:
    db, fs = memdb
    fs.space_limit = fs.used_bytes()
    with pytest.raises(DiskFullError):
        db.put(b"k", b"v" * 200)
    assert db.try_write(WriteBatch().put(b"k", b"v")) is False
    fs.space_limit = None

    def resumed() -> bool:
        try:
            db.put(b"probe", b"")
        except StorageIOError:
            return False
        return True

    wait_until(resumed, timeout=10, what="writes to resume")
    # The flush of the memtable the resume switched away from takes the write
    # lock for a moment, and try_write refuses meanwhile: poll.
    wait_until(lambda: db.try_write(WriteBatch().put(b"k", b"v")), timeout=10,
               what="try_write to accept again")
    db.close()
    assert db.try_write(WriteBatch().put(b"k", b"v")) is False
    with pytest.raises(ClosedError):
        db.get_cached(b"k")


def test_get_cached_needs_the_block_in_the_cache(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "db")
    opts = small(bloom_error_rate=1e-6)
    with DB.open(path, opts) as db:
        for i in range(200):
            db.put(b"k%04d" % i, b"v%d" % i)
        db.merge(b"k0007", b"a")
        db.flush()
        db.merge(b"k0007", b"b")
    with DB.open(path, opts) as db:
        # A compaction after the reopen would replace the table whose block
        # the reads below cache (small compactions now run in-process, fast
        # enough to land between a get and the get_cached after it).
        db.pause_background_work()
        assert db.get_cached(b"k0100") is NOT_CACHED  # its table is not even open yet
        assert db.get(b"k0100") == b"v100"  # reads the block and keeps it cached
        assert db.get_cached(b"k0100") == b"v100"
        # operand b is in a memtable, "v7|a" in the first block, not cached yet
        assert db.get_cached(b"k0007") is NOT_CACHED
        assert db.get(b"k0007") == b"v7|a|b"
        assert db.get_cached(b"k0007") == b"v7|a|b"
        assert db.get_cached(b"absent") is None  # the bloom filter says so
        db.put(b"mem", b"m")
        assert db.get_cached(b"mem") == b"m"
        assert db.stats()["counters"]["get_not_cached"] >= 1


def test_get_cached_sees_operands_down_to_their_base(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "db")
    with DB.open(path, small()) as db:
        db.put(b"k", b"base")
        db.compact_range()  # the base goes to level 1
        db.merge(b"k", b"a")
        db.flush()  # an operand in level 0
        db.merge(b"k", b"b")  # and one in the memtable
    with DB.open(path, small()) as db:
        assert db.get_cached(b"k") is NOT_CACHED  # the operands need the base's block
        assert db.get(b"k") == b"base|a|b"
        assert db.get_cached(b"k") == b"base|a|b"
