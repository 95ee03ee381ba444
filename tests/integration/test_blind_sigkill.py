"""Blind replica writes killed with SIGKILL lose no acknowledged write
(issue 19.2 and 19.8), under ``fsync="always"`` and ``"interval"``.

A writer process overwrites 40 keys of a ShardStore with plain versions
(SET, and DEL every fifth) whose HLCs grow across rounds, as merge operands
(``write_many``, or ``try_write_many`` first as the worker's event loop
does), and prints each one it got back from the store. A small memtable
makes flushes and compactions (in child processes, where the sibling-set
join is pickled to) run when the kill lands, so operands meet their bases in
every place: memtable, level-0 tables, reads across levels, compactions.
After each kill the store is reopened: every key must show the newest
acknowledged write to it, or a newer one the writer made but could not
report before the kill, and hold exactly one version (plain writes supersede older ones)."""

from __future__ import annotations

import os
import random

import pytest

from lsm.options import Options
from shardserver.protocol.hlc import LOGICAL_BITS, make_hlc
from shardserver.protocol.vclock import ActorId
from shardserver.storage import ShardStore
from tests.processes import count_until_killed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = 40
BASE_MS = 1_700_000_000_000

WRITER = r"""
import sys
from lsm.options import Options
from shardserver.protocol.hlc import make_hlc
from shardserver.protocol.versions import plain_version
from shardserver.storage import ShardStore, WriteOp

path, round_no, mode, keys, base = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                    int(sys.argv[4]), int(sys.argv[5]))
store = ShardStore.open(path, range(0, 4), Options(
    fsync=mode, memtable_bytes=32 << 10, target_file_bytes=64 << 10, level1_bytes=256 << 10,
    l0_compaction_trigger=2, compaction_child_min_entries=0))
out = sys.stdout
i = 0
while True:
    n = round_no * 1_000_000 + i
    key = b"k%03d" % (i % keys)
    value = None if i % 5 == 4 else b"%012d" % n * 20
    op = WriteOp(i % 4, key, plain_version(b"writer", make_hlc(base + n), value), "lww")
    if i % 2 or not store.try_write_many([op]):
        store.write_many([op])
    out.write(f"{n}\n")
    out.flush()
    i += 1
"""


def _round(path: str, round_no: int, rng: random.Random, mode: str) -> int:
    """One writer killed after a random number of writes; the last n it
    acknowledged."""
    stop_at = round_no * 1_000_000 + rng.randint(1, 600)
    args = [path, str(round_no), mode, str(KEYS), str(BASE_MS)]
    return count_until_killed(WRITER, args, stop_at)


def _key_of(n: int) -> tuple[int, bytes]:
    i = n % 1_000_000
    return i % 4, b"k%03d" % (i % KEYS)


@pytest.mark.parametrize("mode", ["always", "interval"])
def test_sigkill_loses_no_acknowledged_blind_write(tmp_path: str, mode: str) -> None:
    path = os.path.join(tmp_path, "store")
    rng = random.Random(20261124)
    newest: dict[tuple[int, bytes], int] = {}  # key -> newest acknowledged n
    acked_by_round: dict[int, int] = {}
    for round_no in range(12):
        acked = _round(path, round_no, rng, mode)
        acked_by_round[round_no] = acked
        for n in range(round_no * 1_000_000, acked + 1):
            newest[_key_of(n)] = n
        store = ShardStore.open(path, range(0, 4), Options(fsync="always"))
        try:
            for (p, key), n in newest.items():
                got = store.read(p, key)
                assert len(got) == 1, (key, got)
                v = got[0]
                m = (v.hlc >> LOGICAL_BITS) - BASE_MS
                assert v.hlc == make_hlc(BASE_MS + m) and v.actor == ActorId(b"writer"), v
                # The newest acknowledged write, or a newer one to this key
                # that the writer did but could not report before the kill.
                assert m == n or (m > n and _key_of(m) == (p, key)
                                  and m > acked_by_round[m // 1_000_000]), (key, n, m)
                want = None if m % 1_000_000 % 5 == 4 else b"%012d" % m * 20
                assert v.value == want, key
        finally:
            store.close()
