"""One client connection, as an ``asyncio.Protocol``: no task per
connection and none per command.

::

    data_received ─▶ RequestParser (resp.py) ─▶ a slot per request at the tail of the FIFO
        connection commands (PING, AUTH, ...): the slot is filled at once
        data commands: started at once, or once the earlier unfinished
            commands of this connection that name one of its keys have ended
            (a pipelined SET k then GET k reads its own write); the slot is
            filled from the command's done-callback
    head of the FIFO filled ─▶ every consecutive filled slot in one transport.write

So replies leave in request order however the quorum rounds end, and a
pipeline's replies that end in one event-loop turn leave in one write.

Limits (docs/protocol.md, *Limits and abusive clients*):

- A budget per connection, charged before a command runs: at most
  ``MAX_PENDING`` slots, and ``MAX_PENDING_BYTES`` of request sizes plus
  the largest reply each can have (the command table's bound). A request
  that does not fit waits, and reading pauses, until written replies free
  room; a request bigger than the whole budget runs alone.
- Replies go to the transport while it takes them; when its buffer is full
  (``pause_writing``) replies stay in the FIFO, which fills the budget and
  pauses reading. A reply over ``WRITE_CHUNK`` leaves in slices of that
  size. A client that takes nothing for ``idle_timeout_s`` is dropped.
- A connection with nothing to do that sent nothing and was sent nothing for
  ``idle_timeout_s`` is closed without a reply, as Redis does.
- A failed AUTH may hold the connection (``ClientSession.hold_s``): its
  reply and every later request wait for a timer; others are served. An
  AUTH from an address with many recent failures waits for that address's
  next slot before it is checked (coordinator.client.auth_guard).
- Before AUTH, reading pauses while the parser holds more than about one
  request (16.5 KiB), e.g. while a connection is held.
- A protocol error is answered, after the replies before it, and the
  connection closed; so is QUIT, and a client's end of stream once its
  requests are answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from coordinator.client import commands
from coordinator.client.commands import CommandSpec
from coordinator.client.data_commands import Backend
from coordinator.client.parsing import NO_COMMAND, Command, Limits
from coordinator.client.replies import Error, RespReply, encode_reply
from coordinator.client.resp import UNAUTHENTICATED_MAX_REQUEST, RequestParser
from coordinator.client.session import ClientSession, ClientStats, SessionCommands
from coordinator.config import NodeConfig
from coordinator.data.quorum import NO_LEVELS, Consistency, check_levels
from coordinator.errors import (
    CommandError,
    NoAuthError,
    NoQuorumError,
    RespProtocolError,
    UnavailableError,
)
from coordinator.ratelimit import LimitedLog

log = logging.getLogger("ringkv.server")

# Replies queued per connection before reading pauses: with 64 KiB values
# at most 16 MiB held for one client that pipelines without reading.
MAX_PENDING = 256
# Bytes queued per connection before reading pauses: requests' sizes plus
# the largest replies they can have. One command bigger than this (an MGET
# of up to max_reply_bytes) runs alone.
MAX_PENDING_BYTES = 16 << 20
WRITE_CHUNK = 256 * 1024  # replies leave in writes of about this size
# A command charged at most this runs on a connection with nothing queued
# even when the node's budget (max_node_reply_bytes) is full: a GET is never
# refused because others ask for huge MGETs.
SMALL_COST = 1 << 20

# What _admit says of a command's charge.
_RUN, _WAIT, _REFUSE = range(3)

#: Commands that may carry a password (coordinator.client.auth_guard).
_AUTHS = frozenset({"AUTH", "HELLO"})


def _nothing() -> None:
    pass


#: ``(command, levels, outcome, seconds)`` for every command that reached
#: storage; outcome is "ok", "noquorum" or "error".
Observe = Callable[[CommandSpec, Consistency, str, float], None]


@dataclass(slots=True)
class Shared:
    """What every connection of one server uses (the server owns it)."""

    config: NodeConfig
    backend: Backend
    session_commands: SessionCommands
    observe: Observe
    stats: ClientStats
    limits: Limits
    max_bulk: int
    client_log: LimitedLog
    connections: set[ClientConnection] = field(default_factory=set)
    next_id: int = 0
    #: Bytes charged by every connection's FIFO (max_node_reply_bytes bounds it).
    in_flight: int = 0
    #: Connections waiting for in_flight to go down, and whether a wake-up of
    #: them is scheduled.
    blocked: set[ClientConnection] = field(default_factory=set)
    waking: bool = False

    def released(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bytes left the node's budget: let the waiting connections try."""
        if self.blocked and not self.waking:
            self.waking = True
            loop.call_soon(self._wake)

    def _wake(self) -> None:
        self.waking = False
        blocked, self.blocked = self.blocked, set()
        for conn in blocked:
            conn._pump()


