"""Handoff against in-process replicas (real ShardStores behind a fake host,
every request through the wire codec and the worker's dispatch): expired
hints keep their data, a drop refused by the write fence hints the copy
again, and the sweep finds copies nobody hinted (issue 13, points 1-2)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.cluster import ring as ringmod
from coordinator.cluster.ring import NodeId, Ring
from coordinator.config import NodeConfig
from coordinator.repair.handoff import Handoff
from coordinator.repair.hints import Hint, HintStore
from lsm.options import Options
from shardserver.protocol import messages as m
from shardserver.protocol.errors import ShardUnavailable
from shardserver.protocol.hlc import make_hlc
from shardserver.protocol.vclock import ActorId, VClock
from shardserver.protocol.versions import Version
from shardserver.storage import ShardStore
from tests.coordinator.stores import call_store, run

Q = 8
ME, OWNER = NodeId("n1"), NodeId("n2")
W = ActorId(b"writer#1")


def ver(i: int) -> Version:
    hlc = make_hlc(1_700_000_000_000 + i)
    return Version(VClock.of({W: hlc}), hlc, W, b"v%d" % i)


class Host:
    """Node n1 (the fallback) of a two-node N=1 ring, with n2's store."""

    def __init__(self, root: Path) -> None:
        self.id = ME
        self.ring: Ring | None = ringmod.claim([(ME, None), (OWNER, None)], Q, 1)
        self.timeout_s = 5.0
        self.hints = HintStore(str(root))
        self.stores = {n: ShardStore.open(str(root / n), range(Q), Options(fsync="never"))
                       for n in (ME, OWNER)}
        self.down: set[str] = set()
        self.refusing = False  # the owner answers writes READ_ONLY
        self.before_drop: list[Any] = []  # callables run as a drop reaches the worker
        self.sent_to_owner = 0

    def is_up(self, node: NodeId) -> bool:
        return node not in self.down

    async def retarget(self, hint: Hint) -> None:
        raise AssertionError("no node is removed here")

    async def call(self, node: NodeId, request: m.Request, timeout: float) -> m.Reply:
        if node in self.down:
            raise ShardUnavailable(node, "down")
        if node == OWNER and isinstance(request, m.ReplicaWriteSet):
            self.sent_to_owner += 1
            if self.refusing:
                return m.Reply.error(m.Status.READ_ONLY, "disk full")
        if isinstance(request, m.DropPartition):
            while self.before_drop:
                self.before_drop.pop()()
        return await call_store(self.stores[node], request)

    async def local(self, request: m.Request, timeout: float) -> m.Reply:
        return await self.call(ME, request, timeout)

    def owned_partition(self) -> int:
        assert self.ring is not None
        return next(p for p in range(Q) if ringmod.primaries(self.ring, p) == (OWNER,))

    def keys(self, node: NodeId, p: int) -> set[bytes]:
        return {k for k, _ in self.stores[node].scan(p, limit=10_000).items}

    def close(self) -> None:
        for s in self.stores.values():
            s.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with contextlib.closing(Host(tmp_path)) as h:
        yield h


def handoff_of(host: Host) -> Handoff:
    return Handoff(host, host.hints, NodeConfig(max_hint_window_s=1, throttle_bytes_per_s=1 << 30))


async def settle(handoff: Handoff, host: Host, ticks: int = 200) -> None:
    """Tick until no hint is left and no transfer runs (bounded)."""
    for _ in range(ticks):
        await handoff.tick()
        if not len(host.hints) and not handoff.running:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"hints left: {host.hints.all()}")


def hinted_writes(host: Host, p: int, n: int, since_ms: int) -> set[bytes]:
    keys = {b"k%d" % i for i in range(n)}
    run(host.hints.add(p, OWNER, since_ms))
    for i, k in enumerate(sorted(keys)):
        host.stores[ME].write(p, k, ver(i))
    return keys


def test_an_expired_hint_keeps_its_copy_and_is_handed_off_when_the_owner_is_back(
    host: Host,
) -> None:
    p = host.owned_partition()
    keys = hinted_writes(host, p, 50, int(time.time() * 1000) - 10_000)
    host.down.add(OWNER)
    handoff = handoff_of(host)

    async def go() -> None:
        await handoff.tick()
        [hint] = host.hints.all()
        assert hint.expired and host.hints.expired == 1
        assert handoff.backlog()[OWNER].expired == 1
        assert host.keys(ME, p) == keys  # nothing dropped
        host.down.clear()
        await settle(handoff, host)

    run(go())
    assert host.keys(OWNER, p) == keys
    assert host.keys(ME, p) == set() and handoff.dropped_partitions == 1


def test_an_expired_hint_is_retried_slowly_and_at_once_when_its_owner_comes_back(
    host: Host,
) -> None:
    p = host.owned_partition()
    hinted_writes(host, p, 5, int(time.time() * 1000) - 10_000)
    host.refusing = True
    handoff = handoff_of(host)

    async def go() -> None:
        for _ in range(100):  # the first try fails
            await handoff.tick()
            if handoff.failed:
                break
            await asyncio.sleep(0.01)
        assert handoff.failed == 1
        sent = host.sent_to_owner
        for _ in range(20):  # parked: no retry burst
            await handoff.tick()
            await asyncio.sleep(0.01)
        assert host.sent_to_owner == sent and handoff.failed == 1
        host.refusing = False
        handoff.owner_back(OWNER)
        await settle(handoff, host)

    run(go())
    assert len(host.keys(OWNER, p)) == 5


def test_a_write_after_the_last_pass_refuses_the_drop_and_is_handed_off_too(
    host: Host,
) -> None:
    p = host.owned_partition()
    keys = hinted_writes(host, p, 20, int(time.time() * 1000))
    # A coordinator on a stale ring writes to n1 after the handoff's last
    # pass, just before the drop: no hint covers it.
    host.before_drop.append(lambda: host.stores[ME].write(p, b"late", ver(99)))
    handoff = handoff_of(host)
    run(settle(handoff, host))
    assert handoff.drops_refused == 1 and handoff.dropped_partitions == 1
    assert host.keys(OWNER, p) == keys | {b"late"}
    assert host.keys(ME, p) == set()


def test_the_sweep_hints_a_copy_nobody_hinted(host: Host) -> None:
    p = host.owned_partition()
    for i in range(10):
        host.stores[ME].write(p, b"stray-%d" % i, ver(i))
    handoff = handoff_of(host)

    async def go() -> None:
        assert await handoff.sweep() == 1
        assert [(h.partition, h.owner) for h in host.hints.all()] == [(p, OWNER)]
        await settle(handoff, host)
        assert await handoff.sweep() == 0

    run(go())
    assert len(host.keys(OWNER, p)) == 10 and host.keys(ME, p) == set()
    assert handoff.strays_found == 1
