"""The Router's plan cache: a partition's plan is made once while the ring,
the draining state and the nodes up stay the same (at Q = 4,096 a cache
emptied every 0.2 s made nearly every request plan again), and a node
going down or a new ring is seen within ``PLAN_TTL_S``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.cluster import ring as ringmod
from coordinator.cluster.ring import NodeId, Ring
from coordinator.config import NodeConfig
from coordinator.data import quorum, router
from coordinator.data.router import Router


class Cluster:
    def __init__(self, ring: Ring) -> None:
        self.ring: Ring | None = ring
        self.draining: str | None = None
        self.down: set[str] = set()

    def is_up(self, node: NodeId) -> bool:
        return node not in self.down

    def addr_of(self, node: NodeId) -> str | None:
        return None


def test_plans_are_made_once_per_ring_and_liveness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[int] = []
    real = quorum.plan

    def counting(*args: Any) -> quorum.Plan:
        made.append(1)
        return real(*args)

    monkeypatch.setattr(quorum, "plan", counting)
    clock = [1000.0]
    monkeypatch.setattr(router.time, "monotonic", lambda: clock[0])
    ring = ringmod.claim([("a", None), ("b", None), ("c", None)], 4096, 3)
    cluster = Cluster(ring)
    r = Router(NodeConfig(id="a", data_dir=str(tmp_path), partitions=4096), None,  # type: ignore[arg-type]
               cluster, None, lambda v: None)  # type: ignore[arg-type]
    keys = [b"k%d" % i for i in range(200)]
    first = [r.plan_for(k) for k in keys]
    made_first = len(made)
    assert made_first == len({p for p, _ in first})
    clock[0] += 10 * router.PLAN_TTL_S  # nothing changed: every plan is kept
    assert [r.plan_for(k) for k in keys] == first and len(made) == made_first

    cluster.down.add("b")  # seen at the next refresh, not later
    clock[0] += router.PLAN_TTL_S + 0.01
    _, plan = r.plan_for(keys[0])
    assert plan.down_primaries == ("b",) and len(made) == made_first + 1

    cluster.ring = ringmod.rebalance(ring, ring.nodes)  # a new ring: at once
    r.plan_for(keys[0])
    assert len(made) == made_first + 2
