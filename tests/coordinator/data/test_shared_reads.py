"""Request coalescing and the hot-key cache (coordinator/data/shared_reads.py)
in the data path, over three in-process replicas (real ShardStores) whose
read answers the test can hold back."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cluster.ring import NodeId
from coordinator.data import reconcile
from coordinator.data.clock import Clock
from coordinator.data.datapath import DataPath
from coordinator.data.quorum import Consistency
from coordinator.data.shared_reads import ReadOptions
from shardserver.protocol import messages as m
from shardserver.protocol.vclock import make_actor
from shardserver.protocol.versions import Version
from tests.coordinator.data.test_datapath_quorum import NODES, FakeRouter
from tests.coordinator.stores import run

R2 = Consistency(r=2, w=2)


class ReadGate(FakeRouter):
    """Replica reads asked while ``hold`` is set read the store at once but
    answer only at :meth:`open_gate`; writes go through."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hold = False
        self.reads = 0  # replica reads asked for, held or not
        self._gate = asyncio.Event()

    async def call(self, node: NodeId, request: m.Request, timeout: float) -> m.Reply:
        if not isinstance(request, m.ReplicaRead):
            return await super().call(node, request, timeout)
        self.reads += 1
        gate = self._gate if self.hold else None
        reply = await super().call(node, request, timeout)  # read now, answer later
        if gate is not None:
            await gate.wait()
        return reply

    def close_gate(self) -> None:
        self.hold = True
        self._gate = asyncio.Event()

    def open_gate(self) -> None:
        self.hold = False
        self._gate.set()

    def reads_sent(self) -> int:
        return self.reads


@pytest.fixture
def router(tmp_path: Path) -> Iterator[ReadGate]:
    with contextlib.closing(ReadGate(tmp_path)) as r:
        yield r


def datapath(router: FakeRouter, **options: object) -> DataPath:
    return DataPath(router, Clock(60_000), make_actor("n1", 7), timeout_s=2.0,
                    max_reply_bytes=1 << 20, reads=ReadOptions(**options))  # type: ignore[arg-type]


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def value(siblings: object) -> bytes | None:
    return reconcile.get_reply(siblings)  # type: ignore[arg-type]


def test_concurrent_reads_of_one_key_share_one_quorum_read(router: ReadGate) -> None:
    async def body() -> None:
        d = datapath(router)
        await d.write(b"k", b"v", R2, lww=True)
        router.close_gate()
        reads = [d.read(b"k", R2) for _ in range(10)]
        other = d.read(b"k", Consistency(r=3))  # other levels: a read of its own
        await turns()
        assert router.reads_sent() == 6
        router.open_gate()
        assert [value(await r) for r in reads] == [b"v"] * 10
        assert value(await other) == b"v"
        assert d.stats.coalesced_reads == 9
        await d.close()

    run(body())


def test_a_read_after_an_acknowledged_write_never_joins_an_older_read(
        router: ReadGate) -> None:
    async def body() -> None:
        d = datapath(router)
        await d.write(b"k", b"old", R2, lww=True)
        router.close_gate()
        before = d.read(b"k", R2)  # in flight, will answer "old"
        await turns()
        write = d.write(b"k", b"new", R2, lww=True)
        during = d.read(b"k", R2)  # a write started after `before` did: no join
        await write  # acknowledged
        after = d.read(b"k", R2)  # may join `during`, not `before`
        await turns()
        router.open_gate()
        assert value(await after) == b"new"
        assert value(await during) in (b"old", b"new")
        assert value(await before) == b"old"
        assert d.stats.coalesced_reads <= 1
        await d.close()

    run(body())


