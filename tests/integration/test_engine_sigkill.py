"""A writer process killed with SIGKILL loses no acknowledged write, under
``fsync="always"`` and under ``fsync="interval"`` alike: a killed process
has handed every acknowledged write to the OS, which keeps it.

Each write's value is 240 bytes, so that a round of up to 400 writes fills
the 64 KiB memtable a few times: flushes run on the writer's flush thread
and compactions in its child processes when the kill lands."""

from __future__ import annotations

import os
import random

import pytest

from lsm.db import DB
from lsm.options import Options
from tests.processes import count_until_killed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WRITER = r"""
import sys
from lsm.db import DB
from lsm.options import Options
from lsm.batch import WriteBatch

path, round_no, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
db = DB.open(path, Options(fsync=mode, memtable_bytes=64 << 10, target_file_bytes=128 << 10,
                           level1_bytes=512 << 10, l0_compaction_trigger=2,
                           compaction_child_min_entries=0))
out = sys.stdout
i = 0
while True:
    key = b"r%03d-%07d" % (round_no, i)
    if i % 7 == 0:
        b = WriteBatch()
        b.put(key, key * 20)
        b.delete(b"r%03d-%07d" % (round_no, i - 1))
        db.write(b)
    else:
        db.put(key, key * 20)
    out.write(f"{i}\n")
    out.flush()
    i += 1
"""


def _round(path: str, round_no: int, rng: random.Random, mode: str) -> tuple[int, int]:
    target = rng.randint(1, 400)
    return count_until_killed(WRITER, [path, str(round_no), mode], target), target


@pytest.mark.parametrize("mode", ["always", "interval"])
def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path: str, mode: str) -> None:
    path = os.path.join(tmp_path, "db")
    rng = random.Random(20261123)
    acked_by_round = {}
    for round_no in range(20):
        acked, _ = _round(path, round_no, rng, mode)
        acked_by_round[round_no] = acked
        with DB.open(path, Options(fsync="always")) as db:
            for r, last in acked_by_round.items():
                for i in range(last + 1):
                    key = b"r%03d-%07d" % (r, i)
                    deleted_by_batch = (i + 1) % 7 == 0 and i + 1 <= last
                    got = db.get(key)
                    if (i + 1) % 7 == 0 and i == last:
                        # the unacknowledged batch after it may have deleted it
                        assert got in (None, key * 20), key
                    elif deleted_by_batch:
                        assert got is None, key
                    else:
                        assert got == key * 20, (key, got)
