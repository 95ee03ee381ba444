"""The peer port against strangers, over real sockets on 127.0.0.0/8: idle
half-open connections cannot lock peers or operators out, an empty secret
is refused, and operator requests are logged with their source."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import msgpack
import pytest

from coordinator.cluster import peer_auth
from coordinator.cluster.peer import open_peer, peer_client
from coordinator.cluster.peer_gate import HandshakeGate, LogBudget
from coordinator.cluster.peer_server import PeerServer
from shardserver.protocol import codec
from shardserver.protocol import messages as m
from shardserver.protocol.messages import Reply, Status

SECRET = b"cluster secret"
IDLE_SOCKETS = 300  # more than the 256 that locked admins out before


async def handler(peer_id: str, req: m.Request) -> Reply:
    if isinstance(req, m.Admin):
        return Reply(Status.OK, {"asked": req.payload["cmd"]})
    if isinstance(req, m.Ping):
        return Reply(Status.OK, {"ready": True})
    return Reply(Status.OK, None)


def run(coro: Coroutine[Any, Any, None], timeout_s: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout_s))


async def idle_sockets(port: int, count: int, host: str = "127.0.0.1",
                       ) -> list[asyncio.StreamWriter]:
    """``count`` connections that never answer the challenge."""
    writers = []
    for _ in range(count):
        _, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
        writers.append(w)
    return writers


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        w.close()


async def read_frame(reader: asyncio.StreamReader) -> Any:
    header = await reader.readexactly(codec.HEADER.size)
    return msgpack.unpackb(await reader.readexactly(codec.HEADER.unpack(header)[0]))


def frame(obj: object) -> bytes:
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    return codec.HEADER.pack(len(payload)) + payload


def test_300_idle_sockets_do_not_lock_out_an_admin_command() -> None:
    """The idle sockets stay open the whole time, and the handshake timeout
    is long: only the handshake pool of its own keeps the port usable."""

    async def body() -> None:
        server = PeerServer("n1", SECRET, handler, handshake_timeout_s=30.0)
        await server.start()
        idle: list[asyncio.StreamWriter] = []
        try:
            idle = await idle_sockets(server.port, IDLE_SOCKETS)
            started = time.monotonic()
            async with peer_client(f"127.0.0.1:{server.port}", "admin-cli", SECRET,
                                   timeout_s=5.0) as admin:
                reply = await admin.call(m.Admin({"cmd": "status"}))
            took = time.monotonic() - started
            assert reply == Reply(Status.OK, {"asked": "status"})
            assert took < 2.0, f"admin command took {took:.2f}s"
            assert server.gate.pending <= server.gate.limit == 32
            assert server.gate.dropped >= IDLE_SOCKETS - 32
            assert all(not w.is_closing() for w in idle)  # still connected on our side
        finally:
            close_all(idle)
            await server.stop()

    run(body())


def test_a_flood_from_one_address_evicts_itself_not_a_peer_from_another() -> None:
    """A real peer that is slow to answer (here: it answers only after the
    flood) keeps its slot: the busiest source address pays for the room."""

    async def body() -> None:
        server = PeerServer("n1", SECRET, handler, handshake_timeout_s=30.0, max_handshakes=8)
        await server.start()
        flood: list[asyncio.StreamWriter] = []
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port,
                                                       local_addr=("127.0.0.2", 0))
        try:
            hello = await read_frame(reader)
            flood = await idle_sockets(server.port, 100, host="127.0.0.3")
            while server.gate.dropped < 100 - 8:  # the server took in the whole flood
                await asyncio.sleep(0.005)
            mine = peer_auth.new_nonce()
            writer.write(frame(["n2", peer_auth.answer(SECRET, hello[2], "n2"), mine]))
            verdict = await read_frame(reader)
            assert verdict[0] == "ok", verdict
            peer_auth.verify(SECRET, mine, verdict[1], verdict[2], peer_auth.SERVER)
            assert server.connections == 1
        finally:
            writer.close()
            close_all(flood)
            await server.stop()

    run(body())


def test_the_handshake_has_one_1s_deadline_by_default() -> None:
    async def body() -> None:
        server = PeerServer("n1", SECRET, handler)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            started = time.monotonic()
            hello = await read_frame(reader)
            # Half an answer (a header promising more) does not extend it.
            writer.write(codec.HEADER.pack(40) + b"\x93")
            verdict = await read_frame(reader)
            took = time.monotonic() - started
            writer.close()
            assert hello[0] == "ringkv-peer"
            assert verdict == ["refused", "peer handshake: no answer within 1.0s"]
            assert 0.9 < took < 3.0, took
        finally:
            await server.stop()

    run(body())


def test_a_peer_server_refuses_an_empty_secret_unless_told() -> None:
    with pytest.raises(ValueError, match="needs a cluster secret"):
        PeerServer("n1", b"", handler)

    async def body() -> None:
        server = PeerServer("n1", b"", handler, allow_empty_secret=True)
        await server.start()
        try:  # what --insecure-no-secret means: anyone gets in
            _, writer = await open_peer("127.0.0.1", server.port, "stranger", b"")
            writer.close()
        finally:
            await server.stop()

    run(body())


def test_operator_requests_are_logged_with_source_and_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ringkv.peer")

    async def body() -> None:
        server = PeerServer("n1", SECRET, handler)
        await server.start()
        try:
            async with peer_client(f"127.0.0.1:{server.port}", "admin-cli", SECRET,
                                   source="127.0.0.9") as c:
                assert (await c.call(m.Admin({"cmd": "remove", "remove": "n3"}))).ok
                assert (await c.call(m.DropPartition(0, 4))).ok
                assert (await c.call(m.Ping())).ok
        finally:
            await server.stop()

    run(body())
    lines = [r.getMessage() for r in caplog.records if "admin request" in r.getMessage()]
    assert len(lines) == 4, lines  # asked and answered, for each of the two
    assert all("peer admin-cli at 127.0.0.9:" in line for line in lines)
    assert "'remove': 'n3'" in lines[0] and "OK" in lines[1]
    assert "DropPartition(partition=0, count=4" in lines[2]


def test_the_gate_drops_the_oldest_of_the_busiest_address_then_the_oldest() -> None:
    async def body() -> None:
        gate = HandshakeGate(3)
        dropped: list[tuple[str, str | None]] = []

        async def handshake(host: str) -> None:
            ticket = None
            try:
                async with asyncio.timeout(60) as deadline:
                    ticket = gate.admit(host, deadline)
                    await asyncio.Event().wait()
            except TimeoutError:
                assert ticket is not None
                dropped.append((host, ticket.dropped))
                gate.release(ticket)

        tasks = []
        for host in ("a", "b1", "b2", "c", "d"):
            tasks.append(asyncio.create_task(handshake(host[0])))
            await asyncio.sleep(0)  # admitted, in this order
            while len(dropped) < gate.dropped:
                await asyncio.sleep(0)
        # c came in: b (two pending) paid; d: all even, so the oldest (a) did.
        assert [h for h, _ in dropped] == ["b", "a"] and gate.pending == 3
        assert dropped[0][1] == "3 peer handshakes pending, most from b: dropped the oldest"
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(body())


def test_log_budget_keeps_a_few_lines_per_window_and_counts_the_rest() -> None:
    now = [100.0]
    budget = LogBudget(per_window=3, window_s=1.0, clock=lambda: now[0])
    assert [budget.take() for _ in range(10)] == [True] * 3 + [False] * 7
    assert budget.left_out() == 0  # reported once the window closed
    now[0] += 1.5
    assert budget.take() and budget.left_out() == 7 and budget.left_out() == 0
