"""FLUSHALL on a cluster whose nodes run different numbers of workers.

Regression (issue 14): the coordinator split the ring by its own worker
count and sent those ranges to every node, so a node with another split
answered NOT_SERVED and FLUSHALL failed. Now each node drops its own
workers' ranges (the FlushAll peer request)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, wait_for

pytestmark = pytest.mark.integration

WORKERS = (2, 3, 1)
KEYS = [f"fa{i}" for i in range(300)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("flushall")), nodes=3, n=3, workers=2)
    for member, workers in zip(c.members, WORKERS, strict=True):
        text = member.config.read_text()
        member.config.write_text(text.replace("workers = 2", f"workers = {workers}"))
    try:
        c.start()
        yield c
    finally:
        c.close()


def test_each_node_runs_its_own_worker_count(cluster: Cluster) -> None:
    assert [int(cluster.info(i, "storage")["workers"]) for i in range(3)] == list(WORKERS)


@pytest.mark.parametrize("asked", [0, 1, 2])
def test_flushall_drops_every_key_on_every_node_whoever_is_asked(
    cluster: Cluster, asked: int
) -> None:
    r = cluster.client(asked, socket_timeout=60)  # FLUSHALL compacts on every node
    r.mset({k: "v" for k in KEYS})
    wait_for("DBSIZE counts the keys", lambda: r.dbsize() >= len(KEYS), 15)
    assert r.flushall() is True
    for i in range(3):
        c = cluster.client(i)
        assert all(c.execute_command("GET", k, "R", 3) is None for k in KEYS[:50])
    wait_for("DBSIZE after FLUSHALL", lambda: r.dbsize() == 0, 15)
