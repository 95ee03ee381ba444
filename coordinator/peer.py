"""Peer RPC between coordinators: shard-protocol frames over authenticated TCP.

After a handshake, a peer connection carries exactly the frames of the shard
worker protocol (docs/formats/shard-protocol.md): the client side is a
``ShardClient`` whose connector is :func:`open_peer`, the server side is
:class:`PeerServer`. The handshake proves to each side that the other holds
the cluster secret (``peer_auth``); each of its frames is a 4-byte
big-endian length and a msgpack array of at most 4 KiB::

    connecting node (client)                      accepting node (server)
        |  <-- ["ringkv-peer", 2, nonce: 32 bytes]  ----------------------|
        |  --- [node_id, proof, client_nonce: 32 bytes] ----------------->|
        |        proof = HMAC(secret, "ringkv-peer-v1" | nonce | node_id)   |
        |  <-- ["ok", server_node_id, server_proof]                        |
        |        server_proof = HMAC(secret, "ringkv-peer-v2-server" |     |
        |                            client_nonce | server_node_id)       |
        |      or ["refused", reason] + close                              |
        |  === shard request frames ===>   <=== shard reply frames ====== |

Every handshake step has a timeout. A refusal is logged by the server with
the peer's address and claimed node id, and counted in ``refused``; a server
that cannot prove the secret is refused by the client (PeerAuthError), so a
process squatting on a peer's port can neither feed it writes nor answer
its reads.

Server loop (startup -> accept -> shutdown, as ``coordinator.server``): each
request of a frame runs ``handler(peer_id, request)`` as its own task, owned
by the connection and cancelled on ``stop``; replies finished in one
event-loop turn leave as one frame. A bad envelope gets BAD_REQUEST under its
id; a frame that cannot be decoded at all closes that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from coordinator import peer_auth
from coordinator.peer_auth import PeerAuthError
from coordinator.streams import handler_scope
from shardserver.protocol import codec
from shardserver.protocol.client import ShardClient
from shardserver.protocol.messages import Reply, Request, Status

__all__ = ["Handler", "PeerAuthError", "PeerServer", "open_peer", "peer_client"]

log = logging.getLogger("ringkv.peer")

HELLO = "ringkv-peer"
VERSION = 2  # 2: the server proves the secret too
HANDSHAKE_MAX_FRAME = 4 << 10
MAX_NODE_ID = 256
_READ_CHUNK = 256 << 10
#: A peer that does not read its replies for this long is dropped.
_DRAIN_TIMEOUT_S = 30.0
_CLOSE_TIMEOUT_S = 1.0
_STOP_TIMEOUT_S = 5.0

#: ``(authenticated peer node id, request) -> reply``.
Handler = Callable[[str, Request], Awaitable[Reply]]


# --- handshake frames ---------------------------------------------------------


def _write_frame(writer: asyncio.StreamWriter, obj: list[Any]) -> None:
    payload = msgpack.packb(obj, use_bin_type=True)
    writer.write(codec.HEADER.pack(len(payload)) + payload)


async def _read_frame(reader: asyncio.StreamReader) -> list[Any]:
    """One handshake frame, decoded. Reads exactly its bytes, so whatever the
    peer sent behind it stays in ``reader`` for the shard-frame loop."""
    decoder = codec.FrameDecoder(HANDSHAKE_MAX_FRAME)
    header = await reader.readexactly(codec.HEADER.size)
    decoder.feed(header)
    decoder.frames()  # raises ProtocolError for a length outside 1..4 KiB
    (length,) = codec.HEADER.unpack(header)
    decoder.feed(await reader.readexactly(length))
    (payload,) = decoder.frames()
    try:
        obj = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as e:
        raise codec.ProtocolError(f"handshake frame: malformed msgpack ({e})") from e
    if not isinstance(obj, list):
        raise codec.ProtocolError(f"handshake frame: expected an array, got {type(obj).__name__}")
    return obj


async def _step(reader: asyncio.StreamReader, timeout_s: float, what: str) -> list[Any]:
    try:
        return await asyncio.wait_for(_read_frame(reader), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"peer handshake: no {what} within {timeout_s}s") from None


# --- client side ---------------------------------------------------------------


async def open_peer(
    host: str, port: int, node_id: str, secret: bytes, timeout_s: float = 5.0,
    *, source: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and authenticate; returns the stream ready for shard frames.

    Raises OSError when it cannot connect (ConnectionError when the server
    closes or does not speak the handshake), PeerAuthError when refused (the
    message includes the server's reason), TimeoutError on a stalled handshake.
    ``source`` is the local address to connect from (a node's bind address,
    so peers and firewall rules see which node connects).
    """
    where = f"{host}:{port}"
    local = None if source is None else (source, 0)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=_READ_CHUNK, local_addr=local), timeout_s
        )
    except TimeoutError:
        raise TimeoutError(f"connecting to peer {where} took over {timeout_s}s") from None
    try:
        hello = await _step(reader, timeout_s, f"challenge from {where}")
        if len(hello) != 3 or hello[0] != HELLO or not isinstance(hello[2], bytes):
            raise ConnectionError(f"{where} is not a ringkv peer port")
        if hello[1] != VERSION:
            raise PeerAuthError(f"{where} speaks peer protocol {hello[1]!r}, we speak {VERSION}")
        mine = peer_auth.new_nonce()
        _write_frame(writer, [node_id, peer_auth.answer(secret, hello[2], node_id), mine])
        await asyncio.wait_for(writer.drain(), timeout_s)
        verdict = await _step(reader, timeout_s, f"verdict from {where}")
        if len(verdict) == 2 and verdict[0] == "refused":
            raise PeerAuthError(f"{where} refused us: {verdict[1]}")
        if len(verdict) != 3 or verdict[0] != "ok" or not isinstance(verdict[1], str):
            raise ConnectionError(f"{where} sent an unexpected handshake verdict")
        try:
            peer_auth.verify(secret, mine, verdict[1], verdict[2], peer_auth.SERVER)
        except PeerAuthError:
            raise PeerAuthError(f"{where} (claims node id {verdict[1]!r}) does not know "
                                "the cluster secret") from None
    except asyncio.IncompleteReadError:
        writer.close()
        raise ConnectionError(f"{where} closed the connection during the handshake") from None
    except codec.ProtocolError as e:
        writer.close()
        raise ConnectionError(f"{where} is not a ringkv peer port: {e}") from e
    except BaseException:
        writer.close()
        raise
    return reader, writer


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"peer address must be host:port, got {addr!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


