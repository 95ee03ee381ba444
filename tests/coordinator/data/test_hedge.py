"""Reads with ``fanout = "quorum"``: whom they ask, failover, hedging and its
budget (coordinator/data/hedge.py), alone and in the data path over three
in-process replicas."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cluster.ring import NodeId
from coordinator.data import reconcile
from coordinator.data.hedge import HedgeBudget, HedgedReads, PeerLatency
from coordinator.data.quorum import Consistency, Target, read_tally
from coordinator.data.quorum import plan as make_plan
from shardserver.protocol import messages as m
from tests.coordinator.data.test_datapath_quorum import NODES, FakeRouter
from tests.coordinator.data.test_shared_reads import datapath
from tests.coordinator.stores import run


def test_p95_over_the_window() -> None:
    now = [0.0]
    lat = PeerLatency(window_s=10.0, clock=lambda: now[0])
    for _ in range(7):
        lat.observe("a", 0.001)
    assert lat.p95("a") is None  # too few samples
    now[0] += 1
    for _ in range(93):
        lat.observe("a", 0.001)
    for _ in range(7):
        lat.observe("a", 0.2)
    p95 = lat.p95("a")
    assert p95 is not None and 0.2 <= p95 < 0.26  # the bucket's upper edge
    now[0] += 6  # one rotation: still in the window
    assert lat.p95("a") == p95
    now[0] += 10
    assert lat.p95("a") is None  # aged out


def test_the_budget_caps_hedges_at_a_share_of_reads() -> None:
    budget = HedgeBudget(0.1, burst=2)
    taken = sum(budget.take() for _ in range(5))
    assert taken == 2  # the burst
    for _ in range(1000):
        budget.sent(1)
        taken += budget.take()
    assert taken == 2 + 100


def _targets(*primaries: bool) -> list[Target]:
    return [Target(NodeId(f"n{i + 1}"), p) for i, p in enumerate(primaries)]


def test_slow_replicas_last_and_primaries_for_pr() -> None:
    h = HedgedReads(NodeId("n2"), True, 0.1, lambda: None)
    for _ in range(10):
        h.latency.observe("n1", 0.050)
        h.latency.observe("n3", 0.001)
    targets = _targets(True, True, False)
    ordered = h.order(targets)
    assert [t.node for t in ordered] == ["n2", "n3", "n1"]  # us, then plan order; slow last
    plan = make_plan([t.node for t in targets], 3, lambda n: True)
    first, spares = h.first(read_tally(plan, 2, 0), ordered)
    assert [t.node for t in first] == ["n2", "n3"] and [t.node for t in spares] == ["n1"]
    even = HedgedReads(NodeId("n2"), True, 0.1, lambda: None)
    for _ in range(10):
        even.latency.observe("n1", 0.0015)  # within twice the best + 2 ms: not slow
        even.latency.observe("n3", 0.0005)
    assert [t.node for t in even.order(targets)] == ["n2", "n1", "n3"]  # plan order
    first, _ = h.first(read_tally(plan, 2, 2), h.order(plan.targets))
    assert all(t.primary for t in first)
    assert h.delay_s(targets) == pytest.approx(0.001, rel=0.25)


class SlowReads(FakeRouter):
    """Replica reads of the nodes in ``slow`` answer after ``delay_s``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.slow: set[str] = set()
        self.delay_s = 0.3
        self.reads: dict[str, int] = {n: 0 for n in NODES}

    async def call(self, node: NodeId, request: m.Request, timeout: float) -> m.Reply:
        if isinstance(request, m.ReplicaRead):
            self.reads[node] += 1
            if node in self.slow:
                await asyncio.sleep(self.delay_s)
        return await super().call(node, request, timeout)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[SlowReads]:
    with contextlib.closing(SlowReads(tmp_path)) as r:
        yield r


R2 = Consistency(r=2, w=3)


def test_a_quorum_read_asks_r_replicas_and_fails_over(router: SlowReads) -> None:
    async def body() -> None:
        d = datapath(router, me="n1", fanout="quorum", coalesce=False)
        await d.write(b"k", b"v", R2, lww=True)
        assert reconcile.get_reply(await d.read(b"k", R2)) == b"v"
        assert sum(router.reads.values()) == 2
        router.broken.add("n1")
        assert reconcile.get_reply(await d.read(b"k", R2)) == b"v"  # n3 asked instead
        assert router.reads == {"n1": 2, "n2": 2, "n3": 1}
        assert d.stats.hedged_reads == 0
        await d.close()

    run(body())


def test_a_slow_replica_is_hedged_then_avoided(router: SlowReads) -> None:
    async def body() -> None:
        d = datapath(router, me="n1", fanout="quorum", coalesce=False)
        await d.write(b"k", b"v", R2, lww=True)
        for _ in range(20):  # every replica gets figures, all fast
            await d.read(b"k", Consistency(r=3))
        router.slow.add("n2")
        loop = asyncio.get_running_loop()
        took = []
        for _ in range(30):
            started = loop.time()
            assert reconcile.get_reply(await d.read(b"k", R2)) == b"v"
            took.append(loop.time() - started)
        assert max(took) < router.delay_s / 2  # never waited for n2
        assert d.stats.hedged_reads >= 1  # the first reads that asked n2 hedged
        assert d.stats.hedged_reads <= 10  # then n2's p95 sorts it last
        await d.close()

    run(body())


def test_without_hedging_the_slow_replica_sets_the_latency(router: SlowReads) -> None:
    async def body() -> None:
        d = datapath(router, me="n1", fanout="quorum", hedge=False, coalesce=False)
        await d.write(b"k", b"v", R2, lww=True)
        router.slow.add("n2")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await d.read(b"k", R2)  # no figures yet: n1 (us), then n2 in plan order
        assert loop.time() - started >= router.delay_s
        assert d.stats.hedged_reads == 0
        await d.close()

    run(body())
