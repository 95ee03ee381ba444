"""The handlers the command table points to for commands that reach storage
(kinds ``read``, ``write`` and ``admin``): each turns a parsed command into
calls of the quorum data path or of the cluster-wide commands, and their
result into a RESP reply. What they need is named by the :class:`Backend`
Protocol; the node hands one in.

The single-key commands (GET, VGET, SET, VSET, VDEL) are plain functions
returning the future of their reply, chained to the data path's round: no
coroutine and no task per command on the hot path. The multi-key and admin
commands are coroutines; the server runs each as a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from coordinator.client.parsing import Command
from coordinator.client.replies import OK, RespReply
from coordinator.data import reconcile
from coordinator.data.quorum import Consistency
from shardserver.protocol.versions import SiblingSet, Version

T = TypeVar("T")


class DataService(Protocol):
    """Quorum reads and writes (``coordinator.data.datapath.DataPath``)."""

    def read(self, key: bytes, levels: Consistency) -> asyncio.Future[SiblingSet]: ...

    async def read_many(
        self, keys: Sequence[bytes], levels: Consistency, sized: bool
    ) -> dict[bytes, bytes | None]: ...

    def write(
        self, key: bytes, value: bytes | None, levels: Consistency, *, lww: bool,
        context: bytes | None = None,
    ) -> asyncio.Future[Version]: ...

    async def write_many(
        self, pairs: Sequence[tuple[bytes, bytes]], levels: Consistency
    ) -> None: ...

    async def delete_many(self, keys: Sequence[bytes], levels: Consistency) -> int: ...


class Backend(Protocol):
    """What commands that reach storage need of the node."""

    @property
    def data(self) -> DataService: ...

    @property
    def draining(self) -> str | None:
        """Why writes are refused here now (the node drains), or None."""
        ...

    async def dbsize(self) -> int: ...

    async def flushall(self) -> None: ...


def _then(fut: asyncio.Future[T], shape: Callable[[T], RespReply]) -> asyncio.Future[RespReply]:
    """The future of ``shape(fut's result)``; an error passes through."""
    out: asyncio.Future[RespReply] = asyncio.get_running_loop().create_future()

    def done(f: asyncio.Future[T]) -> None:
        if f.cancelled():
            out.cancel()
            return
        exc = f.exception()  # retrieved even when nobody waits any more
        if out.done():
            return
        if exc is not None:
            out.set_exception(exc)
        else:
            out.set_result(shape(f.result()))

    fut.add_done_callback(done)
    return out


def _ok(_: object) -> RespReply:
    return OK


def _vget_reply(siblings: SiblingSet) -> RespReply:
    return list(reconcile.vget_reply(siblings))


def get(b: Backend, c: Command, levels: Consistency) -> Awaitable[RespReply]:
    return _then(b.data.read(c.keys[0], levels), reconcile.get_reply)


def vget(b: Backend, c: Command, levels: Consistency) -> Awaitable[RespReply]:
    return _then(b.data.read(c.keys[0], levels), _vget_reply)


async def mget(b: Backend, c: Command, levels: Consistency) -> RespReply:
    found = await b.data.read_many(c.keys, levels, sized=True)
    return [found[k] for k in c.keys]


async def exists(b: Backend, c: Command, levels: Consistency) -> RespReply:
    found = await b.data.read_many(c.keys, levels, sized=False)
    return sum(1 for k in c.keys if found[k] is not None)


def set_(b: Backend, c: Command, levels: Consistency) -> Awaitable[RespReply]:
    return _then(b.data.write(c.keys[0], c.values[0], levels, lww=True), _ok)


def vset(b: Backend, c: Command, levels: Consistency) -> Awaitable[RespReply]:
    return _then(b.data.write(c.keys[0], c.values[0], levels, lww=False, context=c.context),
                 _ok)


def vdel(b: Backend, c: Command, levels: Consistency) -> Awaitable[RespReply]:
    return _then(b.data.write(c.keys[0], None, levels, lww=False, context=c.context), _ok)


async def mset(b: Backend, c: Command, levels: Consistency) -> RespReply:
    await b.data.write_many(list(zip(c.keys, c.values, strict=True)), levels)
    return OK


async def delete(b: Backend, c: Command, levels: Consistency) -> RespReply:
    return await b.data.delete_many(c.keys, levels)


async def dbsize(b: Backend, c: Command, levels: Consistency) -> RespReply:
    return await b.dbsize()


async def flushall(b: Backend, c: Command, levels: Consistency) -> RespReply:
    await b.flushall()
    return OK