def test_no_read_is_older_than_a_write_acknowledged_before_it(router: ReadGate) -> None:
    """Readers and one writer at random on a few keys: each read's value is
    at least the last write of its key acknowledged before it was asked."""
    async def body() -> None:
        d = datapath(router)
        rng = random.Random(15)
        acked = {b"a": 0, b"b": 0}
        for key in acked:
            await d.write(key, b"0", R2, lww=True)
        stale: list[tuple[bytes, int, int]] = []

        async def writer() -> None:
            for i in range(1, 40):
                key = rng.choice(list(acked))
                await d.write(key, str(i).encode(), R2, lww=True)
                acked[key] = i

        async def reader() -> None:
            for _ in range(40):
                key = rng.choice(list(acked))
                floor = acked[key]
                got = int(value(await d.read(key, R2)) or b"-1")
                if got < floor:
                    stale.append((key, floor, got))
                await asyncio.sleep(rng.random() / 1000)

        await asyncio.gather(writer(), *(reader() for _ in range(8)))
        assert stale == []
        assert d.stats.coalesced_reads > 0  # the test did exercise joining
        await d.close()

    run(body())


def test_coalescing_can_be_turned_off(router: ReadGate) -> None:
    async def body() -> None:
        d = datapath(router, coalesce=False)
        router.close_gate()
        reads = [d.read(b"k", R2) for _ in range(3)]
        await turns()
        router.open_gate()
        await asyncio.gather(*reads)
        assert router.reads_sent() == 9 and d.stats.coalesced_reads == 0
        await d.close()

    run(body())


def _write_elsewhere(router: FakeRouter, key: bytes, data: bytes) -> None:
    """A write through another coordinator: straight into every replica."""
    version = reconcile.plain_write(make_actor("n2", 1), Clock(60_000).now(), data)
    for n in NODES:
        router.stores[n].write(0, key, version, "lww")


def test_the_cache_serves_hot_keys_within_cache_ms_only(router: ReadGate) -> None:
    async def body() -> None:
        d = datapath(router, cache_ms=300, hot_reads_per_s=0.1)
        await d.write(b"k", b"v1", R2, lww=True)
        assert value(await d.read(b"k", R2)) == b"v1"  # now hot; cached from here
        assert value(await d.read(b"k", R2)) == b"v1"
        sent = router.reads_sent()
        assert value(await d.read(b"k", R2)) == b"v1"
        assert router.reads_sent() == sent and d.stats.cache_hits >= 1
        # A write through this coordinator is seen at once.
        await d.write(b"k", b"v2", R2, lww=True)
        assert value(await d.read(b"k", R2)) == b"v2"
        # A write elsewhere: seen within cache_ms of the cached read's start.
        started = time.monotonic()
        assert value(await d.read(b"k", R2)) == b"v2"
        _write_elsewhere(router, b"k", b"v3")
        while (got := value(await d.read(b"k", R2))) != b"v3":
            assert got == b"v2"
            assert time.monotonic() - started < 0.3 + 0.05, "stale past cache_ms"
            await asyncio.sleep(0.01)
        assert time.monotonic() - started >= 0.25  # it was the cache that answered
        # R = N and PR > 0 go to the replicas.
        before = d.stats.cache_hits
        _write_elsewhere(router, b"k", b"v4")
        assert value(await d.read(b"k", Consistency(r=3))) == b"v4"
        assert value(await d.read(b"k", Consistency(r=2, pr=1))) == b"v4"
        assert d.stats.cache_hits == before
        await d.close()

    run(body())


def test_a_read_that_raced_a_write_is_not_cached(router: ReadGate) -> None:
    async def body() -> None:
        d = datapath(router, cache_ms=10_000, hot_reads_per_s=0.01)
        await d.write(b"k", b"old", R2, lww=True)
        router.close_gate()
        racing = d.read(b"k", R2)
        await turns()
        await d.write(b"k", b"new", R2, lww=True)
        router.open_gate()
        assert value(await racing) == b"old"
        assert value(await d.read(b"k", R2)) == b"new"
        assert value(await d.read(b"k", R2)) == b"new"
        await d.close()

    run(body())


def test_cold_keys_are_not_cached(router: ReadGate) -> None:
    async def body() -> None:
        d = datapath(router, cache_ms=10_000, hot_reads_per_s=1e6)
        await d.write(b"k", b"v", R2, lww=True)
        for _ in range(3):
            await d.read(b"k", R2)
        assert (d.stats.cache_hits, d.stats.cache_misses) == (0, 0)
        assert router.reads_sent() == 9
        assert isinstance(await d.write(b"k", b"w", R2, lww=True), Version)
        await d.close()

    run(body())
