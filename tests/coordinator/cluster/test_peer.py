"""Peer RPC over real TCP sockets on 127.0.0.1: handshake, batching, and a
server that survives garbage, handler bugs and overload, and can restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import msgpack
import pytest

from coordinator.cluster import peer_auth
from coordinator.cluster.peer import HELLO, VERSION, PeerAuthError, open_peer, peer_client
from coordinator.cluster.peer_server import PeerServer
from shardserver.protocol import codec
from shardserver.protocol import messages as m
from shardserver.protocol.client import ShardClient
from shardserver.protocol.errors import ShardUnavailable
from shardserver.protocol.messages import Reply, Status

SECRET = b"cluster secret"


@pytest.fixture(autouse=True)
def no_loop_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Errors asyncio logs (a callback or a task that failed) fail the test."""
    yield
    errors = [r.getMessage() for r in caplog.get_records("call")
              if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not errors


def run(coro: Coroutine[Any, Any, None], timeout_s: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout_s))


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll a condition no event signals; the test's own timeout bounds it."""
    while not predicate():
        await asyncio.sleep(0.005)


class Handler:
    """Echoes reads and gossip; ``b"boom"`` raises, ``b"block"`` waits for ``release``."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, peer_id: str, req: m.Request) -> Reply:
        self.seen.append(peer_id)
        match req:
            case m.ReplicaRead(key=b"boom"):
                raise RuntimeError("boom")
            case m.ReplicaRead(key=b"block"):
                await self.release.wait()
                return Reply(Status.OK, None)
            case m.ReplicaRead():
                return Reply(Status.OK, None)
            case m.Gossip(payload=payload):
                return Reply(Status.OK, {"seen": payload})
            case m.Ping():
                return Reply(Status.OK, {"ready": True})
        return Reply(Status.BAD_REQUEST, "unexpected request")


@contextlib.asynccontextmanager
async def serving(handler: Handler, **kwargs: Any) -> AsyncIterator[PeerServer]:
    server = PeerServer("n1", SECRET, handler, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def addr(server: PeerServer) -> str:
    return f"127.0.0.1:{server.port}"


def frame(obj: object) -> bytes:
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    return codec.HEADER.pack(len(payload)) + payload


async def read_replies(reader: asyncio.StreamReader, count: int) -> dict[int, Reply]:
    decoder = codec.FrameDecoder()
    replies: dict[int, Reply] = {}
    while len(replies) < count:
        data = await reader.read(1 << 16)
        assert data, "connection closed early"
        decoder.feed(data)
        for payload in decoder.frames():
            replies.update(codec.decode_replies(payload))
    return replies


def test_round_trip_of_500_concurrent_calls_is_batched() -> None:
    async def body() -> None:
        handler = Handler()
        async with serving(handler) as server, peer_client(addr(server), "n2", SECRET) as c:
            requests: list[m.Request] = [
                m.Gossip({"i": i}) if i % 2 else m.ReplicaRead(i % 8, b"k%d" % i)
                for i in range(500)
            ]
            replies = await asyncio.gather(*(c.call(r) for r in requests))
            for i, reply in enumerate(replies):
                assert reply == Reply(Status.OK, {"seen": {"i": i}} if i % 2 else None)
            assert c.frames_sent <= 5 and c.frames_received <= 5
            assert handler.seen == ["n2"] * 500
            assert server.connections == 1 and server.refused == 0

    run(body())


def test_wrong_secret_is_refused_and_surfaces_as_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        handler = Handler()
        async with serving(handler) as server, peer_client(addr(server), "n2", b"guess") as c:
            with pytest.raises(ShardUnavailable, match="refused") as info:
                await c.call(m.Ping())
            assert "does not know the cluster secret" in str(info.value)
            assert server.refused == 1 and server.connections == 0 and handler.seen == []
            with pytest.raises(PeerAuthError, match="refused us"):
                await open_peer("127.0.0.1", server.port, "n3", b"guess")
            assert server.refused == 2

    run(body())
    refusals = [r.getMessage() for r in caplog.records if r.name == "ringkv.peer"]
    assert any("127.0.0.1" in msg and "'n2'" in msg for msg in refusals), refusals


def test_a_server_without_the_secret_is_refused_by_the_client() -> None:
    """A process on a peer's port that does not know the secret (a stale
    node of another cluster, a squatter) must not be believed: it could
    answer reads with anything. It accepts every answer and says "ok"."""
    answers: list[list[Any]] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frame([HELLO, VERSION, peer_auth.new_nonce()]))
        header = await reader.readexactly(codec.HEADER.size)
        answers.append(msgpack.unpackb(await reader.readexactly(codec.HEADER.unpack(header)[0])))
        their_nonce = answers[-1][2]
        writer.write(frame(["ok", "n1", peer_auth.answer(b"guess", their_nonce, "n1",
                                                         peer_auth.SERVER)]))
        await writer.drain()
        await reader.read()
        writer.close()

    async def body() -> None:
        server = await asyncio.start_server(impostor, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(PeerAuthError, match="does not know the cluster secret"):
                await open_peer("127.0.0.1", port, "n2", SECRET)
            # The client sent its own nonce for the server to answer.
            assert len(answers) == 1 and len(answers[0][2]) == peer_auth.NONCE_BYTES
        finally:
            server.close()
            await server.wait_closed()

    run(body())


def test_a_protocol_1_answer_is_refused_with_the_reason() -> None:
    async def body() -> None:
        async with serving(Handler()) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                header = await reader.readexactly(codec.HEADER.size)
                hello = msgpack.unpackb(await reader.readexactly(codec.HEADER.unpack(header)[0]))
                writer.write(frame(["n2", peer_auth.answer(SECRET, hello[2], "n2")]))
                rest = await reader.read()
                assert b"refused" in rest and b"peer protocol 3" in rest
            finally:
                writer.close()
            assert server.refused == 1

    run(body())


JUNK = random.Random(7).randbytes(64)


@pytest.mark.parametrize(
    ("authenticate", "garbage"),
    [
        (False, b"\xff\xff\xff\xff" + JUNK),  # huge length instead of the answer
        (True, b"\xff\xff\xff\xff" + JUNK),  # huge length after the handshake
        (True, codec.HEADER.pack(len(JUNK)) + JUNK),  # a frame of random bytes
        (True, frame(7)),  # msgpack, but not an array of envelopes
    ],
    ids=["pre-auth-huge-length", "huge-length", "random-bytes", "not-an-array"],
)
def test_garbage_closes_only_that_connection(authenticate: bool, garbage: bytes) -> None:
    async def body() -> None:
        async with serving(Handler()) as server, peer_client(addr(server), "n2", SECRET) as c:
            assert (await c.call(m.Ping())).ok
            if authenticate:
                reader, writer = await open_peer("127.0.0.1", server.port, "n3", SECRET)
            else:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                if authenticate and garbage != frame(7):
                    writer.transport.write(garbage)  # past the tagging: raw bytes
                else:
                    writer.write(garbage)
                rest = await reader.read()  # up to EOF: the server closed it
                assert (b"refused" in rest) is not authenticate
            finally:
                writer.close()
            assert server.refused == (0 if authenticate else 1)
            assert (await c.call(m.Gossip({"after": 1}))).payload == {"seen": {"after": 1}}
            assert server.connections == 1

    run(body())


def test_handler_error_becomes_internal_and_connection_survives() -> None:
    async def body() -> None:
        async with serving(Handler()) as server:
            connects = 0

            async def connector() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                nonlocal connects
                connects += 1
                return await open_peer("127.0.0.1", server.port, "n2", SECRET)

            async with ShardClient("peer test", connector=connector, timeout_s=5.0) as c:
                boom, ok, gossip = await asyncio.gather(
                    c.call(m.ReplicaRead(0, b"boom")), c.call(m.ReplicaRead(0, b"fine")),
                    c.call(m.Gossip({"x": 1})),
                )
                assert boom == Reply(Status.INTERNAL, "RuntimeError: boom")
                assert ok == Reply(Status.OK, None) and gossip.ok
                assert (await c.call(m.ReplicaRead(1, b"again"))).ok
                assert connects == 1 and server.connections == 1

    run(body())


def test_bad_envelope_gets_bad_request_under_its_id_only() -> None:
    async def body() -> None:
        async with serving(Handler()) as server:
            reader, writer = await open_peer("127.0.0.1", server.port, "n2", SECRET)
            try:
                writer.write(frame([[1, "nope", []], [2, "read", [0, b"k"]], [3, "read", [0]]]))
                replies = await read_replies(reader, 3)
            finally:
                writer.close()
            assert replies[1].status is Status.BAD_REQUEST and "unknown op" in replies[1].message
            assert replies[2] == Reply(Status.OK, None)
            assert replies[3].status is Status.BAD_REQUEST and "2 args" in replies[3].message

    run(body())


def test_requests_over_the_inflight_limit_get_overloaded_at_once() -> None:
    async def body() -> None:
        handler = Handler()
        async with (
            serving(handler, max_inflight_per_connection=2) as server,
            peer_client(addr(server), "n2", SECRET, timeout_s=10.0) as c,
        ):
            calls = [asyncio.ensure_future(c.call(m.ReplicaRead(0, b"block"))) for _ in range(5)]
            await eventually(lambda: sum(f.done() for f in calls) == 3)
            assert [f.result().status for f in calls if f.done()] == [Status.OVERLOADED] * 3
            handler.release.set()
            assert [r.status for r in await asyncio.gather(*calls)].count(Status.OK) == 2

    run(body())


def test_stop_fails_a_connected_client_promptly() -> None:
    async def body() -> None:
        handler = Handler()
        async with serving(handler) as server, peer_client(addr(server), "n2", SECRET) as c:
            blocked = asyncio.ensure_future(c.call(m.ReplicaRead(0, b"block"), timeout=10.0))
            await eventually(lambda: len(handler.seen) == 1)
            started = time.monotonic()
            await server.stop()
            assert time.monotonic() - started < 3.0
            with pytest.raises(ShardUnavailable, match="closed"):
                await blocked
            with pytest.raises(ShardUnavailable, match="connect failed"):
                await c.call(m.Ping())

    run(body())


def test_client_reconnects_to_a_peer_restarted_on_the_same_port() -> None:
    async def body() -> None:
        first, second = Handler(), Handler()
        async with serving(first) as server, peer_client(addr(server), "n2", SECRET) as c:
            assert (await c.call(m.Ping())).ok
            await server.stop()
            await eventually(lambda: not c.connected)  # the reader saw EOF
            async with serving(second, port=server.port) as again:
                assert (await c.call(m.Gossip({"n": 2}))).payload == {"seen": {"n": 2}}
                assert second.seen == ["n2"] and again.connections == 1

    run(body())


def test_a_dead_peer_is_not_redialled_until_its_backoff_passed() -> None:
    async def body() -> None:
        handler = Handler()
        async with serving(handler) as server:
            port = server.port
        async with peer_client(f"127.0.0.1:{port}", "n2", SECRET) as c:
            with pytest.raises(ShardUnavailable, match="connect failed"):
                await c.call(m.Ping())
            with pytest.raises(ShardUnavailable, match="not retrying for"):
                await c.call(m.Ping())  # no second connect right away
            async with serving(handler, port=port):
                deadline = time.monotonic() + 5
                while True:  # found again once the backoff (at most 2 s) passed
                    try:
                        assert (await c.call(m.Ping())).ok
                        break
                    except ShardUnavailable:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)

    run(body())


def test_stalled_handshakes_time_out_and_peers_past_the_limit_are_refused() -> None:
    async def body() -> None:
        async with serving(Handler(), max_connections=1, handshake_timeout_s=0.3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                rest = await reader.read()  # hello, then a refusal once 0.3 s passed
            finally:
                writer.close()
            assert b"refused" in rest and b"within 0.3s" in rest and server.refused == 1
            # One authenticated connection allowed: the second is refused, saying why.
            async with peer_client(addr(server), "n2", SECRET) as first:
                assert (await first.call(m.Ping())).ok
                with pytest.raises(PeerAuthError, match="1 peer connections open"):
                    await open_peer("127.0.0.1", server.port, "n3", SECRET)
            await eventually(lambda: server.connections == 0)
            async with peer_client(addr(server), "n3", SECRET) as again:
                assert (await again.call(m.Ping())).ok

        # A server that never sends its challenge: the client gives up too.
        writers: list[asyncio.StreamWriter] = []
        silent = await asyncio.start_server(lambda r, w: writers.append(w), "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        try:
            with pytest.raises(TimeoutError, match="no challenge"):
                await open_peer("127.0.0.1", port, "n2", SECRET, timeout_s=0.2)
        finally:
            for w in writers:
                w.close()
            silent.close()
            await silent.wait_closed()

    run(body())


@pytest.mark.parametrize("bad", ["nohost", "h:", ":1", "h:99999", "h:x"])
def test_peer_client_rejects_a_malformed_address(bad: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        peer_client(bad, "n2", SECRET)


def test_a_peer_connects_from_the_source_address_it_is_given() -> None:
    async def body() -> None:
        seen: list[str] = []

        async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            seen.append(w.get_extra_info("peername")[0])
            w.close()

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with contextlib.suppress(OSError, PeerAuthError, TimeoutError):
                await open_peer("127.0.0.1", port, "n2", SECRET, 2.0, source="127.0.0.7")
            await eventually(lambda: bool(seen))
            assert seen == ["127.0.0.7"]
        finally:
            server.close()
            await server.wait_closed()

    run(body())
