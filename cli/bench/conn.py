"""One generator connection: a raw ``asyncio.Protocol`` speaking RESP, and
the lane that owns its share of the schedule.

A lane holds two queues: *owed* (batches whose intended time came, not yet
written: the connection was paused by TCP backpressure, or down) and *in
flight* (requests written, reply not yet read; replies come back in
order, so the head of the queue is the request the next reply answers).
Each entry in flight is the time its latency counts from: the intended
time, or the write time if the batch went out early (see
docs/benchmarks.md, "ringkv bench"). A connection lost mid-run counts what
it had in flight as dropped and reconnects until the window closes; what
comes due meanwhile waits in *owed* and, once written, counts its latency
from its intended time, so the outage shows in the percentiles.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Any

import hiredis

from cli.bench.stats import BenchCounters
from cli.bench.workload import Commands, encode

RECONNECT_EVERY_S = 0.1
#: Written bytes the transport may buffer before it pauses us (its default
#: high-water mark is 64 KiB; a deep pipeline of 1 KiB values fills that).
WRITE_HIGH_WATER = 1 << 20


class BenchError(Exception):
    """The load cannot start or go on: unreachable target, refused AUTH,
    preload errors. The message names the cause."""


@dataclass(frozen=True, slots=True)
class ServerAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Window:
    """Monotonic-clock nanoseconds: requests intended (closed loop: sent) in
    [start, end) are measured; nothing is written from ``end`` on."""

    start: int
    end: int


class _Protocol(asyncio.Protocol):
    def __init__(self, lane: Lane) -> None:
        self._lane = lane
        self._reader = hiredis.Reader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            replies = []
            while (reply := reader.gets()) is not False:
                replies.append(reply)
        except hiredis.ProtocolError as exc:
            self._lane.protocol_error(self, str(exc))
            return
        self._lane.on_replies(self, replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane.on_lost(self, exc)

    def pause_writing(self) -> None:
        self._lane.paused = True

    def resume_writing(self) -> None:
        self._lane.paused = False
        self._lane.flush(time.monotonic_ns())


class Lane:
    """One connection to one target, through reconnects."""

    def __init__(self, target: ServerAddr, commands: Commands, stats: BenchCounters, *,
                 pipeline: int, password: str | None, connect_timeout_s: float) -> None:
        self.target = target
        self.paused = False
        self._commands = commands
        self._stats = stats
        self._pipeline = pipeline
        self._password = password
        self._connect_timeout_s = connect_timeout_s
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._ready = False  # connected and past the handshake: run requests may go
        self._lost_reason: str | None = None
        self._owed: collections.deque[int] = collections.deque()
        self._in_flight: collections.deque[int] = collections.deque()
        self._warm_in_flight = 0  # the first this many in flight are not measured
        self._window = Window(0, 0)
        self._closed_loop = False
        self._running = False
        self._call: tuple[int, list[Any], asyncio.Future[list[Any]]] | None = None
        self._reconnect: asyncio.Task[None] | None = None

    # -- setup: connect, handshake, plain calls -------------------------------------
    async def connect(self) -> None:
        """Connect and check the server answers (AUTH first if a password is
        set). BenchError names the target and what went wrong."""
        loop = asyncio.get_running_loop()
        proto = _Protocol(self)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: proto, self.target.host, self.target.port),
                self._connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            why = getattr(exc, "strerror", None) or str(exc) or "timed out"
            raise BenchError(f"cannot connect to {self.target}: {why}") from None
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._transport, self._protocol, self.paused = transport, proto, False
        self._ready, self._lost_reason = False, None
        hello = [encode(b"AUTH", self._password.encode())] if self._password else []
        hello.append(encode(b"PING"))
        try:
            replies = await self.call(b"".join(hello), len(hello), self._connect_timeout_s)
        except BenchError:
            self._drop()
            raise
        bad = [r for r in replies if isinstance(r, hiredis.ReplyError)]
        if bad:
            self._drop()
            raise BenchError(f"{self.target} refused the connection: {bad[0]}")
        self._ready = True

    async def call(self, payload: bytes, replies: int, timeout_s: float) -> list[Any]:
        """Write ``payload`` and wait for ``replies`` replies (setup and
        preload only, never during the run)."""
        if self._transport is None:
            raise BenchError(f"not connected to {self.target}")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._call = (replies, [], future)
        self._transport.write(payload)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise BenchError(f"{self.target} did not answer within {timeout_s:g} s") from None
        finally:
            self._call = None

    def close(self) -> None:
        """The end: no more reconnects, the connection closed."""
        self._running = False
        if self._reconnect is not None:
            self._reconnect.cancel()
        self._drop()

    def _drop(self) -> None:
        """Close this connection (a reconnect, if running, carries on)."""
        self._ready = False
        if self._transport is not None:
            self._transport.abort()
        self._transport = self._protocol = None

    # -- the run ---------------------------------------------------------------------
    def start(self, window: Window, closed_loop: bool) -> None:
        self._window, self._closed_loop, self._running = window, closed_loop, True
        if closed_loop:
            self._send_closed(time.monotonic_ns())

    def owe(self, intended_ns: int) -> None:
        """A batch came due (open loop); :meth:`flush` writes it."""
        self._owed.append(intended_ns)

    def flush(self, now_ns: int) -> None:
        """Write every owed batch in one write, unless paused or down."""
        if not self._owed or self.paused or not self._ready or self._transport is None:
            return
        w, pipeline, stats, next_command = self._window, self._pipeline, self._stats, \
            self._commands.next
        parts = []
        while self._owed:
            intended = self._owed.popleft()
            measured = w.start <= intended < w.end
            stats.on_sent(pipeline, now_ns - intended, measured)
            base = min(intended, now_ns)  # early: from the write; late: from the schedule
            for _ in range(pipeline):
                parts.append(next_command())
                self._in_flight.append(base)
            if not measured:
                self._warm_in_flight += pipeline
        self._transport.write(b"".join(parts))

    def _send_closed(self, now_ns: int) -> None:
        """Closed loop: the next batch goes out as soon as the last is answered."""
        if not self._ready or now_ns >= self._window.end:
            return
        measured = now_ns >= self._window.start
        if measured:
            self._stats.on_scheduled(self._pipeline)
        self._owed.append(now_ns)
        self.flush(now_ns)

    def on_replies(self, proto: _Protocol, replies: list[Any]) -> None:
        if proto is not self._protocol:
            return
        if self._call is not None:
            want, got, future = self._call
            got += replies
            if len(got) >= want and not future.done():
                future.set_result(got)
            return
        now = time.monotonic_ns()
        stats, in_flight = self._stats, self._in_flight
        for reply in replies:
            if not in_flight:
                break  # a reply to nothing we sent: ignore it
            us = (now - in_flight.popleft()) // 1000
            measured = self._warm_in_flight == 0
            if not measured:
                self._warm_in_flight -= 1
            if isinstance(reply, hiredis.ReplyError):
                stats.on_error(str(reply), measured)
            else:
                stats.on_ok(us, measured, reply is None)
        if self._closed_loop and not in_flight and self._running:
            self._send_closed(now)

    def protocol_error(self, proto: _Protocol, message: str) -> None:
        if proto is self._protocol and self._transport is not None:
            self._lost_reason = f"protocol error: {message}"
            self._transport.abort()  # connection_lost follows

    def on_lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is not self._protocol:
            return
        was_ready = self._ready
        self._transport = self._protocol = None
        self._ready = False
        if self._call is not None and not self._call[2].done():
            self._call[2].set_exception(BenchError(
                f"{self.target} closed the connection" + (f": {exc}" if exc else "")))
        if not self._running or not was_ready:
            return  # setup, the end of the run, or a reconnect attempt that failed
        measured = len(self._in_flight) - self._warm_in_flight
        self._in_flight.clear()
        self._warm_in_flight = 0
        reason = self._lost_reason or (type(exc).__name__ if exc else "closed by the server")
        self._stats.on_disconnect(reason, measured)
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        while self._running and time.monotonic_ns() < self._window.end:
            await asyncio.sleep(RECONNECT_EVERY_S)
            with contextlib.suppress(BenchError):
                await self.connect()
                now = time.monotonic_ns()
                if self._closed_loop:
                    self._send_closed(now)
                else:
                    self.flush(now)
                return

    # -- the end ----------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def owed(self) -> int:
        return len(self._owed)

    def measured_in_flight(self) -> int:
        return len(self._in_flight) - self._warm_in_flight

    def measured_owed(self) -> int:
        w = self._window
        return sum(self._pipeline for t in self._owed if w.start <= t < w.end)
