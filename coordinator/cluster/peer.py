"""Peer RPC between coordinators: shard-protocol frames over authenticated TCP.

After a handshake, a peer connection carries exactly the frames of the shard
worker protocol (docs/formats/shard-protocol.md): the client side (here) is
a ``ShardClient`` whose connector is :func:`open_peer`, the server side is
``coordinator.peer_server.PeerServer``. The handshake proves to each side that the other holds
the cluster secret (``peer_auth``); each of its frames is a 4-byte
big-endian length and a msgpack array of at most 4 KiB::

    connecting node (client)                      accepting node (server)
        |  <-- ["ringkv-peer", 3, nonce: 32 bytes]  ----------------------|
        |  --- [node_id, proof, client_nonce: 32 bytes] ----------------->|
        |        proof = HMAC(secret, "ringkv-peer-v1" | nonce | node_id)   |
        |  <-- ["ok", server_node_id, server_proof]                        |
        |        server_proof = HMAC(secret, "ringkv-peer-v2-server" |     |
        |                            client_nonce | server_node_id)       |
        |      or ["refused", reason] + close                              |
        |  === shard request frames ===>   <=== shard reply frames ====== |
        |      each tagged (shardserver.protocol.session): BLAKE2b-128 under this         |
        |      direction's key from peer_auth.session_keys(secret,        |
        |      nonce, client_nonce, server id, client id) over its        |
        |      sequence number and payload; the first request is          |
        |      hello: each side's peer protocol range, the highest        |
        |      common version wins (peer_versions)                        |

Every handshake step has a timeout; on the server one deadline (1 s) covers
the whole exchange, and connections still in it have a small pool of their
own (``peer_gate``), so idle sockets cannot crowd out peers and operators.
A refusal is logged by the server with the peer's address and claimed node
id (a few lines per second at most), and counted in ``refused``; a server
that cannot prove the secret is refused by the client (PeerAuthError), so a
process squatting on a peer's port can neither feed it writes nor answer
its reads. A server never runs with an empty secret unless told to
(``allow_empty_secret``): anyone can compute an HMAC under an empty key.
After the handshake every frame carries a tag under keys derived from the
secret and both nonces (``shardserver.protocol.session``), so a relay that passed the
handshake through can neither inject, alter, drop, replay nor reorder frames:
the side that sees one closes the connection.

A connection made for a given node (``expect``: replica traffic, admin
forwarding) refuses a server that answers with another node id: a stale DNS
entry or a reused address would otherwise hand one node's replica writes to
another. Gossip and the admin CLI dial addresses and learn the id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack

from coordinator.cluster import peer_auth
from coordinator.cluster.peer_auth import PeerAuthError
from coordinator.cluster.peer_versions import (
    DIRECT,
    LEGACY,
    RELEASE,
    Negotiated,
    PeerVersionError,
    VersionRange,
    local_range,
    negotiate,
)
from shardserver.protocol import codec
from shardserver.protocol import messages as m
from shardserver.protocol.backoff import Backoff
from shardserver.protocol.client import ShardClient
from shardserver.protocol.errors import ProtocolError
from shardserver.protocol.session import SealedReader, SealedWriter

__all__ = ["AttachRefused", "PeerAuthError", "PeerIdentityError", "open_peer", "peer_client",
           "read_frame", "reconnect_backoff", "write_frame"]

HELLO = "ringkv-peer"
#: The handshake's version: 2 the server proves the secret too; 3 frames
#: sealed after it. Later versions are negotiated inside the seal
#: (``peer_versions``), so this field stays 3 for every release that seals.
VERSION = 3
HANDSHAKE_MAX_FRAME = 4 << 10
MAX_NODE_ID = 256
READ_CHUNK = 256 << 10


# --- handshake frames ---------------------------------------------------------


def write_frame(writer: asyncio.StreamWriter, obj: list[Any]) -> None:
    payload = msgpack.packb(obj, use_bin_type=True)
    writer.write(codec.HEADER.pack(len(payload)) + payload)


async def read_frame(reader: asyncio.StreamReader) -> list[Any]:
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
        raise ProtocolError(f"handshake frame: malformed msgpack ({e})") from e
    if not isinstance(obj, list):
        raise ProtocolError(f"handshake frame: expected an array, got {type(obj).__name__}")
    return obj


async def _step(reader: asyncio.StreamReader, timeout_s: float, what: str) -> list[Any]:
    try:
        return await asyncio.wait_for(read_frame(reader), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"peer handshake: no {what} within {timeout_s}s") from None


# --- client side ---------------------------------------------------------------


class PeerIdentityError(PeerAuthError):
    """The node that answered is not the node we meant to reach."""


async def open_peer(
    host: str, port: int, node_id: str, secret: bytes, timeout_s: float = 5.0,
    *, source: str | None = None, expect: str | None = None,
    versions: VersionRange | None = None,
    on_hello: Callable[[Negotiated], None] | None = None, worker: int | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, authenticate and agree on the peer protocol; returns the
    stream ready for shard frames. With ``worker``, the stream is then
    attached to that worker of the node (peer protocol 5, :func:`_attach`):
    AttachRefused when the node cannot or will not.

    Raises OSError when it cannot connect (ConnectionError when the server
    closes or does not speak the handshake), PeerAuthError when refused (the
    message includes the server's reason; PeerIdentityError when the server
    is not node ``expect``), PeerVersionError when the two share no protocol
    version, TimeoutError on a stalled handshake. ``source`` is the local
    address to connect from (a node's bind address, so peers and firewall
    rules see which node connects); ``versions`` the range we offer
    (default: all this build speaks); ``on_hello`` hears what was agreed.
    """
    where = f"{host}:{port}"
    local = None if source is None else (source, 0)
    try:
        reader, writer = await asyncio.wait_for(_connect(host, port, local), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"connecting to peer {where} took over {timeout_s}s") from None
    try:
        hello = await _step(reader, timeout_s, f"challenge from {where}")
        if len(hello) != 3 or hello[0] != HELLO or not isinstance(hello[2], bytes):
            raise ConnectionError(f"{where} is not a ringkv peer port")
        if hello[1] != VERSION:
            raise PeerAuthError(f"{where} speaks peer protocol {hello[1]!r}, we speak {VERSION}")
        mine = peer_auth.new_nonce()
        write_frame(writer, [node_id, peer_auth.answer(secret, hello[2], node_id), mine])
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
        if expect is not None and verdict[1] != expect:
            raise PeerIdentityError(
                f"{where} is node {verdict[1]!r}, not {expect!r}: refusing to send it "
                f"{expect}'s traffic (a stale address? gossip will bring {expect}'s new one)")
        ours, theirs = peer_auth.session_keys(secret, hello[2], mine, verdict[1], node_id)
        writer.seal(ours)
        reader.seal(theirs)
        agreed = await _hello(reader, writer, node_id=node_id, ours=versions or local_range(),
                              where=where, server=verdict[1], timeout_s=timeout_s)
        if on_hello is not None:
            on_hello(agreed)
        if worker is not None:
            await _attach(reader, writer, agreed=agreed, worker=worker, where=where,
                          timeout_s=timeout_s)
    except asyncio.IncompleteReadError:
        writer.close()
        raise ConnectionError(f"{where} closed the connection during the handshake") from None
    except ProtocolError as e:
        writer.close()
        raise ConnectionError(f"{where} is not a ringkv peer port: {e}") from e
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, node_id: str,
                 ours: VersionRange, where: str, server: str, timeout_s: float) -> Negotiated:
    """The first sealed exchange: our range out, the version to speak back.
    A server that does not know ``hello`` predates it and speaks 3 alone."""
    request = m.Hello({"versions": ours.to_wire(), "node": node_id, "release": RELEASE})
    reply = await _exchange(reader, writer, 0, request, where=where, timeout_s=timeout_s)
    who = f"{where} (node {server})"
    if reply.status is m.Status.BAD_REQUEST and "unknown op" in reply.message:
        return Negotiated(negotiate(ours, LEGACY, who=who), LEGACY, server, "")
    if not reply.ok:
        raise PeerVersionError(f"{who} refused us: {reply.message}")
    p = reply.payload
    if not isinstance(p, dict):
        raise ProtocolError("hello reply: expected a map")
    theirs = VersionRange.from_wire(p.get("versions"))
    use = negotiate(ours, theirs, who=who)
    if p.get("use") != use:
        raise PeerVersionError(f"{who} chose peer protocol {p.get('use')!r} of {theirs}, "
                               f"we {use} of {ours}")
    release = p.get("release")
    workers = p.get("workers")
    return Negotiated(use, theirs, server, release if isinstance(release, str) else "",
                      workers if type(workers) is int and 0 < workers < 1 << 16 else 0)


