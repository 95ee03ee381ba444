"""Handing a sealed peer connection from a coordinator to one of its
workers (peer protocol 5, docs/formats/shard-protocol.md, "Direct to the
worker").

A peer that sent ``attach {"worker": k}`` as the last request of its
connection gets that connection served by worker ``k`` from then on. The
coordinator passes the socket and the session's state to the worker over
the worker's attach socket (next to its request socket, in the node's
``run/`` directory, mode 0700), one connection per hand-over::

    coordinator                                     worker k
      connect <run>/worker-k.attach (SOCK_SEQPACKET)
      ── sendmsg: msgpack [1, peer, worker, rid, in_key, received, out_key,
                           sent, max_clock_drift_ms, clock_offset_ms]
                  + SCM_RIGHTS [the TCP socket] ──────────────────▶
                                                  checks the sender is its
                                                  parent process, adopts the
                                                  socket
      ◀── b"ok"  (or b"no: <reason>", or a hang-up: the worker closed its copy)
      closes its own copy of the socket           answers the attach request
                                                  (id ``rid``) on the socket

``in_key``/``received`` are the peer→node direction's key and the frames
checked so far, ``out_key``/``sent`` the node→peer key and the frames tagged
so far, so the worker goes on with the very sequence numbers the
coordinator stopped at and the peer sees one unbroken sealed session.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from dataclasses import dataclass

import msgpack

__all__ = ["AttachError", "SessionState", "attach_path", "hand_over", "receive"]

_FORMAT = 1
_MAX_MESSAGE = 4096
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class AttachError(ConnectionError):
    """The hand-over did not happen; the message says why. The coordinator
    still owns the connection."""


@dataclass(frozen=True, slots=True)
class SessionState:
    """What a worker needs to go on with a sealed peer session."""

    peer: str  # the authenticated peer's node id
    worker: int  # the worker index the peer asked for (its attach is answered with it)
    rid: int  # id of the attach request, which the worker answers
    in_key: bytes
    received: int
    out_key: bytes
    sent: int
    max_clock_drift_ms: int
    clock_offset_ms: int

    def encode(self) -> bytes:
        raw: bytes = msgpack.packb(
            [_FORMAT, self.peer, self.worker, self.rid, self.in_key, self.received,
             self.out_key, self.sent, self.max_clock_drift_ms, self.clock_offset_ms],
            use_bin_type=True)
        return raw

    @classmethod
    def decode(cls, raw: bytes) -> SessionState:
        try:
            f = msgpack.unpackb(raw, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise AttachError(f"malformed hand-over message: {e}") from e
        if not (isinstance(f, list) and len(f) == 10 and f[0] == _FORMAT
                and isinstance(f[1], str) and isinstance(f[4], bytes) and len(f[4]) == 32
                and isinstance(f[6], bytes) and len(f[6]) == 32
                and all(type(f[i]) is int and f[i] >= 0 for i in (2, 3, 5, 7, 8))
                and type(f[9]) is int):
            raise AttachError("malformed hand-over message")
        return cls(*f[1:])


def attach_path(socket_path: str) -> str:
    """The attach socket of the worker whose request socket is ``socket_path``."""
    return socket_path.removesuffix(".sock") + ".attach"


async def _readable(sock: socket.socket, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: None if ready.done() else ready.set_result(None))
    try:
        await asyncio.wait_for(ready, timeout_s)
    finally:
        loop.remove_reader(fd)


async def hand_over(path: str, fd: int, state: SessionState, timeout_s: float) -> None:
    """Pass the connection ``fd`` to the worker listening at ``path``; returns
    once the worker serves it (the caller then closes its copy). AttachError
    when the worker refused or could not be reached: the caller still owns
    the connection. TimeoutError: unknown whether the worker took it, so the
    caller must drop the connection."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, path), timeout_s)
            socket.send_fds(s, [state.encode()], [fd])
        except (OSError, TimeoutError) as e:  # nothing reached the worker
            raise AttachError(f"cannot reach the worker at {path}: {e}") from e
        await _readable(s, timeout_s)
        try:
            answer = s.recv(_MAX_MESSAGE)
        except OSError as e:  # it hung up without taking the socket
            raise AttachError(f"the worker at {path} closed the hand-over: {e}") from e
    if answer != b"ok":
        raise AttachError(answer.decode("utf-8", "replace").removeprefix("no: ")
                          or "the worker closed the hand-over")


async def receive(conn: socket.socket, parent: int, timeout_s: float,
                  ) -> tuple[SessionState, socket.socket]:
    """Worker side: the next hand-over on ``conn`` (accepted on the attach
    socket): the session and the adopted socket. Only ``parent``, the
    coordinator that started this worker, may hand connections over."""
    pid, _, _ = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                             _CRED.size))
    if pid != parent:
        raise AttachError(f"hand-over from pid {pid}, not from our coordinator ({parent})")
    await _readable(conn, timeout_s)
    msg, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 1)
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise AttachError(f"hand-over carried {len(fds)} sockets, expected 1")
    sock = socket.socket(fileno=fds[0])
    try:
        state = SessionState.decode(msg)
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET,
                                                                  socket.AF_INET6):
            raise AttachError("hand-over carried something other than a TCP socket")
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return state, sock