class Backoff:
    """Reconnect delay after failed connects: 0.1 s doubling to 2 s, reset by
    a success (a restarted peer is found again within about 2 s)."""

    INITIAL_S = 0.1
    MAX_S = 2.0

    def __init__(self) -> None:
        self.delay = 0.0
        self.until = 0.0
        self.last_error = ""

    def remaining(self) -> float:
        return self.until - time.monotonic()

    def failed(self, error: str) -> None:
        self.delay = min(self.MAX_S, max(self.INITIAL_S, self.delay * 2))
        self.until = time.monotonic() + self.delay
        self.last_error = error

    def succeeded(self) -> None:
        self.delay, self.until = 0.0, 0.0

    reset = succeeded  # news that the peer is back (e.g. its new generation in gossip)


def peer_client(
    addr: str, node_id: str, secret: bytes, *, name: str | None = None,
    timeout_s: float = 2.0, max_inflight: int = 4096, source: str | None = None,
    backoff: Backoff | None = None,
) -> ShardClient:
    """A ShardClient whose connector is ``open_peer`` to ``addr`` ("host:port").

    ``name`` (default ``"peer <addr>"``) appears in error messages. A refused
    handshake surfaces from calls as ShardUnavailable, as a failed connect does.
    """
    host, port = _split_addr(addr)
    backoff = backoff or Backoff()

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # A peer that just refused us is not dialled again until its backoff
        # passed: a dead node costs one failed connect per interval, not one
        # per request or gossip round.
        wait = backoff.remaining()
        if wait > 0:
            raise ConnectionRefusedError(
                f"not retrying for {wait:.1f}s after: {backoff.last_error}"
            )
        try:
            streams = await open_peer(host, port, node_id, secret, timeout_s, source=source)
        except PeerAuthError as e:
            backoff.failed(str(e))
            # ShardClient turns OSError (only) into ShardUnavailable. Raising
            # ShardUnavailable here would be wrapped again, doubling its prefix.
            raise ConnectionRefusedError(str(e)) from e
        except (OSError, TimeoutError) as e:
            backoff.failed(str(e) or type(e).__name__)
            raise
        backoff.succeeded()
        return streams

    return ShardClient(
        name or f"peer {addr}", connector=connect, timeout_s=timeout_s, max_inflight=max_inflight
    )


# --- server side ------------------------------------------------------------------


def _check_answer(msg: list[Any]) -> tuple[str, bytes, bytes]:
    if (len(msg) != 3 or not isinstance(msg[0], str) or not isinstance(msg[1], bytes)
            or not isinstance(msg[2], bytes) or len(msg[2]) != peer_auth.NONCE_BYTES):
        raise PeerAuthError("malformed handshake answer: expected "
                            "[node_id, proof, nonce] (peer protocol 2)")
    if not 0 < len(msg[0]) <= MAX_NODE_ID:
        raise PeerAuthError(f"node id must be 1..{MAX_NODE_ID} characters")
    return msg[0], msg[1], msg[2]


