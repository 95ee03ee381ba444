"""A compaction child whose engine was killed stops, removes its outputs, and
its file numbers are never handed out again.

Regression test: after a SIGKILL of the engine process (a shard worker killed
with -9), its compaction child (``python -m lsm.table_writer``) went on writing
tables under file numbers that were reserved only in the dead process's
memory, for seconds with 8 MiB outputs. The restarted engine handed the same
numbers out again (seen: both wrote 000022.sst and 000023.sst), so whichever
wrote last could replace a table the new manifest referenced.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys

import pytest

from lsm.db import DB
from lsm.fs import OsFileSystem
from lsm.manifest import read_current, read_manifest
from lsm.options import Options
from tests.lsm.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENGINE = r"""
import sys
from lsm.db import DB
from lsm.options import Options

options = Options(memtable_bytes=4 << 20, target_file_bytes=32 << 10, fsync="never",
                  l0_compaction_trigger=100, l0_slowdown_trigger=100, l0_stop_trigger=100)
db = DB.open(sys.argv[1], options)
# One table per round (a round fits in one memtable), and the fourth flush
# makes one compaction due: it is the last thing to take file numbers.
for r in range(4):
    for i in range(9000):
        db.put(b"k%d-%06d" % (r, i), b"%d" % i * 12)
    if r == 3:
        db.set_options(l0_compaction_trigger=4)
    db.flush()
print("compacting", flush=True)
sys.stdin.read()  # until killed
"""


def _tables(path: str) -> set[int]:
    return {int(n[:-4]) for n in os.listdir(path) if n.endswith(".sst")}


def _manifest(path: str) -> tuple[set[int], int]:
    """(tables the manifest references, the next file number it records)."""
    fs = OsFileSystem()
    live: set[int] = set()
    next_file = 0
    for edit in read_manifest(fs, os.path.join(path, read_current(fs, path))):
        live |= {f.number for _, f in edit.added}
        live -= {number for _, number in edit.deleted}
        if edit.next_file_number is not None:
            next_file = edit.next_file_number
    return live, next_file


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_compaction_child_of_a_killed_engine_stops_and_its_numbers_stay_reserved(
    tmp_path: str,
) -> None:
    path = os.path.join(tmp_path, "db")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    engine = subprocess.Popen(
        [sys.executable, "-c", ENGINE, path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )
    children: list[int] = []
    try:
        assert engine.stdout is not None
        assert engine.stdout.readline() == b"compacting\n"

        def child_started() -> bool:
            for name in glob.glob(f"/proc/{engine.pid}/task/*/children"):
                with open(name) as f:
                    children.extend(int(pid) for pid in f.read().split())
            return bool(children)

        wait_until(child_started, timeout=30, what="the compaction child to start")
        flushed = _tables(path)
        seen: set[int] = set()

        def child_wrote() -> bool:
            seen.update(_tables(path) - flushed)
            return bool(seen)

        wait_until(child_wrote, timeout=30, what="the compaction child's first output")
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=10)

        def child_gone() -> bool:
            seen.update(_tables(path) - flushed)
            return not any(_running(pid) for pid in children)

        wait_until(child_gone, timeout=20, what="the orphaned compaction child to stop")
        live, next_file = _manifest(path)
        assert live == flushed
        assert _tables(path) == flushed, "the orphaned child left its outputs behind"
        assert max(seen) < next_file, (
            f"the child wrote table {max(seen)} but a restart would hand out {next_file}"
        )
        with DB.open(path, Options(compaction_in_process=False)) as db:
            assert db.new_file_number() >= next_file
            assert db.get(b"k3-008999") == b"8999" * 12
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait(timeout=10)
        for pipe in (engine.stdin, engine.stdout):
            if pipe is not None:
                pipe.close()
        for pid in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
