"""Supervisor pieces that need no processes: partition ranges and the pool API."""

from __future__ import annotations

from pathlib import Path

from shardserver.protocol.pool import WorkerPool, partition_ranges
from shardserver.supervisor import Supervisor


def test_supervisor_satisfies_the_worker_pool_protocol(tmp_path: Path) -> None:
    pool: WorkerPool = Supervisor(str(tmp_path), str(tmp_path), 64, workers=3)
    assert [pool.worker_for(p) for p in (0, 20, 21, 63)] == [0, 0, 1, 2]
    assert partition_ranges(64, 3) == [range(0, 21), range(21, 42), range(42, 64)]
    assert sum(len(r) for r in partition_ranges(5, 4)) == 5
