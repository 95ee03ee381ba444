"""The accepting side of peer RPC (the handshake and frames: ``coordinator.cluster.peer``).

Startup -> accept -> shutdown, as ``coordinator.client.server``. Each request of a
frame runs ``handler(peer_id, request)`` as its own task, owned by the
connection and cancelled on ``stop``; replies finished in one event-loop
turn leave as one frame. A bad envelope gets BAD_REQUEST under its
id; a frame that cannot be decoded at all closes that connection only.
Operator requests (``AUDITED``) are logged with peer, address and outcome.

Connections still in the handshake hold a slot of a small pool of their own
(``peer_gate``) for at most one deadline (1 s); a peer that proved the secret
then takes one of ``max_connections`` authenticated slots. So sockets that
never answer the challenge cannot crowd out peers and operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from coordinator.cluster import peer_auth
from coordinator.cluster.peer import (
    HELLO,
    MAX_NODE_ID,
    READ_CHUNK,
    VERSION,
    PeerAuthError,
    read_frame,
    write_frame,
)
from coordinator.cluster.peer_gate import HandshakeGate, LogBudget, Ticket
from coordinator.cluster.peer_versions import (
    DIRECT,
    LEGACY,
    RELEASE,
    PeerVersionError,
    VersionRange,
    local_range,
    negotiate,
)
from coordinator.streams import handler_scope
from shardserver.protocol import codec
from shardserver.protocol.attach import AttachError, SessionState
from shardserver.protocol.errors import ProtocolError
from shardserver.protocol.messages import (
    Admin,
    Attach,
    Compact,
    DropPartition,
    Flush,
    FlushAll,
    Hello,
    Reply,
    Request,
    Status,
)
from shardserver.protocol.session import PeerIntegrityError, SealedReader, SealedWriter

__all__ = ["AUDITED", "AttachFn", "FastPath", "Handler", "PeerServer"]

log = logging.getLogger("ringkv.peer")

#: A peer that does not read its replies for this long is dropped.
_DRAIN_TIMEOUT_S = 30.0
_CLOSE_TIMEOUT_S = 1.0
_STOP_TIMEOUT_S = 5.0

#: Operator requests (the admin CLI's, and FLUSHALL's drops): each is logged
#: with the peer and address it came from, and its outcome.
AUDITED = (Admin, Compact, DropPartition, Flush, FlushAll)

#: ``(authenticated peer node id, request) -> reply``.
Handler = Callable[[str, Request], Awaitable[Reply]]


def _check_answer(msg: list[Any]) -> tuple[str, bytes, bytes]:
    if (len(msg) != 3 or not isinstance(msg[0], str) or not isinstance(msg[1], bytes)
            or not isinstance(msg[2], bytes) or len(msg[2]) != peer_auth.NONCE_BYTES):
        raise PeerAuthError("malformed handshake answer: expected "
                            f"[node_id, proof, nonce] (peer protocol {VERSION})")
    if not 0 < len(msg[0]) <= MAX_NODE_ID:
        raise PeerAuthError(f"node id must be 1..{MAX_NODE_ID} characters")
    return msg[0], msg[1], msg[2]


@dataclass(frozen=True, slots=True)
class _Proved:
    """A peer that proved the secret: its node id, its nonce, and the
    connection's (client→server, server→client) keys."""

    peer_id: str
    nonce: bytes
    keys: tuple[bytes, bytes]


