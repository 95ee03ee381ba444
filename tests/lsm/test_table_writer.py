"""Compactions in a child process: results, errors and abort."""

from __future__ import annotations

import dataclasses
import os

import pytest

from lsm import filenames, table_writer
from lsm.db import DB
from lsm.errors import CorruptionError
from lsm.fs import OsFileSystem
from lsm.keys import KIND_DELETE, KIND_VALUE
from lsm.options import Options
from lsm.sstable import TableBuilder, TableReader


def _table(dirname: str, number: int, entries: list[tuple[bytes, int, int, bytes]]) -> None:
    f = OsFileSystem().create(filenames.table_path(dirname, number))
    builder = TableBuilder(f, Options(block_bytes=512))
    for entry in entries:
        builder.add(*entry)
    builder.finish()
    f.sync()
    f.close()


def _job(dirname: str, bottommost: bool) -> table_writer.CompactionJob:
    newer = [(b"k%03d" % i, 1000 + i, KIND_VALUE, b"new%d" % i) for i in range(0, 200, 2)]
    newer.append((b"k999", 2000, KIND_DELETE, b""))
    older = [(b"k%03d" % i, i + 1, KIND_VALUE, b"old%d" % i) for i in range(200)]
    older.append((b"k999", 5, KIND_VALUE, b"gone"))
    _table(dirname, 1, newer)
    _table(dirname, 2, older)
    options = Options(block_bytes=512, target_file_bytes=2048)
    return table_writer.CompactionJob(dirname, ((1,), (2,)), bottommost, 10, 40, options)


def _outputs(dirname: str) -> list[str]:
    return sorted(n for n in os.listdir(dirname) if n.endswith(".sst") and n not in
                  (filenames.table_name(1), filenames.table_name(2)))


def test_child_merges_newest_first_and_drops_tombstones_at_the_bottom(tmp_path: str) -> None:
    dirname = str(tmp_path)
    out = table_writer.run_in_child(_job(dirname, bottommost=True), lambda: False)
    assert len(out.files) > 1  # split at the target size
    assert [filenames.table_name(f.number) for f in out.files] == _outputs(dirname)
    merged = []
    for meta in out.files:
        reader = TableReader.open(OsFileSystem(), filenames.table_path(dirname, meta.number))
        merged += [(k, v) for k, _, _, v in reader.iter()]
        reader.close()
    expected = [(b"k%03d" % i, (b"new%d" if i % 2 == 0 else b"old%d") % i) for i in range(200)]
    assert merged == expected  # k999's tombstone and the value it hid are gone
    assert out.dropped_tombstones == 1


def test_child_runs_at_the_compaction_niceness(tmp_path: str) -> None:
    # The processes serving requests get the CPU first; the compaction the rest.
    job = _job(str(tmp_path), bottommost=True)
    job = dataclasses.replace(job, options=dataclasses.replace(job.options, compaction_nice=7))
    out = table_writer.run_in_child(job, lambda: False)
    assert out.nice == min(19, os.nice(0) + 7)
    assert out.files


def test_flush_and_compaction_threads_run_niced_and_the_caller_does_not(tmp_path: str) -> None:
    """Linux niceness is per thread: the engine's background threads take
    flush_nice and compaction_nice, the thread that opened the database
    (a worker's event loop) keeps its own."""
    import threading
    import time

    me = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    db = DB.open(os.path.join(tmp_path, "db"), Options(flush_nice=3, compaction_nice=9))
    try:
        def niceness() -> dict[str, int]:
            return {t.name: os.getpriority(os.PRIO_PROCESS, t.native_id)
                    for t in threading.enumerate()
                    if t.name in ("lsm-flush", "lsm-compact") and t.native_id is not None}

        deadline = time.monotonic() + 10
        while niceness() != {"lsm-flush": max(me, 3), "lsm-compact": max(me, 9)}:
            assert time.monotonic() < deadline, niceness()
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == me
    finally:
        db.close()


def test_child_and_thread_write_the_same_entries(tmp_path: str) -> None:
    a, b = os.path.join(tmp_path, "a"), os.path.join(tmp_path, "b")
    os.makedirs(a)
    os.makedirs(b)
    in_child = table_writer.run_in_child(_job(a, bottommost=False), lambda: False)
    job = _job(b, bottommost=False)
    fs = OsFileSystem()
    readers = {n: TableReader.open(fs, filenames.table_path(b, n)) for n in (1, 2)}
    in_thread = table_writer.execute(job, fs, readers.__getitem__, lambda: False)
    for r in readers.values():
        r.close()
    strip = [(f.number, f.smallest, f.largest, f.entries, f.tombstones) for f in in_child.files]
    assert strip == [(f.number, f.smallest, f.largest, f.entries, f.tombstones)
                     for f in in_thread.files]


def test_abort_kills_the_child_and_removes_its_outputs(tmp_path: str) -> None:
    dirname = str(tmp_path)
    job = _job(dirname, bottommost=True)
    # Enough input that the child is still busy at the first abort check.
    _table(dirname, 2, [(b"k%06d" % i, i + 1, KIND_VALUE, b"v" * 64) for i in range(60000)])
    polls: list[int] = []

    def abort() -> bool:
        polls.append(1)
        return True

    with pytest.raises(table_writer.Aborted):
        table_writer.run_in_child(job, abort)
    assert polls == [1]
    assert _outputs(dirname) == []


def test_corrupt_input_comes_back_as_corruption_error(tmp_path: str) -> None:
    dirname = str(tmp_path)
    job = _job(dirname, bottommost=True)
    path = filenames.table_path(dirname, 2)
    with open(path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptionError) as info:
        table_writer.run_in_child(job, lambda: False)
    assert info.value.path == path and info.value.offset == 0
    assert _outputs(dirname) == []


def test_small_compactions_run_in_process_big_ones_in_a_child(tmp_path: str) -> None:
    # A child's start-up costs more CPU than merging a few thousand entries.
    for threshold, in_child in ((10_000, False), (0, True)):
        path = os.path.join(tmp_path, f"db{threshold}")
        with DB.open(path, Options(compaction_child_min_entries=threshold)) as db:
            for i in range(300):
                db.put(b"k%04d" % i, b"v")
                if i % 100 == 99:
                    db.flush()
            db.compact_range(bottommost=True)
            counters = db.stats()["counters"]
            assert counters["compactions"] >= 1
            assert (counters.get("compactions_in_child", 0) >= 1) is in_child
            assert dict(db.scan()) == {b"k%04d" % i: b"v" for i in range(300)}
