from __future__ import annotations

import errno
import os

import pytest

from lsm.errors import DiskFullError, LockedError, StorageIOError
from lsm.faultfs import FaultFileSystem
from lsm.fs import OsFileSystem


def test_os_fs_round_trip_and_atomic_replace(tmp_path: os.PathLike[str]) -> None:
    fs = OsFileSystem()
    path = os.path.join(tmp_path, "a")
    f = fs.create(path)
    f.append(b"hello ")
    f.append(b"world")
    assert f.size() == 11
    f.sync()
    f.close()
    r = fs.open_read(path)
    assert r.read_at(6, 100) == b"world"
    r.close()
    fs.write_file_atomic(path, b"new")
    assert fs.read_file(path) == b"new"
    assert not fs.exists(path + ".tmp")


def test_os_fs_lock_is_exclusive(tmp_path: os.PathLike[str]) -> None:
    fs = OsFileSystem()
    lock = fs.lock(os.path.join(tmp_path, "LOCK"))
    with pytest.raises(LockedError):
        # flock is per open file description, so a second open conflicts
        fs.lock(os.path.join(tmp_path, "LOCK"))
    lock.release()
    fs.lock(os.path.join(tmp_path, "LOCK")).release()


def test_crash_drops_unsynced_data_and_unsynced_names() -> None:
    fs = FaultFileSystem()
    fs.mkdirs("/db")
    f = fs.create("/db/a")
    f.append(b"durable")
    f.sync()
    fs.sync_dir("/db")
    f.append(b"-lost")
    f.flush()
    g = fs.create("/db/b")  # never made durable by a directory sync
    g.append(b"x")
    g.sync()
    fs.crash()
    assert fs.read_file("/db/a") == b"durable"
    assert not fs.exists("/db/b")
    with pytest.raises(StorageIOError):
        f.append(b"after crash")


@pytest.mark.parametrize("during_write", [False, True])
def test_crash_with_tear_keeps_a_prefix_of_the_last_write(during_write: bool) -> None:
    """Torn by ``crash(tear=True)`` after the write, or by a crash armed to
    fall on the write itself."""
    seen = set()
    for seed in range(30):
        fs = FaultFileSystem(seed)
        fs.mkdirs("/d")
        f = fs.create("/d/wal")
        f.append(b"AAAA")
        f.sync()
        fs.sync_dir("/d")
        f.append(b"BBBBBBBB")
        if during_write:
            fs.crash_at({"write"}, countdown=0, tear=True)
            with pytest.raises(StorageIOError):
                f.flush()
            fs.restart()
        else:
            f.flush()
            fs.crash(tear=True)
        data = fs.read_file("/d/wal")
        assert data.startswith(b"AAAA") and set(data[4:]) <= {ord("B")}
        seen.add(len(data))
    assert len(seen) > 3


def test_rename_is_durable_only_after_directory_sync() -> None:
    fs = FaultFileSystem()
    fs.mkdirs("/d")
    fs.write_file_atomic("/d/CURRENT", b"one")
    f = fs.create("/d/CURRENT.tmp")
    f.append(b"two")
    f.sync()
    fs.rename("/d/CURRENT.tmp", "/d/CURRENT")
    fs.crash()
    assert fs.read_file("/d/CURRENT") == b"one"


def test_space_limit_raises_disk_full_and_recovers() -> None:
    fs = FaultFileSystem()
    fs.mkdirs("/d")
    fs.space_limit = 10
    f = fs.create("/d/x")
    f.append(b"0123456789AB")
    with pytest.raises(DiskFullError) as info:
        f.flush()
    assert "disk full" in str(info.value) and "/d/x" in str(info.value)
    fs.space_limit = None
    f.flush()
    assert fs.read_file("/d/x") == b"0123456789AB"


def test_fault_hook_injects_eio() -> None:
    fs = FaultFileSystem()
    fs.mkdirs("/d")
    fs.fail = lambda op, path: errno.EIO if op == "fsync" else None
    f = fs.create("/d/x")
    f.append(b"x")
    with pytest.raises(StorageIOError) as info:
        f.sync()
    assert not isinstance(info.value, DiskFullError)
    assert info.value.errno == errno.EIO


def test_crash_at_cuts_power_at_the_chosen_operation_and_stays_down() -> None:
    fs = FaultFileSystem()
    fs.mkdirs("/d")
    f = fs.create("/d/wal")
    fs.sync_dir("/d")
    fs.crash_at({"fsync"}, countdown=1)
    f.append(b"one")
    f.sync()  # the first fsync happens
    f.append(b"two")
    with pytest.raises(StorageIOError) as info:
        f.sync()  # the second is where the power goes
    assert info.value.errno == errno.EIO and fs.down
    with pytest.raises(StorageIOError):
        fs.create("/d/other")  # nothing touches the disk while it is down
    with pytest.raises(StorageIOError):
        fs.read_file("/d/wal")
    fs.restart()
    assert fs.read_file("/d/wal") == b"one"
    with pytest.raises(StorageIOError):
        f.append(b"x")  # handles from before the crash stay dead


def test_crash_at_counts_only_the_named_operations_and_can_be_disarmed() -> None:
    fs = FaultFileSystem()
    fs.mkdirs("/d")
    fs.crash_at({"rename"}, countdown=0)
    f = fs.create("/d/t")
    f.append(b"x")
    f.sync()
    fs.disarm()
    fs.rename("/d/t", "/d/u")
    assert not fs.down and fs.exists("/d/u")
    with pytest.raises(ValueError):
        fs.crash_at({"fsnyc"}, countdown=0)


def test_synced_high_water_outlives_removal_until_restart() -> None:
    fs = FaultFileSystem()
    fs.mkdirs("/d")
    f = fs.create("/d/wal")
    f.append(b"12345")
    f.sync()
    f.append(b"678")
    f.flush()
    assert fs.synced_high_water("/d/wal") == 5
    fs.remove("/d/wal")
    assert fs.synced_high_water("/d/wal") == 5
    fs.crash()
    assert fs.synced_high_water("/d/wal") == 0