class _PeerConnection:
    """One authenticated peer: frames in, handler tasks, batched replies out."""

    def __init__(self, server: PeerServer, peer_id: str, addr: str,
                 reader: SealedReader, writer: SealedWriter) -> None:
        self.server = server
        self.peer_id = peer_id
        self.addr = addr
        self.reader = reader
        self.writer = writer
        self._tasks: set[asyncio.Task[None]] = set()
        self._futures: set[asyncio.Future[Reply]] = set()  # fast-path requests
        self._replies: list[tuple[int, Reply]] = []
        self._flush_handle: asyncio.Handle | None = None
        #: The peer protocol of this connection: 3 until the peer's hello
        #: says more (a peer from before the negotiation never sends one).
        self.protocol: int | None = None
        #: An ``attach`` request (protocol 5) waiting for the frame loop.
        self._attach: tuple[int, Attach] | None = None
        self._attach_spoiled = False

    async def run(self) -> None:
        decoder = codec.FrameDecoder(self.server.max_frame)
        try:
            while True:
                # No timeout: idle peers are normal. A frame that fails its
                # tag raises from read and drain (session.PeerIntegrityError).
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    return
                decoder.feed(data)
                for payload in decoder.frames():
                    self._on_frame(codec.decode_requests_lenient(payload))
                if self._attach is not None and await self._hand_over(decoder):
                    return  # the connection is the worker's now
                # Backpressure: read no more while the peer does not read replies.
                await asyncio.wait_for(self.writer.drain(), _DRAIN_TIMEOUT_S)
        except ProtocolError as e:
            log.warning("dropping peer %s (%s): %s", self.peer_id, self.addr, e)

    def _on_frame(self, requests: list[tuple[int, Request | ProtocolError]]) -> None:
        limit = self.server.max_inflight_per_connection
        for rid, req in requests:
            if isinstance(req, ProtocolError):
                self._reply(rid, Reply(Status.BAD_REQUEST, str(req)))
            elif isinstance(req, Hello):
                self._reply(rid, self._hello(req))
            elif self._attach is not None:
                # Nothing may follow an attach: the worker takes the stream as it is.
                self._attach_spoiled = True
                self._reply(rid, Reply(Status.BAD_REQUEST, "a request after attach"))
            elif isinstance(req, Attach):
                self._attach = (rid, req)
            elif self.protocol is None and (no := self._legacy()) is not None:
                self._reply(rid, no)
            elif len(self._tasks) + len(self._futures) >= limit:
                self._reply(rid, Reply(Status.OVERLOADED, f"{limit} peer requests in flight"))
            elif (fut := self._fast(req)) is not None:
                self._futures.add(fut)
                fut.add_done_callback(functools.partial(self._fast_done, rid))
            else:
                task = asyncio.create_task(self._execute(rid, req))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _hello(self, req: Hello) -> Reply:
        """Agree on the version: the highest both ranges hold."""
        ours = self.server.versions
        try:
            theirs = VersionRange.from_wire(req.payload.get("versions"))
            self.protocol = negotiate(ours, theirs, who=f"peer {self.peer_id}")
        except PeerVersionError as e:
            log.warning("refusing peer %s (%s): %s", self.peer_id, self.addr, e)
            return Reply(Status.BAD_REQUEST, str(e))
        answer = {"versions": ours.to_wire(), "use": self.protocol,
                  "node": self.server.node_id, "release": RELEASE}
        if self.protocol >= DIRECT and self.server.attach is not None:
            answer["workers"] = self.server.workers
        return Reply(Status.OK, answer)

    async def _hand_over(self, decoder: codec.FrameDecoder) -> bool:
        """Hand this connection to the worker its ``attach`` names; True
        when the worker serves it now. Else the attach is answered with why
        not and the connection goes on here."""
        assert self._attach is not None
        rid, req = self._attach
        self._attach = None
        # A read-write transport (asyncio's or uvloop's TCPTransport, which
        # does not subclass asyncio.Transport).
        transport = cast(asyncio.Transport, self.writer.transport)
        transport.pause_reading()
        why = self._attach_refusal(req, decoder)
        if why is None:
            assert self.server.attach is not None
            opener, sealer = self.reader.opener, self.writer.sealer
            assert opener is not None and sealer is not None
            worker: int = req.payload["worker"]
            state = SessionState(self.peer_id, worker, rid, opener.key, opener.received,
                                 sealer.key, sealer.sent, 0, 0)
            sock = transport.get_extra_info("socket")
            try:
                await self.server.attach(worker, sock.fileno(), state)
            except AttachError as e:
                why = str(e)
            except TimeoutError:
                # The worker may or may not have taken it: nobody may use it.
                log.warning("dropping peer %s (%s): hand-over to a worker timed out",
                            self.peer_id, self.addr)
                transport.abort()
                return True
            else:
                log.info("peer %s (%s) now talks to worker %d directly", self.peer_id,
                         self.addr, worker)
                transport.abort()  # closes our copy only: the worker holds the socket
                return True
        self._attach_spoiled = False
        self._reply(rid, Reply(Status.UNAVAILABLE, f"cannot attach: {why}"))
        transport.resume_reading()
        return False

    def _attach_refusal(self, req: Attach, decoder: codec.FrameDecoder) -> str | None:
        if (self.protocol or 3) < DIRECT or self.server.attach is None:
            return f"peer protocol {self.protocol or 3} has no attach (5 has)"
        worker = req.payload.get("worker")
        if type(worker) is not int or not 0 <= worker < self.server.workers:
            return f"no worker {worker!r} (this node runs {self.server.workers})"
        busy = (self._tasks or self._futures or self._replies or decoder.buffered
                or self.reader.buffered() or self.writer.transport.get_write_buffer_size())
        if self._attach_spoiled or busy:
            return "attach must be the last request of an idle connection"
        return None

    def _legacy(self) -> Reply | None:
        """A request before any hello comes from a release that speaks 3
        alone: refused (naming both) if this node no longer speaks 3."""
        try:
            self.protocol = negotiate(self.server.versions, LEGACY,
                                      who=f"peer {self.peer_id} (no hello)")
        except PeerVersionError as e:
            return Reply(Status.BAD_REQUEST, str(e))
        return None

    def _fast(self, req: Request) -> asyncio.Future[Reply] | None:
        fast = self.server.fast
        return None if fast is None else fast(req)

    def _fast_done(self, rid: int, fut: asyncio.Future[Reply]) -> None:
        self._futures.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self._reply(rid, fut.result())
        elif isinstance(exc, ConnectionError):
            self._reply(rid, Reply(Status.UNAVAILABLE, str(exc)))
        else:
            log.error("peer fast path failed for %s", self.peer_id, exc_info=exc)
            self._reply(rid, Reply(Status.INTERNAL, f"{type(exc).__name__}: {exc}"))

    async def _execute(self, rid: int, req: Request) -> None:
        audited = isinstance(req, AUDITED)
        started = time.monotonic()
        if audited:
            log.info("admin request from peer %s at %s: %.300r", self.peer_id, self.addr, req)
        try:
            reply = await self.server.handler(self.peer_id, req)
        except Exception as e:
            log.exception("peer handler failed on %s from %s", type(req).__name__, self.peer_id)
            reply = Reply(Status.INTERNAL, f"{type(e).__name__}: {e}")
        if audited:
            outcome = "OK" if reply.ok else f"{reply.status.name} {reply.message:.200}"
            log.info("admin request from peer %s at %s: %s (%.2fs)", self.peer_id, self.addr,
                     outcome, time.monotonic() - started)
        self._reply(rid, reply)

    def _reply(self, rid: int, reply: Reply) -> None:
        self._replies.append((rid, reply))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        # Every reply finished in this loop turn leaves in one frame.
        self._flush_handle = None
        replies, self._replies = self._replies, []
        if replies and not self.writer.is_closing():
            for frame in codec.encode_reply_frames(replies, self.server.max_frame):
                self.writer.write(frame)

    async def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for fut in self._futures:
            fut.cancel()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_CLOSE_TIMEOUT_S)