class AttachRefused(ConnectionRefusedError):
    """The node did not attach the connection to a worker: it speaks no
    protocol 5, the worker is down or not ready, or the node keeps replica
    traffic on its relay. Replica traffic then goes through the node."""


async def _attach(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                  agreed: Negotiated, worker: int, where: str, timeout_s: float) -> None:
    """The connection's last request to the node: ``attach`` to ``worker``,
    answered by the worker once it serves the connection itself."""
    if agreed.version < DIRECT or not 0 <= worker < agreed.workers:
        raise AttachRefused(f"{where} (node {agreed.node}) speaks peer protocol "
                            f"{agreed.version} with {agreed.workers} workers: no worker {worker}")
    reply = await _exchange(reader, writer, 1, m.Attach({"worker": worker}), where=where,
                            timeout_s=timeout_s)
    if not reply.ok:
        raise AttachRefused(f"{where} (node {agreed.node}) did not attach us to worker "
                            f"{worker}: {reply.message}")
    if not isinstance(reply.payload, dict) or reply.payload.get("worker") != worker:
        raise ProtocolError(f"attach reply: expected worker {worker}, got {reply.payload!r:.60}")


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    rid: int, request: m.Request, *, where: str, timeout_s: float) -> m.Reply:
    """One request of the connection's set-up and its one reply."""
    op = m.op_of(request)
    writer.write(codec.encode_requests([(rid, request)]))
    await asyncio.wait_for(writer.drain(), timeout_s)
    header = await _within(reader.readexactly(codec.HEADER.size), timeout_s, where)
    (length,) = codec.HEADER.unpack(header)
    if not 0 < length <= HANDSHAKE_MAX_FRAME:
        raise ProtocolError(f"{op} reply of {length} bytes")
    replies = codec.decode_replies(await _within(reader.readexactly(length), timeout_s, where))
    if len(replies) != 1 or replies[0][0] != rid:
        raise ProtocolError(f"{op} reply: expected the one reply to request {rid}")
    return replies[0][1]


