"""The handlers the command table points to for commands that reach storage
(kinds ``read``, ``write`` and ``admin``): each turns a parsed command into
calls of the quorum data path or of the cluster-wide commands, and their
result into a RESP reply. What they need is named by the :class:`Backend`
Protocol; the node hands one in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coordinator.client.parsing import Command
from coordinator.client.replies import OK, RespReply
from coordinator.data import reconcile
from coordinator.data.quorum import Consistency
from shardserver.protocol.versions import SiblingSet, Version


class DataService(Protocol):
    """Quorum reads and writes (``coordinator.data.datapath.DataPath``)."""

    async def read(self, key: bytes, levels: Consistency) -> SiblingSet: ...

    async def vget(self, key: bytes, levels: Consistency) -> list[bytes]: ...

    async def read_many(
        self, keys: Sequence[bytes], levels: Consistency, sized: bool
    ) -> dict[bytes, bytes | None]: ...

    async def write(
        self, key: bytes, value: bytes | None, levels: Consistency, *, lww: bool,
        context: bytes | None = None,
    ) -> Version: ...

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


async def get(b: Backend, c: Command, levels: Consistency) -> RespReply:
    return reconcile.get_reply(await b.data.read(c.keys[0], levels))


async def vget(b: Backend, c: Command, levels: Consistency) -> RespReply:
    return await b.data.vget(c.keys[0], levels)


async def mget(b: Backend, c: Command, levels: Consistency) -> RespReply:
    found = await b.data.read_many(c.keys, levels, sized=True)
    return [found[k] for k in c.keys]


async def exists(b: Backend, c: Command, levels: Consistency) -> RespReply:
    found = await b.data.read_many(c.keys, levels, sized=False)
    return sum(1 for k in c.keys if found[k] is not None)


async def set_(b: Backend, c: Command, levels: Consistency) -> RespReply:
    await b.data.write(c.keys[0], c.values[0], levels, lww=True)
    return OK


async def vset(b: Backend, c: Command, levels: Consistency) -> RespReply:
    await b.data.write(c.keys[0], c.values[0], levels, lww=False, context=c.context)
    return OK


async def vdel(b: Backend, c: Command, levels: Consistency) -> RespReply:
    await b.data.write(c.keys[0], None, levels, lww=False, context=c.context)
    return OK


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
