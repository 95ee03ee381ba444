"""Gossip over real peer connections on loopback: membership converges, a
stopped node is marked down by the phi detector, and comes back up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from coordinator.cluster.endpoints import Endpoint, MemberStatus
from coordinator.cluster.failure_detector import DetectorSettings
from coordinator.cluster.gossip import Gossiper
from coordinator.cluster.peer import peer_client
from coordinator.cluster.peer_server import PeerServer
from coordinator.cluster.ring import NodeId
from shardserver.protocol import messages as m
from shardserver.protocol.client import ShardClient

SECRET = b"s"
FAST = DetectorSettings(first_interval_s=0.05, min_std_dev_s=0.02, acceptable_pause_s=0.05)


def run(coro: Coroutine[Any, Any, None], timeout_s: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout_s))


class Member:
    def __init__(self, name: str) -> None:
        self.name = name
        self.clients: dict[str, ShardClient] = {}
        self.gossip: Gossiper | None = None
        self.server = PeerServer(name, SECRET, self.handle)

    async def handle(self, peer: str, req: m.Request) -> m.Reply:
        assert self.gossip is not None and isinstance(req, m.Gossip)
        return m.Reply(m.Status.OK, self.gossip.receive(req.payload))

    async def send(self, addr: str, payload: dict[str, Any]) -> dict[str, Any]:
        client = self.clients.setdefault(addr, peer_client(addr, self.name, SECRET, timeout_s=1))
        reply = await client.call(m.Gossip(payload), timeout=1)
        assert reply.ok, reply.message
        result: dict[str, Any] = reply.payload
        return result

    async def start(self, seeds: list[str]) -> None:
        await self.server.start()
        me = Endpoint(NodeId(self.name), time.time_ns(), 0, MemberStatus.UP, "c", self.addr, 0)
        self.gossip = Gossiper(me, seeds, self.send, interval_s=0.05, settings=FAST)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()
        await self.server.stop()


async def until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def test_members_converge_and_liveness_follows_heartbeats() -> None:
    async def go() -> None:
        a, b, c = Member("a"), Member("b"), Member("c")
        await a.start([])
        await b.start([a.addr])
        await c.start([a.addr])
        tasks = [asyncio.create_task(x.gossip.run()) for x in (a, b, c) if x.gossip]
        try:
            gs = [x.gossip for x in (a, b, c) if x.gossip]
            await until("everyone knows everyone",
                        lambda: all(set(g.members) == {"a", "b", "c"} for g in gs))
            await until("everyone up", lambda: all(g.is_up(NodeId(n)) for g in gs
                                                   for n in "abc"))
            tasks[2].cancel()  # c stops gossiping (a pause or a crash)
            await until("c marked down", lambda: not gs[0].is_up(NodeId("c"))
                        and not gs[1].is_up(NodeId("c")))
            assert gs[0].phi(NodeId("c")) >= FAST.threshold
            tasks[2] = asyncio.create_task(gs[2].run())
            await until("c back up", lambda: gs[0].is_up(NodeId("c")))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for x in (a, b, c):
                await x.close()

    run(go())