async def _within(aw: Any, timeout_s: float, where: str) -> bytes:
    try:
        data: bytes = await asyncio.wait_for(aw, timeout_s)
    except TimeoutError:
        raise TimeoutError(f"peer handshake: no hello reply from {where} within "
                           f"{timeout_s}s") from None
    return data


async def _connect(host: str, port: int, local: tuple[str, int] | None,
                   ) -> tuple[SealedReader, SealedWriter]:
    """``asyncio.open_connection`` with the stream classes of a peer
    connection: the server's two handshake frames pass, then tags rule."""
    loop = asyncio.get_running_loop()
    reader = SealedReader(plain_frames=2, limit=READ_CHUNK)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port,
                                                local_addr=local)
    return reader, SealedWriter(transport, protocol, reader, loop)


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"peer address must be host:port, got {addr!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


#: Reconnect delay after failed connects: 0.1 s doubling to 2 s, reset by a
#: success (a restarted peer is found again within about 2 s).
RECONNECT_INITIAL_S = 0.1
RECONNECT_MAX_S = 2.0


def reconnect_backoff() -> Backoff:
    return Backoff(RECONNECT_INITIAL_S, RECONNECT_MAX_S)


def peer_client(
    addr: str, node_id: str, secret: bytes, *, name: str | None = None,
    timeout_s: float = 2.0, max_inflight: int = 4096, source: str | None = None,
    backoff: Backoff | None = None, expect: str | None = None,
    versions: VersionRange | None = None,
    on_hello: Callable[[Negotiated], None] | None = None, worker: int | None = None,
) -> ShardClient:
    """A ShardClient whose connector is ``open_peer`` to ``addr`` ("host:port").

    ``name`` (default ``"peer <addr>"``) appears in error messages. A refused
    handshake surfaces from calls as ShardUnavailable, as a failed connect
    does. ``expect``, ``versions``, ``on_hello``, ``worker``: as ``open_peer``'s.
    """
    host, port = _split_addr(addr)
    backoff = backoff or reconnect_backoff()

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
            streams = await open_peer(host, port, node_id, secret, timeout_s, source=source,
                                      expect=expect, versions=versions, on_hello=on_hello,
                                      worker=worker)
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


