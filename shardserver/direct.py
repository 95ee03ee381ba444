"""Peer connections a worker serves itself (peer protocol 5).

The coordinator hands an authenticated, sealed peer connection over to
this worker (``shardserver.protocol.attach``) when the peer asked for it;
from then on the peer's replica reads and writes for this worker's
partitions skip the coordinator's relay. The worker keeps what the relay
checked (docs/architecture.md, "Replica traffic straight to a worker"):

* only ``read``, ``write`` and ``write_set`` (and ``ping``) are served;
  everything else a peer may send goes through the node, which audits and
  gates it (drops, admin, gossip ...): BAD_REQUEST here;
* a ``write`` with ``hint_for`` is refused: a fallback's copy needs its
  hint made durable by the node first, so peers send those to the node;
* a ``write`` stamped more than ``max_clock_drift_ms`` ahead of the
  node's clock is refused as the node would (``protocol.drift``), counted
  in ``writes_refused``.

Drop fences, admission control, readiness and the partition check are the
worker's own on every connection. A frame that fails its tag closes the
connection, as on the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from shardserver.handlers import WorkerConnection
from shardserver.protocol import codec, drift, messages
from shardserver.protocol.attach import AttachError, SessionState, receive
from shardserver.protocol.errors import ProtocolError
from shardserver.protocol.messages import Reply, Request, Status
from shardserver.protocol.pool import WORKER_MAX_FRAME_BYTES
from shardserver.protocol.session import SealedReader, SealedWriter

if TYPE_CHECKING:
    from shardserver.handlers import WorkerHost

log = logging.getLogger("ringkv.worker")

_HANDOVER_TIMEOUT_S = 2.0
_READ_LIMIT = 256 << 10
#: Requests a peer may send straight to a worker.
_SERVED = (messages.ReplicaRead, messages.ReplicaWrite, messages.ReplicaWriteSet, messages.Ping)


class Screen:
    """What a direct peer connection may ask, checked before the worker
    handles it: None to go on, else the reply."""

    def __init__(self, state: SessionState, counts: DirectPeers) -> None:
        self.state = state
        self.counts = counts

    def __call__(self, req: Request) -> Reply | None:
        self.counts.requests += 1
        if not isinstance(req, _SERVED):
            return Reply.error(Status.BAD_REQUEST, f"{messages.op_of(req)} is not served on a "
                               "direct peer connection; send it to the node")
        if not isinstance(req, messages.ReplicaWrite):
            return None
        if req.hint_for:
            return Reply.error(Status.BAD_REQUEST, "a hinted write goes to the node, which "
                               "records its hint first")
        st = self.state
        physical = max(0, int(time.time() * 1000) + st.clock_offset_ms)
        ahead = drift.ahead_ms(req.version, physical)
        if ahead <= st.max_clock_drift_ms:
            return None
        self.counts.writes_refused += 1
        why = drift.refusal(req.version, ahead, st.max_clock_drift_ms)
        log.warning("refusing a write from peer %s: %s", st.peer, why)
        return Reply.error(Status.BAD_REQUEST, why)


class DirectPeers:
    """The worker's attach socket and the peer connections handed over on it."""

    def __init__(self, worker: WorkerHost, path: str, max_connections: int) -> None:
        self.worker = worker
        self.path = path
        self.max_connections = max_connections
        self.writes_refused = 0
        self.adopted = 0
        self.requests = 0
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[WorkerConnection] = set()

    def counts(self) -> dict[str, int]:
        """What a ping reports: connections served now, handed over since
        start, requests they carried, writes refused by the clock bound."""
        return {"connections": len(self._conns), "adopted": self.adopted,
                "requests": self.requests, "writes_refused": self.writes_refused}

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket of a killed predecessor
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(16)
        listener.setblocking(False)
        self._listener = listener
        self._spawn(self._accept(listener))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            self._spawn(self._adopt(conn))

    async def _adopt(self, conn: socket.socket) -> None:
        with conn:
            try:
                state, sock = await receive(conn, os.getppid(), _HANDOVER_TIMEOUT_S)
            except (AttachError, OSError, TimeoutError) as e:
                log.warning("refused a peer hand-over: %s", e)
                return
            why = self._refusal()
            if why is not None:
                sock.close()
                conn.send(b"no: " + why.encode())
                return
            try:
                reader, writer = await self._streams(sock, state)
            except OSError as e:
                sock.close()
                conn.send(f"no: {e}".encode())
                return
            try:
                # "ok" before the first byte on the socket: if it cannot be
                # said, the coordinator still owns an untouched connection.
                conn.send(b"ok")
            except OSError as e:
                log.warning("hand-over from our coordinator broke off: %s", e)
                writer.transport.abort()
                return
            writer.write(codec.encode_reply_frames(
                [(state.rid, Reply(Status.OK, {"worker": state.worker}))],
                WORKER_MAX_FRAME_BYTES)[0])
        self.adopted += 1
        log.info("serving peer %s directly", state.peer)
        self._spawn(self._serve(WorkerConnection(self.worker, reader, writer,
                                                 screen=Screen(state, self))))

    def _refusal(self) -> str | None:
        if not self.worker.ready:
            return f"worker {self.worker.config.worker_id} is not ready"
        if len(self._conns) >= self.max_connections:
            return f"{len(self._conns)} direct peer connections open"
        return None

    async def _streams(self, sock: socket.socket, state: SessionState,
                       ) -> tuple[SealedReader, SealedWriter]:
        loop = asyncio.get_running_loop()
        reader = SealedReader(plain_frames=0, limit=_READ_LIMIT,
                              max_frame=self.worker.settings.max_frame_bytes)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
        reader.seal(state.in_key, state.received)
        writer = SealedWriter(transport, protocol, reader, loop)
        writer.seal(state.out_key, state.sent)
        return reader, writer

    async def _serve(self, conn: WorkerConnection) -> None:
        self._conns.add(conn)
        try:
            await conn.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except ProtocolError as e:  # a frame that failed its tag, among others
            log.warning("dropping a direct peer connection: %s", e)
        finally:
            self._conns.discard(conn)
            await conn.close()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
