"""One client connection through the shadow proxy.

::

    client ──bytes──▶ ClientSide ──the same bytes, at once──▶ primary
       ▲                 │ parsed after forwarding: requests, each planned
       │                 │ (policy.py), the mirrored ones re-encoded
       │                 ▼
       │             ShadowLink ──▶ ringkv ──replies──▶ Pair.ringkv_in
       └──bytes── PrimarySide ◀──replies── primary
                   forwarded at once, then parsed: Pair.primary_in

The client's path is a byte pipe: what the client sends is written to the
primary before the proxy looks at it, and what the primary answers is
written to the client before the proxy parses it, so pipelining, ordering
and every reply (even of commands the proxy does not understand) are the
primary's. Observation runs behind it: a FIFO of the requests the primary
has not answered yet pairs its replies with requests (one reply each).
When that pairing cannot hold (pub/sub, MONITOR, a protocol error, a
reply without a request), the connection stays a pipe and is no longer
observed (counted by cause).

Flow control is end to end: a client that stops reading pauses the
primary's socket, a primary that stops reading pauses the client's. ringkv
never pauses anything (see mirror.py).
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import cast

import hiredis

from cli.shadow.aio import Tasks, no_delay
from cli.shadow.compare import read_replies
from cli.shadow.config import ShadowConfig
from cli.shadow.mirror import ShadowLink
from cli.shadow.pair import Pair
from cli.shadow.policy import Action, Plan, plan
from cli.shadow.stats import ShadowStats
from coordinator.client.resp import DEFAULT_MAX_BULK, Discarded, RequestParser
from coordinator.errors import RespProtocolError

#: A request with a bulk longer than this is forwarded but not mirrored
#: (ringkv's value limit is far below it), counted under this label.
TOO_LARGE = Plan(Action.UNSUPPORTED, f"bulk over {DEFAULT_MAX_BULK >> 20} MiB")


@dataclass
class Context:
    """What every connection shares; the proxy (server.py) owns it."""

    config: ShadowConfig
    stats: ShadowStats
    tasks: Tasks = field(default_factory=Tasks)
    clients: set[ClientSide] = field(default_factory=set)
    links: set[ShadowLink] = field(default_factory=set)


class ClientSide(asyncio.Protocol):
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._stats = ctx.stats
        self._transport: asyncio.Transport | None = None
        self._primary: asyncio.Transport | None = None
        self._primary_full = False
        self._early: list[bytes] = []  # read before the primary was up
        self._gone = False
        self._link = ShadowLink(ctx.config, ctx.stats, ctx.tasks, ctx.links.discard)
        self._observing = True
        self._parser = RequestParser()
        self._reader = hiredis.Reader()
        # Requests the primary has not answered: when read, and their Pair
        # if mirrored.
        self._fifo: collections.deque[tuple[int, Pair | None]] = collections.deque()
        self._in_multi = False

    # -- the client's socket ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        no_delay(transport)
        self._transport.pause_reading()  # until the primary is connected
        self._ctx.clients.add(self)
        self._ctx.links.add(self._link)
        self._stats.connections += 1
        self._ctx.tasks.spawn(self._connect_primary())

    async def _connect_primary(self) -> None:
        config = self._ctx.config
        try:
            await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                lambda: PrimarySide(self), config.primary.host, config.primary.port),
                config.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            self._stats.primary_failures[getattr(exc, "strerror", None) or "timed out"] += 1
            if self._transport is not None:
                self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._primary is None:
            # uvloop starts reading after connection_made whatever it said:
            # hold this much and pause again until the primary is up.
            self._early.append(data)
            if self._transport is not None:
                self._transport.pause_reading()
            return
        self._primary.write(data)
        if self._observing:
            self._observe(data)

    def eof_received(self) -> bool:
        if self._primary is not None and self._primary.can_write_eof():
            self._primary.write_eof()
            return True  # keep sending the primary's replies until it closes
        return False

    def pause_writing(self) -> None:
        if self._primary is not None:
            self._primary.pause_reading()

    def resume_writing(self) -> None:
        if self._primary is not None:
            self._primary.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        if self._primary is not None:
            self._primary.close()
        self._unpair("client closed")
        self._link.finish()
        self._ctx.clients.discard(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- what the primary side reports ----------------------------------------------

    def primary_up(self, transport: asyncio.Transport) -> None:
        if self._gone:
            transport.close()
            return
        self._primary = transport
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        self._update_reading()

    def from_primary(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)
        if self._observing:
            self._replies(data)

    def primary_full(self, full: bool) -> None:
        self._primary_full = full
        self._update_reading()

    def primary_lost(self) -> None:
        if self._transport is not None:
            self._transport.close()  # after what is buffered for the client

    def _update_reading(self) -> None:
        if self._transport is None or self._gone:
            return
        if self._primary is not None and not self._primary_full:
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()

    # -- observing -----------------------------------------------------------------------

    def _observe(self, data: bytes) -> None:
        now_ns = time.monotonic_ns()
        parser = self._parser
        parser.feed(data)
        while self._observing:
            got = parser.gets()
            if got is None:
                return
            if isinstance(got, RespProtocolError):
                self._unobserve("client protocol error")
            elif isinstance(got, Discarded):
                self._stats.served_only(TOO_LARGE)
                self._fifo.append((now_ns, None))
            else:
                self._request(got, now_ns)

    def _request(self, request: list[bytes], now_ns: int) -> None:
        p = plan(request, self._in_multi)
        if p.action is Action.UNOBSERVABLE:
            self._unobserve(p.label)
            return
        name = request[0].upper()
        if name == b"MULTI":
            self._in_multi = True
        elif name in (b"EXEC", b"DISCARD"):
            self._in_multi = False
        pair = None
        if p.action is Action.MIRROR:
            pair = Pair(p, now_ns)
            if not self._link.mirror(pair, request):
                pair = None
        else:
            self._stats.served_only(p)
        self._fifo.append((now_ns, pair))

    def _replies(self, data: bytes) -> None:
        fifo, stats = self._fifo, self._stats
        now_ns = time.monotonic_ns()
        replies = read_replies(self._reader, data)
        if replies is None:
            self._unobserve("primary protocol error")
            return
        for reply in replies:
            if not fifo:
                self._unobserve("primary reply without request")
                return
            t0_ns, pair = fifo.popleft()
            stats.primary_answered((now_ns - t0_ns) // 1000)
            if pair is not None:
                pair.primary_in(reply, stats)

    def _unobserve(self, reason: str) -> None:
        self._observing = False
        self._stats.unobserved[reason] += 1
        self._unpair("connection unobserved")

    def _unpair(self, reason: str) -> None:
        """Requests the primary will not be seen answering: no comparison."""
        for _, pair in self._fifo:
            if pair is not None:
                pair.abandon(reason, self._stats)
        self._fifo.clear()


class PrimarySide(asyncio.Protocol):
    """The primary's socket of one client connection."""

    def __init__(self, client: ClientSide) -> None:
        self._client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        no_delay(transport)
        self._client.primary_up(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self._client.from_primary(data)

    def pause_writing(self) -> None:
        self._client.primary_full(True)

    def resume_writing(self) -> None:
        self._client.primary_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.primary_lost()