class _Connection:
    """One authenticated peer: frames in, handler tasks, batched replies out."""

    def __init__(self, server: PeerServer, peer_id: str, addr: str,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.peer_id = peer_id
        self.addr = addr
        self.reader = reader
        self.writer = writer
        self._tasks: set[asyncio.Task[None]] = set()
        self._futures: set[asyncio.Future[Reply]] = set()  # fast-path requests
        self._replies: list[tuple[int, Reply]] = []
        self._flush_handle: asyncio.Handle | None = None

    async def run(self) -> None:
        decoder = codec.FrameDecoder(self.server.max_frame)
        while True:
            data = await self.reader.read(_READ_CHUNK)  # no timeout: idle peers are normal
            if not data:
                return
            decoder.feed(data)
            try:
                for payload in decoder.frames():
                    self._on_frame(codec.decode_requests_lenient(payload))
            except codec.ProtocolError as e:
                log.warning("dropping peer %s (%s): %s", self.peer_id, self.addr, e)
                return
            # Backpressure: read no more while the peer does not read replies.
            await asyncio.wait_for(self.writer.drain(), _DRAIN_TIMEOUT_S)

    def _on_frame(self, requests: list[tuple[int, Request | codec.ProtocolError]]) -> None:
        limit = self.server.max_inflight_per_connection
        for rid, req in requests:
            if isinstance(req, codec.ProtocolError):
                self._reply(rid, Reply(Status.BAD_REQUEST, str(req)))
            elif len(self._tasks) + len(self._futures) >= limit:
                self._reply(rid, Reply(Status.OVERLOADED, f"{limit} peer requests in flight"))
            elif (fut := self._fast(req)) is not None:
                self._futures.add(fut)
                fut.add_done_callback(functools.partial(self._fast_done, rid))
            else:
                task = asyncio.create_task(self._execute(rid, req))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

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
        try:
            reply = await self.server.handler(self.peer_id, req)
        except Exception as e:
            log.exception("peer handler failed on %s from %s", type(req).__name__, self.peer_id)
            reply = Reply(Status.INTERNAL, f"{type(e).__name__}: {e}")
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


#: Optional hot path: a reply future for requests that need no task (the
#: node hands reads and writes straight to a worker), None for the rest.
FastPath = Callable[[Request], "asyncio.Future[Reply] | None"]


class PeerServer:
    def __init__(
        self, node_id: str, secret: bytes, handler: Handler, *, bind: str = "127.0.0.1",
        port: int = 0, max_connections: int = 256, max_inflight_per_connection: int = 4096,
        handshake_timeout_s: float = 5.0, max_frame: int = codec.DEFAULT_MAX_FRAME,
        fast: FastPath | None = None,
    ) -> None:
        self.node_id = node_id
        self.fast = fast
        self.secret = secret
        self.handler = handler
        self.bind = bind
        self.port = port
        self.max_connections = max_connections
        self.max_inflight_per_connection = max_inflight_per_connection
        self.handshake_timeout_s = handshake_timeout_s
        self.max_frame = max_frame
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # one per accepted connection
        self._authenticated = 0
        self._stopping = False

    @property
    def connections(self) -> int:
        return self._authenticated

    async def start(self) -> None:
        self._stopping = False
        self._server = await asyncio.start_server(
            self._accept, self.bind, self.port, limit=_READ_CHUNK
        )
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        task = asyncio.current_task()
        if task is None or self._stopping or len(self._tasks) >= self.max_connections:
            log.warning("closing peer connection from %s: %d open", addr, len(self._tasks))
            writer.close()
            return
        self._tasks.add(task)
        try:
            async with handler_scope(writer, _CLOSE_TIMEOUT_S):
                try:
                    peer_id = await self._handshake(reader, writer, addr)
                    if peer_id is not None:
                        await self._serve(peer_id, addr, reader, writer)
                except (OSError, asyncio.IncompleteReadError) as e:
                    log.info("peer connection from %s ended: %s", addr,
                             str(e) or type(e).__name__)
        finally:
            self._tasks.discard(task)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, addr: str
    ) -> str | None:
        """The authenticated peer's node id, or None after refusing it."""
        t = self.handshake_timeout_s
        nonce = peer_auth.new_nonce()
        claimed: str | None = None
        try:
            _write_frame(writer, [HELLO, VERSION, nonce])
            await asyncio.wait_for(writer.drain(), t)
            claimed, proof, theirs = _check_answer(await _step(reader, t, "answer"))
            peer_auth.verify(self.secret, nonce, claimed, proof)
        except (PeerAuthError, codec.ProtocolError, TimeoutError) as e:
            reason = str(e)
        except (ConnectionError, asyncio.IncompleteReadError):
            reason = "closed the connection during the handshake"
        else:
            _write_frame(writer, ["ok", self.node_id, peer_auth.answer(
                self.secret, theirs, self.node_id, peer_auth.SERVER)])
            await asyncio.wait_for(writer.drain(), t)
            return claimed
        self.refused += 1
        log.warning("refused peer %s (claims node id %r): %s", addr, claimed, reason)
        if not writer.is_closing():
            _write_frame(writer, ["refused", reason])
            with contextlib.suppress(OSError):
                await asyncio.wait_for(writer.drain(), t)
        return None

    async def _serve(self, peer_id: str, addr: str,
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, peer_id, addr, reader, writer)
        self._authenticated += 1
        log.info("peer %s connected from %s", peer_id, addr)
        try:
            await conn.run()
        finally:
            self._authenticated -= 1
            await conn.close()