#: Hands a connection to one of the node's workers: (worker, socket fd,
#: session state); AttachError when it did not happen (``data.direct``).
AttachFn = Callable[[int, int, SessionState], Awaitable[None]]

#: Optional hot path: a reply future for requests that need no task (the
#: node hands reads and writes straight to a worker), None for the rest.
FastPath = Callable[[Request], "asyncio.Future[Reply] | None"]


class PeerServer:
    """Accepts peers: a pending handshake holds a slot of the small
    ``max_handshakes`` pool (``peer_gate``) for at most
    ``handshake_timeout_s``; a proved peer then takes one of the
    ``max_connections`` slots of authenticated connections, so sockets that
    never answer the challenge cannot crowd out peers and operators."""

    def __init__(
        self, node_id: str, secret: bytes, handler: Handler, *, bind: str = "127.0.0.1",
        port: int = 0, max_connections: int = 256, max_handshakes: int = 32,
        max_inflight_per_connection: int = 4096, handshake_timeout_s: float = 1.0,
        max_frame: int = codec.DEFAULT_MAX_FRAME, fast: FastPath | None = None,
        allow_empty_secret: bool = False, versions: VersionRange | None = None,
        attach: AttachFn | None = None, workers: int = 0,
    ) -> None:
        if not secret and not allow_empty_secret:
            # With an empty key anyone can compute the proof: the port would
            # obey whoever reaches it (ringkv serve --insecure-no-secret).
            raise ValueError("a peer server needs a cluster secret")
        self.node_id = node_id
        self.versions = versions or local_range()
        self.fast = fast
        #: Direct-to-worker connections (protocol 5): None to keep every
        #: peer on the relay.
        self.attach = attach if workers > 0 else None
        self.workers = workers
        self.secret = secret
        self.handler = handler
        self.bind = bind
        self.port = port
        self.max_connections = max_connections
        self.max_inflight_per_connection = max_inflight_per_connection
        self.handshake_timeout_s = handshake_timeout_s
        self.max_frame = max_frame
        self.refused = 0
        self.gate = HandshakeGate(max_handshakes)
        self._refusal_log = LogBudget()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # one per accepted connection
        self._authenticated = 0
        self._stopping = False

    @property
    def connections(self) -> int:
        return self._authenticated

    async def start(self) -> None:
        self._stopping = False
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.StreamReaderProtocol:
            # asyncio.start_server, with the stream classes of a peer
            # connection: the client's one handshake frame passes, then tags rule.
            reader = SealedReader(plain_frames=1, limit=READ_CHUNK, max_frame=self.max_frame)

            def connected(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Awaitable[None]:
                return self._accept(reader, SealedWriter(w.transport, protocol, reader, loop))

            protocol = asyncio.StreamReaderProtocol(reader, connected, loop=loop)
            return protocol

        self._server = await loop.create_server(connection, self.bind, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving peers on %s:%d", self.bind, self.port)

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_STOP_TIMEOUT_S)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), _STOP_TIMEOUT_S)
            self._server = None

    async def _accept(self, reader: SealedReader, writer: SealedWriter) -> None:
        peer = writer.get_extra_info("peername")
        host, addr = (peer[0], f"{peer[0]}:{peer[1]}") if isinstance(peer, tuple) else ("?", "?")
        task = asyncio.current_task()
        if task is None or self._stopping:
            writer.close()
            return
        self._tasks.add(task)
        try:
            async with handler_scope(writer, _CLOSE_TIMEOUT_S):
                try:
                    proved = await self._handshake(reader, writer, host, addr)
                    if proved is not None:
                        await self._serve(proved, addr, reader, writer)
                except (OSError, asyncio.IncompleteReadError) as e:
                    log.info("peer connection from %s ended: %s", addr,
                             str(e) or type(e).__name__)
                except PeerIntegrityError as e:  # a bad frame before the loop began
                    log.warning("dropping peer connection from %s: %s", addr, e)
        finally:
            self._tasks.discard(task)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, addr: str
    ) -> _Proved | None:
        """The proved peer, or None after refusing it."""
        t = self.handshake_timeout_s
        nonce = peer_auth.new_nonce()
        claimed: str | None = None
        ticket: Ticket | None = None
        try:
            # One deadline for the whole exchange; the gate moves it to now
            # when it drops this handshake to make room for a newer one.
            async with asyncio.timeout(t) as deadline:
                ticket = self.gate.admit(host, deadline)
                write_frame(writer, [HELLO, VERSION, nonce])
                await writer.drain()
                claimed, proof, theirs = _check_answer(await read_frame(reader))
                peer_auth.verify(self.secret, nonce, claimed, proof)
        except TimeoutError:
            dropped = ticket.dropped if ticket is not None else None
            reason = dropped or f"peer handshake: no answer within {t}s"
        except (PeerAuthError, ProtocolError) as e:
            reason = str(e)
        except (ConnectionError, asyncio.IncompleteReadError):
            reason = "closed the connection during the handshake"
        else:
            if self._authenticated < self.max_connections:
                return _Proved(claimed, theirs, peer_auth.session_keys(
                    self.secret, nonce, theirs, self.node_id, claimed))
            reason = f"{self.max_connections} peer connections open"
        finally:
            if ticket is not None:
                self.gate.release(ticket)
        await self._refuse(writer, addr, claimed, reason)
        return None

    async def _refuse(self, writer: asyncio.StreamWriter, addr: str, claimed: str | None,
                      reason: str) -> None:
        self.refused += 1
        if self._refusal_log.take():
            log.warning("refused peer %s (claims node id %r): %s", addr, claimed, reason)
        if skipped := self._refusal_log.left_out():
            log.warning("%d more peer refusals not logged (%d refused since start)",
                        skipped, self.refused)
        if not writer.is_closing():
            write_frame(writer, ["refused", reason])
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.drain(), self.handshake_timeout_s)

    async def _serve(self, proved: _Proved, addr: str, reader: SealedReader,
                     writer: SealedWriter) -> None:
        # Counted before the first await, so the limit holds against a burst.
        self._authenticated += 1
        peer_id = proved.peer_id
        try:
            write_frame(writer, ["ok", self.node_id, peer_auth.answer(
                self.secret, proved.nonce, self.node_id, peer_auth.SERVER)])
            theirs, ours = proved.keys  # from here on every frame is tagged
            writer.seal(ours)
            reader.seal(theirs)
            await asyncio.wait_for(writer.drain(), self.handshake_timeout_s)
            conn = _PeerConnection(self, peer_id, addr, reader, writer)
            log.info("peer %s connected from %s", peer_id, addr)
            try:
                await conn.run()
            finally:
                await conn.close()
        finally:
            self._authenticated -= 1
