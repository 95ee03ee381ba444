"""A power cut under ``fsync="interval"`` loses only a suffix of the writes.

Regression tests for two ways a synced write in a newer WAL outlived unsynced
writes in an older one (the recovered state had a hole in the middle), found
by the interval-mode engine state machine (tests/property).
"""

from __future__ import annotations

from lsm.db import DB
from lsm.faultfs import FaultFileSystem
from lsm.options import Options
from tests.lsm.helpers import wait_until


def _options(fs: FaultFileSystem) -> Options:
    # No flush thread: an immutable memtable's WAL stays as the write path
    # left it, as it does while the flush thread is busy with an older one.
    return Options(
        fs=fs, fsync="interval", fsync_interval_ms=3_600_000, wal_bytes_per_sync=0,
        memtable_bytes=4096, background_threads=False,
    )


def _fill_one_memtable(db: DB) -> list[bytes]:
    keys = [b"old%03d" % i for i in range(40)]  # 40 * (6 + 100 + 64) > 4096
    for key in keys:
        db.put(key, b"v" * 100)
    return keys


def _power_cut_and_read(fs: FaultFileSystem, db: DB, keys: list[bytes]) -> dict[bytes, bytes]:
    db.kill()
    fs.crash()
    with DB.open("/db", _options(fs)) as again:
        return {k: v for k in keys if (v := again.get(k)) is not None}


def test_synced_write_after_a_memtable_switch_keeps_the_old_wals_writes() -> None:
    fs = FaultFileSystem()
    db = DB.open("/db", _options(fs))
    keys = _fill_one_memtable(db)
    db.put(b"new", b"after the switch")  # goes to a new WAL
    db.sync_current_wal()  # the interval syncer's tick: the new WAL only
    found = _power_cut_and_read(fs, db, [*keys, b"new"])
    assert b"new" in found
    assert set(found) == {*keys, b"new"}, f"lost {len(keys) + 1 - len(found)} older writes"


def test_synced_write_after_a_restart_keeps_the_replayed_wals_writes() -> None:
    fs = FaultFileSystem()
    db = DB.open("/db", _options(fs))
    keys = [b"k%02d" % i for i in range(10)]
    for key in keys:
        db.put(key, b"v")
    db.kill()  # a process kill: the writes reached the OS, no fsync yet
    db = DB.open("/db", _options(fs))
    db.put(b"new", b"after the restart")
    db.sync_current_wal()
    found = _power_cut_and_read(fs, db, [*keys, b"new"])
    assert set(found) == {*keys, b"new"}, f"lost {len(keys) + 1 - len(found)} older writes"


def test_interval_syncer_also_syncs_once_wal_bytes_per_sync_are_unsynced() -> None:
    """So that the sync a memtable switch needs covers little: with the
    timer an hour away, the byte trigger alone makes the WAL durable."""
    fs = FaultFileSystem()
    options = Options(
        fs=fs, fsync="interval", fsync_interval_ms=3_600_000, wal_bytes_per_sync=4096
    )
    with DB.open("/db", options) as db:
        for i in range(50):
            db.put(b"k%02d" % i, b"v" * 100)
        (wal,) = [n for n in fs.listdir("/db") if n.endswith(".log")]
        path = f"/db/{wal}"
        assert fs.file_size(path) > 4096
        wait_until(
            lambda: fs.synced_high_water(path) >= 4096,
            timeout=10, what="the syncer to sync past wal_bytes_per_sync",
        )
