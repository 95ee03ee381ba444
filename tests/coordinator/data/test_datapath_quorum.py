"""The data path against a fake cluster, in process: three replicas (real
ShardStores answering through the wire codec) behind a fake Router that can
take a replica down, make it read-only or hold its answers. Reads, writes,
read repair, the READONLY mapping, late acks and NOQUORUM before sending."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cluster.ring import NodeId
from coordinator.data import quorum, reconcile
from coordinator.data.clock import Clock
from coordinator.data.datapath import DataPath
from coordinator.data.quorum import Consistency, Plan
from coordinator.errors import NoQuorumError, ReadOnlyError
from lsm.options import Options
from shardserver.protocol import messages as m
from shardserver.protocol.errors import ShardUnavailable
from shardserver.protocol.vclock import make_actor
from shardserver.storage import ShardStore
from tests.coordinator.stores import call_store, run

Q = 4
NODES = (NodeId("n1"), NodeId("n2"), NodeId("n3"))


class FakeRouter:
    """What the data path asks of the Router, over in-process replicas."""

    def __init__(self, root: Path) -> None:
        self.stores = {n: ShardStore.open(str(root / n), range(Q), Options(fsync="never"))
                       for n in NODES}
        self.down: set[str] = set()  # the plan routes around them
        self.broken: set[str] = set()  # planned, but the call fails
        self.read_only: set[str] = set()
        self.held: set[str] = set()  # answers wait for release()
        self.sent: list[tuple[str, str]] = []
        self._waiting: list[tuple[asyncio.Future[None], str]] = []
        self._tasks: set[asyncio.Task[m.Reply]] = set()

    def plan_for(self, key: bytes) -> tuple[int, Plan]:
        return 0, quorum.plan(NODES, 3, lambda n: n not in self.down)

    async def call(self, node: NodeId, request: m.Request, timeout: float) -> m.Reply:
        self.sent.append((node, m.op_of(request)))
        if node in self.down or node in self.broken:
            raise ShardUnavailable(node, "connect failed")
        if node in self.read_only and isinstance(request, m.ReplicaWrite):
            return m.Reply.error(m.Status.READ_ONLY, "disk full")
        if node in self.held:
            gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append((gate, node))
            await gate
        return await call_store(self.stores[node], request)

    def submit(self, node: NodeId, request: m.Request) -> asyncio.Future[m.Reply]:
        task = asyncio.ensure_future(self.call(node, request, 5.0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def release(self, node: str) -> None:
        for gate, n in list(self._waiting):
            if n == node and not gate.done():
                gate.set_result(None)

    def stored(self, node: str, key: bytes) -> list[bytes | None]:
        return [v.value for v in self.stores[NodeId(node)].read(0, key)]

    def close(self) -> None:
        for s in self.stores.values():
            s.close()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[FakeRouter]:
    with contextlib.closing(FakeRouter(tmp_path)) as r:
        yield r


def datapath(router: FakeRouter, timeout_s: float = 2.0) -> DataPath:
    return DataPath(router, Clock(60_000), make_actor("n1", 7), timeout_s=timeout_s,
                    max_reply_bytes=1 << 20)


async def until(what: str, check: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


def test_a_write_reaches_every_replica_and_a_read_sees_it(router: FakeRouter) -> None:
    async def body() -> None:
        d = datapath(router)
        await d.write(b"k", b"v1", Consistency(w=3), lww=True)
        assert all(router.stored(n, b"k") == [b"v1"] for n in NODES)
        got = await d.read(b"k", Consistency(r=2))
        assert reconcile.get_reply(got) == b"v1"
        assert (d.stats.reads, d.stats.writes) == (1, 1)
        await d.close()

    run(body())


def test_a_stale_replica_gets_the_merged_set_back(router: FakeRouter) -> None:
    async def body() -> None:
        d = datapath(router)
        router.down.add("n3")
        await d.write(b"k", b"new", Consistency(w=2), lww=True)
        router.down.clear()
        assert router.stored("n3", b"k") == []
        got = await d.read(b"k", Consistency(r=1))
        assert reconcile.get_reply(got) == b"new"
        await until("n3 repaired", lambda: router.stored("n3", b"k") == [b"new"])
        assert d.stats.read_repairs == 1
        assert ("n3", "write_set") in router.sent
        await d.close()

    run(body())


def test_read_only_replicas_alone_make_it_readonly(router: FakeRouter) -> None:
    async def body() -> None:
        d = datapath(router)
        router.read_only.update({"n2", "n3"})
        with pytest.raises(ReadOnlyError) as info:
            await d.write(b"k", b"v", Consistency(w=2), lww=True)
        assert str(info.value) == ("READONLY disk full or I/O error on n2: disk full; "
                                   "n3: disk full")
        router.read_only.discard("n3")
        router.broken.add("n3")
        with pytest.raises(NoQuorumError, match="n2 primary read-only: disk full"):
            await d.write(b"k", b"v", Consistency(w=2), lww=True)
        assert d.stats.noquorum_writes == 2
        await d.close()

    run(body())


def test_acks_after_the_reply_are_counted_late(router: FakeRouter) -> None:
    async def body() -> None:
        d = datapath(router)
        router.held.update({"n2", "n3"})
        await d.write(b"k", b"v", Consistency(w=1), lww=True)  # n1 alone answered
        assert router.stored("n2", b"k") == [] and d.stats.late_acks == 0
        router.release("n2")
        router.release("n3")
        await until("the late acks", lambda: d.stats.late_acks == 2)
        assert router.stored("n3", b"k") == [b"v"]
        await d.close()

    run(body())


def test_too_few_up_is_noquorum_with_nothing_sent(router: FakeRouter) -> None:
    async def body() -> None:
        d = datapath(router)
        router.down.update({"n2", "n3"})
        with pytest.raises(NoQuorumError, match="only 1 up, nothing sent"):
            await d.write(b"k", b"v", Consistency(w=2), lww=True)
        with pytest.raises(NoQuorumError, match="nothing sent"):
            await d.read(b"k", Consistency(r=2))
        assert router.sent == []
        await d.close()

    run(body())


def test_a_replica_that_never_answers_is_named_timeout(router: FakeRouter) -> None:
    async def body() -> None:
        d = datapath(router, timeout_s=0.3)
        router.held.update({"n2", "n3"})
        with pytest.raises(NoQuorumError, match="n2 primary timeout"):
            await d.write(b"k", b"v", Consistency(w=2), lww=True)
        router.release("n2")
        router.release("n3")
        await d.close()

    run(body())
