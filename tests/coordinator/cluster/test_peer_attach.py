"""``attach`` (peer protocol 5) on the peer server, over real sockets: the
connection and its sealed session are handed over whole (the new holder
goes on with the keys and sequence numbers, the server's copy closes
without ending the connection), and every attach the server must refuse
is answered UNAVAILABLE on a connection that goes on with the server."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from coordinator.cluster.peer import AttachRefused, open_peer, peer_client
from coordinator.cluster.peer_versions import VersionRange
from shardserver.protocol import codec
from shardserver.protocol import messages as m
from shardserver.protocol.attach import AttachError, SessionState
from shardserver.protocol.session import SealedReader, SealedWriter
from tests.coordinator.cluster.test_peer import (
    SECRET,
    Handler,
    addr,
    no_loop_errors,  # noqa: F401 - an autouse fixture
    run,
    serving,
)


class FakeWorker:
    """Takes handed-over connections in-process and answers pings on them,
    as a worker does (shardserver.direct), to test the server's half."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.states: list[SessionState] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, worker: int, fd: int, state: SessionState) -> None:
        if self.refuse is not None:
            raise AttachError(self.refuse)
        self.states.append(state)
        sock = socket.socket(fileno=os.dup(fd))  # the server closes its own fd
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        reader = SealedReader(plain_frames=0, limit=1 << 16)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
        reader.seal(state.in_key, state.received)
        writer = SealedWriter(transport, protocol, reader, loop)
        writer.seal(state.out_key, state.sent)
        writer.write(codec.encode_replies([(state.rid, m.Reply(m.Status.OK,
                                                                {"worker": worker}))]))
        task = asyncio.create_task(self._serve(reader, writer))
        self.tasks.add(task)

    async def _serve(self, reader: SealedReader, writer: SealedWriter) -> None:
        decoder = codec.FrameDecoder()
        try:
            while data := await reader.read(1 << 16):
                decoder.feed(data)
                for payload in decoder.frames():
                    replies = [(rid, m.Reply(m.Status.OK, {"ready": True, "by": "worker"}))
                               for rid, _ in codec.decode_requests_lenient(payload)]
                    writer.write(codec.encode_replies(replies))
        finally:
            writer.close()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def test_the_session_goes_on_with_its_new_holder() -> None:
    worker = FakeWorker()

    async def body() -> None:
        async with serving(Handler(), attach=worker, workers=2) as server:
            async with peer_client(addr(server), "n2", SECRET, expect="n1",
                                   worker=1) as client:
                for _ in range(3):  # frames 2, 3, 4 of each direction
                    reply = await client.call(m.Ping(), 5)
                    assert reply.ok and reply.payload["by"] == "worker"
            assert server.connections == 0  # the server kept nothing of it
        await worker.close()

    run(body())
    (state,) = worker.states
    # The server had checked hello and attach, and answered hello.
    assert (state.peer, state.worker, state.rid, state.received, state.sent) == \
        ("n2", 1, 1, 2, 1)


@pytest.mark.parametrize(("why", "kwargs", "versions"), [
    ("the worker said no", {"attach": FakeWorker("worker 1 is not ready"), "workers": 2}, None),
    ("no attach function", {"workers": 2}, None),
    ("protocol 4", {"attach": FakeWorker(), "workers": 2}, VersionRange(3, 4)),
])
def test_a_refused_attach_leaves_the_connection_with_the_server(
    why: str, kwargs: dict[str, object], versions: VersionRange | None,
) -> None:
    replies: list[m.Reply] = []

    async def body() -> None:
        async with serving(Handler(), **kwargs) as server:
            reader, writer = await open_peer("127.0.0.1", server.port, "n2", SECRET, 5,
                                             versions=versions)
            try:
                got: dict[int, m.Reply] = {}
                decoder = codec.FrameDecoder()
                for rid, request in ((7, m.Attach({"worker": 1})), (8, m.Ping())):
                    writer.write(codec.encode_requests([(rid, request)]))
                    while rid not in got:
                        decoder.feed(await asyncio.wait_for(reader.read(1 << 16), 5))
                        for payload in decoder.frames():
                            got.update(codec.decode_replies(payload))
                assert got[8].ok  # the server still serves the connection
                replies.append(got[7])
            finally:
                writer.close()

    run(body())
    (reply,) = replies
    assert reply.status is m.Status.UNAVAILABLE, why
    assert reply.message.startswith("cannot attach: "), reply.message


def test_the_client_names_why_it_was_not_attached() -> None:
    async def body() -> None:
        async with serving(Handler(), attach=FakeWorker("worker 0 is not ready"),
                           workers=2) as server:
            with pytest.raises(AttachRefused, match="worker 0 is not ready"):
                await open_peer("127.0.0.1", server.port, "n2", SECRET, 5, worker=0)
            with pytest.raises(AttachRefused, match="with 2 workers: no worker 5"):
                await open_peer("127.0.0.1", server.port, "n2", SECRET, 5, worker=5)

    run(body())
