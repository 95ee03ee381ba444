from __future__ import annotations

import errno
import logging
import os

import pytest

from lsm.batch import WriteBatch
from lsm.db import DB
from lsm.errors import (
    ClosedError,
    CorruptionError,
    DiskFullError,
    InvalidArgumentError,
    LockedError,
    StorageIOError,
)
from lsm.faultfs import FaultFileSystem
from lsm.options import Decision, Options
from tests.lsm.helpers import wait_until


def small(**kw: object) -> Options:
    base: dict[str, object] = dict(
        memtable_bytes=8192, block_bytes=1024, target_file_bytes=16384,
        level1_bytes=32768, level_fanout=4, l0_compaction_trigger=2, num_levels=4,
    )
    base.update(kw)
    return Options(**base)  # type: ignore[arg-type]


def test_put_get_delete_scan_and_reopen(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "db")
    with DB.open(path, small()) as db:
        for i in range(2000):
            db.put(b"k%05d" % i, b"v%d" % i)
        for i in range(0, 2000, 3):
            db.delete(b"k%05d" % i)
        b = WriteBatch()
        b.put(b"k00000", b"back")
        b.delete(b"k00001")
        db.write(b)
        assert db.get(b"k00000") == b"back"
        assert db.get(b"k00001") is None
        assert db.get(b"k00002") == b"v2"
        assert db.get(b"missing") is None
        db.flush()
        assert db.stats()["levels"][0]["files"] + db.stats()["levels"][1]["files"] > 0
    with DB.open(path, small()) as db:
        items = list(db.scan(b"k00000", b"k00010"))
        assert items == [
            (b"k00000", b"back"), (b"k00002", b"v2"), (b"k00004", b"v4"),
            (b"k00005", b"v5"), (b"k00007", b"v7"), (b"k00008", b"v8"),
        ]
        assert sum(1 for _ in db.scan()) == 2000 - 667 - 1 + 1


def test_compaction_settles_and_drops_overwrites(tmp_path: str) -> None:
    with DB.open(os.path.join(tmp_path, "db"), small()) as db:
        for rnd in range(5):
            for i in range(1500):
                db.put(b"key%05d" % i, b"%d" % rnd * 20)
        db.compact_range()
        db.wait_for_compactions()
        stats = db.stats()
        assert stats["levels"][0]["files"] == 0
        entries = sum(lv["entries"] for lv in stats["levels"])
        assert entries == 1500
        assert all(v == b"4" * 20 for _, v in db.scan())


def test_compaction_filter_drops_and_replaces(tmp_path: str) -> None:
    def flt(key: bytes, value: bytes) -> tuple[int, bytes | None]:
        if key.startswith(b"drop"):
            return Decision.DROP, None
        if key.startswith(b"swap"):
            return Decision.REPLACE, b"swapped"
        return Decision.KEEP, None

    with DB.open(os.path.join(tmp_path, "db"), small(compaction_filter=flt)) as db:
        for i in range(300):
            db.put(b"drop%03d" % i, b"x")
            db.put(b"swap%03d" % i, b"y")
            db.put(b"keep%03d" % i, b"z")
        db.compact_range()
        assert db.get(b"drop001") is None
        assert db.get(b"swap001") == b"swapped"
        assert db.get(b"keep001") == b"z"
        assert db.stats()["counters"]["compaction_filtered"] >= 300


def test_tombstones_reach_the_bottom_and_vanish(tmp_path: str) -> None:
    with DB.open(os.path.join(tmp_path, "db"), small()) as db:
        for i in range(1000):
            db.put(b"t%04d" % i, b"v" * 50)
        db.compact_range()
        for i in range(1000):
            db.delete(b"t%04d" % i)
        db.compact_range()
        stats = db.stats()
        assert sum(lv["entries"] for lv in stats["levels"]) == 0
        assert list(db.scan()) == []


def test_second_open_is_refused_and_closed_db_raises(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "db")
    db = DB.open(path, small())
    with pytest.raises(LockedError):
        DB.open(path, small())
    db.close()
    with pytest.raises(ClosedError):
        db.get(b"x")
    with pytest.raises(ClosedError):
        db.put(b"x", b"y")


def test_disk_full_turns_read_only_then_resumes_without_restart() -> None:
    fs = FaultFileSystem()
    with DB.open("/db", small(fs=fs)) as db:
        for i in range(200):
            db.put(b"a%04d" % i, b"v" * 100)
        fs.space_limit = fs.used_bytes() + 500
        with pytest.raises(DiskFullError) as info:
            for i in range(1000):
                db.put(b"b%04d" % i, b"w" * 100)
        assert "disk full" in str(info.value)
        assert db.get(b"a0001") == b"v" * 100  # still readable
        assert db.stats()["read_only"]
        fs.space_limit = None

        def resumed() -> bool:
            try:
                db.put(b"after", b"ok")
            except DiskFullError:
                return False
            return True

        wait_until(resumed, timeout=10, what="writes to resume")
        db.flush()
        assert db.get(b"after") == b"ok"
    with DB.open("/db", small(fs=fs)) as db:
        assert db.get(b"a0199") == b"v" * 100
        assert db.get(b"after") == b"ok"


