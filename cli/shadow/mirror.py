"""The ringkv side of one client connection: a raw ``asyncio.Protocol``
that sends the mirrored requests in the client's order and hands each
reply to its :class:`~cli.shadow.pair.Pair`.

Nothing here can hold up the primary's side: :meth:`ShadowLink.mirror`
never waits. It drops the request (counted by reason) when ringkv is
unreachable, when its socket stopped draining (ringkv not reading: the
transport paused us), or when ``--max-pending`` mirrors await replies
over all connections. The link connects on the first mirror; requests
mirrored meanwhile wait in a backlog counted as pending. Replies pair with
requests in order, so one lost reply ends the connection: a reply late by
``--shadow-timeout``, a protocol error or a refused AUTH abandons every
pending mirror of the link (counted), closes it, and the next mirror after
:data:`RETRY_S` connects again.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Callable, Sequence
from typing import cast

import hiredis

from cli.bench.conn import WRITE_HIGH_WATER
from cli.bench.workload import encode
from cli.shadow.aio import Tasks, no_delay
from cli.shadow.compare import read_replies
from cli.shadow.config import ShadowConfig
from cli.shadow.pair import Pair
from cli.shadow.stats import ShadowStats

#: After a failure, mirrors are dropped this long before a new connection.
RETRY_S = 1.0


class _State(enum.Enum):
    IDLE = "idle"  # nothing mirrored yet
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"  # failed; retry after _retry_at
    CLOSED = "closed"  # the client left and nothing is pending


class _Auth:
    """The entry in flight for the AUTH the link sends first."""


_AUTH = _Auth()


class ShadowLink(asyncio.Protocol):
    def __init__(self, config: ShadowConfig, stats: ShadowStats, tasks: Tasks,
                 on_closed: Callable[[ShadowLink], None]) -> None:
        self._config = config
        self._stats = stats
        self._tasks = tasks
        self._on_closed = on_closed
        self._state = _State.IDLE
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._inflight: collections.deque[Pair | _Auth] = collections.deque()
        self._backlog: list[bytes] = []
        self._paused = False
        self._finishing = False
        self._retry_at = 0.0
        self._auth_at_ns = 0

    # -- the client side's calls --------------------------------------------

    def mirror(self, pair: Pair, request: Sequence[bytes]) -> bool:
        """Send ``request`` to ringkv for ``pair``; False if it was dropped."""
        state, stats = self._state, self._stats
        if state is _State.IDLE or (state is _State.DOWN and time.monotonic() >= self._retry_at):
            self._connect()
            state = self._state
        if state is not _State.CONNECTING and state is not _State.UP:
            reason = "ringkv unreachable"
        elif self._paused:
            reason = "ringkv not reading"
        elif stats.pending >= self._config.max_pending:
            reason = "max pending"
        else:
            data = encode(*request)
            if self._transport is not None:
                self._transport.write(data)
            else:
                self._backlog.append(data)
            self._inflight.append(pair)
            stats.sent(pair.plan)
            return True
        stats.drop(pair.plan, reason)
        return False

    def finish(self) -> None:
        """The client left: close once the pending replies are in."""
        self._finishing = True
        if self._state is _State.CONNECTING:
            return  # connection_made or the failure closes it
        if self._transport is not None and not self._inflight:
            self._transport.close()
        elif self._transport is None:
            self._closed()

    def check(self, now_ns: int) -> None:
        """Abandon the link if its oldest pending reply is overdue."""
        if not self._inflight or self._state is not _State.UP:
            return
        head = self._inflight[0]
        since = self._auth_at_ns if isinstance(head, _Auth) else head.t0_ns
        if now_ns - since > self._config.shadow_timeout_s * 1e9:
            self._fail("ringkv timeout")

    def abort(self, reason: str) -> None:
        """The proxy stops: abandon what is pending and close now."""
        self._finishing = True
        self._abandon_all(reason)
        if self._transport is not None:
            self._transport.abort()
        else:
            self._closed()

    # -- connecting -----------------------------------------------------------

    def _connect(self) -> None:
        self._state = _State.CONNECTING
        self._tasks.spawn(self._open())

    async def _open(self) -> None:
        addr = self._config.shadow
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(lambda: self, addr.host, addr.port),
                self._config.connect_timeout_s)
        except (OSError, TimeoutError):
            if self._state is _State.CONNECTING:
                self._down("ringkv unreachable")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        if self._state is not _State.CONNECTING:  # aborted while connecting
            transport.abort()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._transport = transport
        self._state = _State.UP
        no_delay(transport)
        if self._config.shadow_password is not None:
            transport.write(encode(b"AUTH", self._config.shadow_password.encode()))
            self._inflight.appendleft(_AUTH)
            self._auth_at_ns = time.monotonic_ns()
        transport.write(b"".join(self._backlog))
        self._backlog.clear()
        if self._finishing and not self._inflight:
            transport.close()

    # -- replies ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        inflight, stats = self._inflight, self._stats
        now_ns = time.monotonic_ns()
        replies = read_replies(self._reader, data)
        if replies is None or len(replies) > len(inflight):
            self._fail("ringkv protocol error")
            return
        for reply in replies:
            head = inflight.popleft()
            if isinstance(head, _Auth):
                if isinstance(reply, hiredis.ReplyError):
                    self._fail("ringkv AUTH refused")
                    return
                continue
            head.ringkv_in(reply, (now_ns - head.t0_ns) // 1000, stats)
        if self._finishing and not inflight and self._transport is not None:
            self._transport.close()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._paused = False
        if self._inflight:
            self._abandon_all("ringkv connection lost")
        if self._finishing:
            self._closed()
        elif self._state is not _State.DOWN:
            self._down("ringkv connection lost")

    # -- failures ---------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        self._down(reason)
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows, with nothing pending

    def _down(self, reason: str) -> None:
        self._abandon_all(reason)
        self._reader = hiredis.Reader()
        self._retry_at = time.monotonic() + RETRY_S
        if self._finishing and self._transport is None:
            self._closed()
        else:
            self._state = _State.DOWN

    def _abandon_all(self, reason: str) -> None:
        for entry in self._inflight:
            if isinstance(entry, Pair):
                entry.abandon(reason, self._stats)
        self._inflight.clear()
        self._backlog.clear()

    def _closed(self) -> None:
        if self._state is not _State.CLOSED:
            self._state = _State.CLOSED
            self._on_closed(self)