class _Slot:
    """One request's place in the reply FIFO: ``data`` is its encoded reply,
    None until it is known. For a data command also what it runs and who
    waits for it (later commands of the connection naming one of its keys)."""

    __slots__ = ("command", "conn", "cost", "data", "fut", "levels", "spec", "started",
                 "waiters", "waiting")

    def __init__(self, conn: ClientConnection, cost: int) -> None:
        self.conn = conn
        self.cost = cost
        self.data: bytes | memoryview | None = None
        self.spec: CommandSpec | None = None  # set for a data command
        self.command = NO_COMMAND
        self.levels = NO_LEVELS
        self.started = 0.0
        self.fut: asyncio.Future[RespReply] | None = None
        self.waiters: list[_Slot] = []
        self.waiting = 0  # earlier commands it waits for

    def done(self, fut: asyncio.Future[RespReply]) -> None:
        self.conn._command_done(self, fut)


class ClientConnection(asyncio.Protocol):
    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._loop = asyncio.get_running_loop()
        self._idle_s = shared.config.idle_timeout_s
        self._transport: asyncio.Transport | None = None
        self.session = ClientSession(0, "?")
        self._parser = RequestParser(max_bulk=shared.max_bulk, max_request=4 * shared.max_bulk)
        self._fifo: deque[_Slot] = deque()
        self._queued = 0  # bytes charged to the budget by the slots in the FIFO
        # key -> the connection's latest unfinished command on it
        self._tails: dict[bytes, _Slot] = {}
        self._deferred: tuple[list[bytes], CommandSpec | None, int] | None = None
        self._held = False  # a failed AUTH holds the connection
        self._auth_slot = False  # the deferred request is an AUTH whose slot has come
        self._closing = False  # answer what is queued, then close
        self._eof = False
        self._lost = False
        self._reading = True
        self._write_paused = False
        self._pumping = False
        self._last_active = self._loop.time()
        self._pump_handle: asyncio.Handle | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._slow_handle: asyncio.TimerHandle | None = None
        self._hold_handle: asyncio.TimerHandle | None = None

    # -- transport events ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are one.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        shared = self._shared
        shared.stats.connections_received += 1
        if len(shared.connections) >= shared.config.max_clients:
            shared.stats.rejected_connections += 1
            self._lost = True  # nothing more is read or run
            transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()
            return
        shared.connections.add(self)
        shared.next_id += 1
        peer = transport.get_extra_info("peername")
        self.session = ClientSession(shared.next_id,
                                     f"{peer[0]}:{peer[1]}" if peer else "?",
                                     host=str(peer[0]) if peer else "?")
        self.session.authenticated = not shared.config.requirepass
        if not self.session.authenticated:
            self._parser.restrict()
        if self._idle_s:
            self._idle_handle = self._loop.call_later(self._idle_s, self._idle_check)

    def data_received(self, data: bytes) -> None:
        if self._lost:
            return
        self._last_active = self._loop.time()
        self._parser.feed(data)
        self._pump()

    def eof_received(self) -> bool:
        self._eof = True
        self._pump()
        return True  # keep writing: the requests before the end get their replies

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._idle_s and self._slow_handle is None:
            self._slow_handle = self._loop.call_later(self._idle_s, self._drop_slow_reader)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._slow_handle is not None:
            self._slow_handle.cancel()
            self._slow_handle = None
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        """The client is gone: stop its commands and timers."""
        self._lost = True
        shared = self._shared
        shared.connections.discard(self)
        shared.blocked.discard(self)
        shared.in_flight -= self._queued
        self._queued = 0
        shared.released(self._loop)
        for handle in (self._pump_handle, self._idle_handle, self._slow_handle,
                       self._hold_handle):
            if handle is not None:
                handle.cancel()
        for slot in self._fifo:
            if slot.fut is not None:
                slot.fut.cancel()
        self._fifo.clear()
        self._tails.clear()
        self._deferred = None

    def close(self) -> None:
        """Close at once (the server stops)."""
        if self._transport is not None:
            self._transport.close()

    # -- requests --------------------------------------------------------------
    def _pump(self) -> None:
        """Run what the parser holds as far as the budget allows, write the
        replies that are ready, and again while writing made room."""
        if self._pumping or self._lost:
            return
        self._pumping = True
        try:
            while True:
                self._run_requests()
                if not self._write_ready() or self._deferred is None:
                    break
        finally:
            self._pumping = False
        self._settle()

    def _run_requests(self) -> None:
        parser = self._parser
        while not (self._closing or self._held):
            if self._deferred is not None:
                request, spec, cost = self._deferred
                verdict = self._admit(cost)
                if verdict == _WAIT:
                    return
                self._deferred = None
                slot_came, self._auth_slot = self._auth_slot, False
            else:
                item = parser.gets()
                if item is None:
                    if self._eof:
                        self._closing = True
                    return
                if isinstance(item, RespProtocolError):
                    self._protocol_error(item)
                    return
                request, slot_came = item, False
                spec = commands.lookup(request)
                bound = (commands.REPLY_SLACK if spec is None
                         else spec.reply_bound(request, self._shared.limits))
                cost = sum(map(len, request)) + bound
                verdict = self._admit(cost)
                if verdict == _WAIT:
                    self._deferred = (request, spec, cost)
                    return
            if verdict == _REFUSE:
                self._overloaded()
                continue
            if (spec is not None and spec.name in _AUTHS and not slot_came
                    and self._auth_waits(request, spec, cost)):
                continue
            self._handle(request, spec, cost)

    def _auth_waits(self, request: list[bytes], spec: CommandSpec, cost: int) -> bool:
        """An AUTH from an address with too many recent failures: hold the
        connection until the address's next slot and check it then, or
        refuse it unchecked (coordinator.client.auth_guard). True if it is
        not to be handled now."""
        shared = self._shared
        if not shared.config.requirepass or (
                spec.name == "HELLO" and not any(a.upper() == b"AUTH" for a in request[2:])):
            return False
        host = self.session.host
        wait = shared.session_commands.auth_guard.wait_s(host, time.monotonic())
        if wait is None:
            shared.stats.commands_processed += 1
            slot = self._add(cost)
            slot.data = encode_reply(Error(
                f"ERR too many failed AUTHs from {host}; try again later"), self.session.proto)
            return True
        if not wait:
            return False
        self._deferred, self._auth_slot = (request, spec, cost), True
        self._pause_for(wait, _nothing)
        return True

    def _admit(self, cost: int) -> int:
        """Whether a command charged ``cost`` runs now, waits for replies to
        leave (reading pauses), or is refused: past the connection's budget
        it waits (unless nothing is queued: then it runs alone); past the
        node's, a connection with replies queued waits, one without runs a
        small command and is refused a big one."""
        fifo, shared = self._fifo, self._shared
        if fifo and (len(fifo) >= MAX_PENDING or self._queued + cost > MAX_PENDING_BYTES):
            return _WAIT
        if (shared.in_flight + cost <= shared.config.max_node_reply_bytes
                or (not fifo and cost <= SMALL_COST)):
            return _RUN
        if fifo:
            shared.blocked.add(self)
            return _WAIT
        return _REFUSE

    def _overloaded(self) -> None:
        shared = self._shared
        shared.stats.commands_processed += 1
        shared.stats.overloaded_refused += 1
        slot = self._add(0)
        slot.data = encode_reply(Error(
            "OVERLOADED replies in flight on this node are at max_node_reply_bytes "
            f"({shared.config.max_node_reply_bytes}); retry later"), self.session.proto)

    def _protocol_error(self, error: RespProtocolError) -> None:
        shared = self._shared
        shared.stats.protocol_errors += 1
        shared.client_log.log(logging.INFO, "client %s: %s; closing the connection",
                              self.session.peer, error)
        slot = self._add(0)
        slot.data = encode_reply(Error(str(error)), self.session.proto)
        self._closing = True

    def _add(self, cost: int) -> _Slot:
        slot = _Slot(self, cost)
        self._fifo.append(slot)
        self._queued += cost
        self._shared.in_flight += cost
        return slot

    def _handle(self, request: list[bytes], spec: CommandSpec | None, cost: int) -> None:
        shared = self._shared
        session = self.session
        shared.stats.commands_processed += 1
        slot = self._add(cost)
        try:
            if not session.authenticated and (spec is None or spec.name not in
                                              commands.NO_AUTH_NEEDED):
                raise NoAuthError()
            spec = commands.checked(request, spec)
            command = spec.parse(spec.name, request[1:], shared.limits)
            if spec.answer is None:
                self._start(slot, spec, command, self._levels(command))
                reply: RespReply = None
            else:
                reply = spec.answer(shared.session_commands, session, command)
        except CommandError as exc:
            reply = Error(str(exc))
        if slot.spec is None:  # answered here
            data = encode_reply(reply, session.proto)
            if session.hold_s:
                self._hold(slot, data)
            else:
                slot.data = data
        if session.authenticated and self._parser.restricted:
            self._parser.lift()
        if spec is not None and spec.name == "QUIT":
            self._closing = True

    def _levels(self, command: Command) -> Consistency:
        """The command's levels, unset ones from the connection, then the node."""
        session_commands = self._shared.session_commands
        defaults = session_commands.defaults(self.session)
        if command.consistency is NO_LEVELS:
            if defaults is session_commands.node_levels:
                return defaults  # checked when the config was loaded
            levels = defaults
        else:
            levels = command.consistency.merged(defaults)
        check_levels(levels, self._shared.config.n)
        return levels

    def _hold(self, slot: _Slot, data: bytes) -> None:
        """After a failed AUTH: answer it, and go on with the connection,
        only once ``session.hold_s`` has passed."""
        delay, self.session.hold_s = self.session.hold_s, 0.0

        def answer() -> None:
            slot.data = data

        self._pause_for(delay, answer)

    def _pause_for(self, delay: float, then: Callable[[], None]) -> None:
        """Run nothing more of this connection (and read nothing) for
        ``delay`` seconds, then ``then()`` and go on."""
        self._held = True

        def release() -> None:
            self._hold_handle = None
            self._held = False
            then()
            self._pump()

        self._hold_handle = self._loop.call_later(delay, release)

    # -- data commands ---------------------------------------------------------
    def _start(self, slot: _Slot, spec: CommandSpec, command: Command,
               levels: Consistency) -> None:
        """Run the command now, or once the earlier unfinished commands of
        this connection that name one of its keys have ended."""
        slot.spec, slot.command, slot.levels = spec, command, levels
        tails = self._tails
        for key in command.keys:
            prior = tails.get(key)
            if prior is not None and prior is not slot and slot not in prior.waiters:
                prior.waiters.append(slot)
                slot.waiting += 1
            tails[key] = slot
        if not slot.waiting:
            self._run(slot)

    def _run(self, slot: _Slot) -> None:
        spec, backend = slot.spec, self._shared.backend
        assert spec is not None and spec.run is not None
        slot.started = time.perf_counter()
        try:
            if spec.write and (why := backend.draining) is not None:
                raise UnavailableError(why)
            aw: Awaitable[RespReply] = spec.run(backend, slot.command, slot.levels)
            fut = asyncio.ensure_future(aw)
        except CommandError as exc:
            self._complete(slot, Error(str(exc)), "error")
            return
        slot.fut = fut
        fut.add_done_callback(slot.done)

    def _command_done(self, slot: _Slot, fut: asyncio.Future[RespReply]) -> None:
        if fut.cancelled():  # the connection is gone
            return
        exc = fut.exception()
        if exc is None:
            self._complete(slot, fut.result(), "ok")
        elif isinstance(exc, CommandError):
            self._complete(slot, Error(str(exc)),
                           "noquorum" if isinstance(exc, NoQuorumError) else "error")
        else:
            assert slot.spec is not None
            log.error("%s failed", slot.spec.name, exc_info=exc)
            self._complete(slot, Error(f"ERR internal error: {type(exc).__name__}"), "error")

    def _complete(self, slot: _Slot, reply: RespReply, outcome: str) -> None:
        assert slot.spec is not None
        self._shared.observe(slot.spec, slot.levels, outcome, time.perf_counter() - slot.started)
        if self._lost:
            return
        tails = self._tails
        for key in slot.command.keys:
            if tails.get(key) is slot:
                del tails[key]
        waiters = slot.waiters
        # Only the encoded reply stays until it is written (the budget counts
        # it once): not the command, nor the future holding the raw result.
        slot.command, slot.fut, slot.waiters = NO_COMMAND, None, []
        for waiter in waiters:
            waiter.waiting -= 1
            if not waiter.waiting:
                self._run(waiter)
        slot.data = encode_reply(reply, self.session.proto)
        if self._fifo[0] is slot:
            if len(self._fifo) == 1:
                self._pump()
            elif self._pump_handle is None:
                # Replies that end in this loop turn leave together.
                self._pump_handle = self._loop.call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_handle = None
        self._pump()

    # -- replies ---------------------------------------------------------------
    def _write_ready(self) -> int:
        """Write the filled slots at the head of the FIFO, in order, while
        the transport takes them; returns how many left the FIFO."""
        fifo, transport = self._fifo, self._transport
        if self._write_paused or transport is None or not fifo or fifo[0].data is None:
            return 0
        written = 0
        out: list[bytes | memoryview] = []
        size = 0
        while fifo and not self._write_paused:
            slot = fifo[0]
            data = slot.data
            if data is None:
                break
            if len(data) > WRITE_CHUNK:  # a big reply: in slices, no copy
                if out:
                    self._send(out)
                    out, size = [], 0
                view = memoryview(data)
                transport.write(view[:WRITE_CHUNK])
                slot.data = view[WRITE_CHUNK:]
                continue
            fifo.popleft()
            self._queued -= slot.cost
            self._shared.in_flight -= slot.cost
            written += 1
            out.append(data)
            size += len(data)
            if size >= WRITE_CHUNK:
                self._send(out)
                out, size = [], 0
        if out:
            self._send(out)
        self._last_active = self._loop.time()
        if written:
            self._shared.released(self._loop)
        return written

    def _send(self, out: list[bytes | memoryview]) -> None:
        assert self._transport is not None
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _settle(self) -> None:
        """Close once everything is answered after the end; otherwise read
        exactly when requests can run."""
        transport = self._transport
        if transport is None or self._lost:
            return
        if self._closing:
            if not self._fifo:
                transport.close()
            want = False
        else:
            # Before AUTH, no more than about one request is held (resp.py).
            want = not (self._held or self._deferred is not None or (
                not self.session.authenticated
                and self._parser.buffered > UNAUTHENTICATED_MAX_REQUEST))
        if want != self._reading and not self._eof:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    # -- timers ----------------------------------------------------------------
    def _idle_check(self) -> None:
        """Close a connection that has had nothing to do for idle_timeout_s
        (silently, as Redis does); a busy one is looked at again later."""
        loop, idle = self._loop, self._idle_s
        now = loop.time()
        due = self._last_active + idle
        if self._fifo or self._held or self._write_paused or self._closing:
            self._idle_handle = loop.call_at(now + idle, self._idle_check)
            return
        if due > now:
            self._idle_handle = loop.call_at(due, self._idle_check)
            return
        self._idle_handle = None
        if self._transport is not None:
            self._transport.close()

    def _drop_slow_reader(self) -> None:
        """The client took none of its replies for idle_timeout_s: drop it
        (a write it accepts counts as activity, as in Redis)."""
        self._slow_handle = None
        transport = self._transport
        if transport is None or self._lost:
            return
        shared = self._shared
        shared.stats.slow_readers_dropped += 1
        unsent = transport.get_write_buffer_size() + sum(
            len(s.data) for s in self._fifo if s.data is not None)
        shared.client_log.log(
            logging.WARNING, "client %s dropped: took none of its replies for %.0f s "
            "(%d bytes unsent)", self.session.peer, self._idle_s, unsent)
        transport.abort()