def test_eio_on_flush_latches_and_clears(caplog: pytest.LogCaptureFixture) -> None:
    fs = FaultFileSystem()
    failing = {"on": True}
    fs.fail = lambda op, path: errno.EIO if failing["on"] and path.endswith(".sst") else None
    caplog.set_level(logging.CRITICAL, logger="lsm")
    with DB.open("/db", small(fs=fs, max_immutable_memtables=1)) as db:
        with pytest.raises(StorageIOError):
            for i in range(5000):
                db.put(b"k%05d" % i, b"v" * 100)
        failing["on"] = False
        wait_until(lambda: not db.stats()["read_only"], timeout=10, what="flush retry")
        db.put(b"later", b"1")
        assert db.get(b"k00001") == b"v" * 100


def test_corrupt_manifest_reference_is_reported(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "db")
    with DB.open(path, small()) as db:
        for i in range(500):
            db.put(b"k%04d" % i, b"v" * 40)
        db.flush()
    sst = sorted(n for n in os.listdir(path) if n.endswith(".sst"))[0]
    os.remove(os.path.join(path, sst))
    with pytest.raises(CorruptionError) as info:
        DB.open(path, small())
    assert sst.split(".")[0].lstrip("0") in str(info.value) and "missing" in str(info.value)


def test_invalid_arguments_are_rejected(tmp_path: str) -> None:
    with DB.open(os.path.join(tmp_path, "db"), small()) as db:
        with pytest.raises(ValueError):
            db.put("text", b"x")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            db.put(b"k" * 70000, b"x")


def test_sync_makes_every_handed_over_write_durable() -> None:
    fs = FaultFileSystem()
    db = DB.open("/db", small(fs=fs, fsync="never"))
    db.put(b"k", b"v")
    db.sync()
    db.kill()
    fs.crash()
    with DB.open("/db", small(fs=fs)) as again:
        assert again.get(b"k") == b"v"


def _drop_doomed(key: bytes, value: bytes) -> tuple[int, bytes | None]:
    return (Decision.DROP, None) if key.startswith(b"doomed") else (Decision.KEEP, None)


def test_bottommost_compaction_runs_the_filter_over_bottom_level_data(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "db")
    with DB.open(path, small()) as db:
        for i in range(300):
            db.put(b"doomed%03d" % i, b"x" * 50)
            db.put(b"kept%03d" % i, b"y" * 50)
        db.compact_range()  # everything now sits at the bottom level
        db.set_options(compaction_filter=_drop_doomed)
        db.compact_range()
        assert db.get(b"doomed001") == b"x" * 50  # bottom files were not rewritten
        db.compact_range(bottommost=True)
        assert db.get(b"doomed001") is None and db.get(b"kept001") == b"y" * 50
        assert [k for k, _ in db.scan()] == [b"kept%03d" % i for i in range(300)]
        assert db.stats()["counters"]["compaction_filtered"] >= 300


def test_set_options_changes_run_time_knobs_and_refuses_the_rest(tmp_path: str) -> None:
    with DB.open(os.path.join(tmp_path, "db"), small(memtable_bytes=1 << 20)) as db:
        for i in range(200):
            db.put(b"k%04d" % i, b"v" * 100)
        assert db.stats()["counters"].get("flushes", 0) == 0
        db.set_options(memtable_bytes=4096)
        db.put(b"next", b"v")  # the full memtable is switched at the next write
        db.wait_for_compactions()
        assert db.stats()["counters"]["flushes"] >= 1
        assert db.options.memtable_bytes == 4096

        refused = {
            "num_levels": (5, "cannot change while the database is open"),
            "no_such_knob": (1, "unknown option 'no_such_knob'"),
            "memtable_bytes": ("big", "memtable_bytes must be an int"),
            "compaction_filter": (3, "compaction_filter must be a callable or None"),
            "l0_slowdown_trigger": (1, "l0_compaction_trigger <= l0_slowdown_trigger"),
            "compaction_nice": (20, "compaction_nice must be 0..19"),
            "flush_nice": (3, "cannot change while the database is open"),
            "compaction_child_min_entries": (-1, "compaction_child_min_entries must be >= 0"),
        }
        for name, (value, message) in refused.items():
            with pytest.raises(InvalidArgumentError, match=message):
                db.set_options(**{name: value})
        with pytest.raises(InvalidArgumentError):  # one bad knob: none changes
            db.set_options(level_fanout=8, memtable_bytes=100)
        assert (db.options.level_fanout, db.options.memtable_bytes) == (4, 4096)
        with pytest.raises(AttributeError):  # frozen: changes go through set_options
            db.options.memtable_bytes = 1 << 20  # type: ignore[misc]
        assert db.get(b"k0007") == b"v" * 100
