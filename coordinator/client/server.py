"""The client-facing server: RESP over TCP, one task per connection.

Startup -> accept loop -> shutdown, uvicorn-style: every connection task is
registered and cancelled on shutdown. Per connection, requests are parsed
sans-IO (coordinator.client.resp) and looked up in the command table
(coordinator.client.commands); each gets a slot in a FIFO of pending
replies, and a writer drains the FIFO in request order, so a pipeline of
quorum requests can finish out of order while its replies still come back
in order (DESIGN §5). The FIFO is bounded by count (MAX_PENDING) and by
bytes (MAX_PENDING_BYTES: each request counts its own size plus the largest
reply it can have, from the table): when either is reached the connection
stops reading until its replies have been written, so a client that
pipelines without reading, or asks for huge replies, cannot grow our memory.
A reply over WRITE_CHUNK leaves in slices of that size, so the socket's
buffer never holds a whole 64 MiB MGET.

Connection-level commands are answered at once by their handler
(coordinator.client.session, which also holds back a connection after a
failed AUTH). The others run their handler against the node's
:class:`~coordinator.client.data_commands.Backend`, timed and counted by
``observe`` as they finish. Before AUTH the parser applies Redis's limits
for unauthenticated clients. Log lines that a client can trigger at will are
rate-limited (coordinator.ratelimit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from coordinator.client import commands
from coordinator.client.commands import CommandSpec
from coordinator.client.data_commands import Backend
from coordinator.client.parsing import Command, Limits
from coordinator.client.replies import Error, RespReply, encode_reply
from coordinator.client.resp import RequestParser
from coordinator.client.session import ClientSession, ClientStats, InfoText, SessionCommands
from coordinator.config import NodeConfig
from coordinator.data.quorum import Consistency, check_levels
from coordinator.errors import (
    CommandError,
    NoAuthError,
    NoQuorumError,
    RespProtocolError,
    UnavailableError,
)
from coordinator.ratelimit import LimitedLog
from coordinator.streams import handler_scope

log = logging.getLogger("ringkv.server")

READ_CHUNK = 64 * 1024
# Replies queued per connection before reading pauses: with 64 KiB values
# at most 16 MiB held for one client that pipelines without reading.
MAX_PENDING = 256
# Bytes queued per connection before reading pauses: requests' sizes plus
# the largest replies they can have. One command bigger than this (an MGET
# of up to max_reply_bytes) runs alone.
MAX_PENDING_BYTES = 16 << 20
WRITE_CHUNK = 256 * 1024  # replies leave in writes of about this size
LISTEN_BACKLOG = 511  # as Redis's tcp-backlog; asyncio's default is 100

#: ``(command, levels, outcome, seconds)`` for every command that reached
#: storage; outcome is "ok", "noquorum" or "error".
Observe = Callable[[CommandSpec, Consistency, str, float], None]


class ClientServer:
    def __init__(self, config: NodeConfig, backend: Backend, info: InfoText,
                 observe: Observe) -> None:
        self.config = config
        self.backend = backend
        self.limits = Limits.of(config)
        self._observe = observe
        self._client_log = LimitedLog(log)
        # A bulk a little over the value limit still parses, so an oversized
        # value gets "value too large" and the connection stays; a bulk far
        # over it is a protocol error that closes the connection.
        self.max_bulk = max(1 << 20, 2 * config.max_value_bytes)
        self.stats = ClientStats()
        self.session_commands = SessionCommands(config, self.stats, info, len(commands.TABLE))
        self.started = time.time()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_id = 0
        self.port = 0

    # -- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.config.bind, self.config.client_port, limit=READ_CHUNK,
            backlog=LISTEN_BACKLOG,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving clients on %s:%d", self.config.bind, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def clients(self) -> int:
        return len(self._tasks)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections_received += 1
        if len(self._tasks) >= self.config.max_clients:
            self.stats.rejected_connections += 1
            writer.write(b"-ERR max number of clients reached\r\n")
            with contextlib.suppress(OSError):
                await asyncio.wait_for(writer.drain(), 1)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._next_id += 1
        peer = writer.get_extra_info("peername")
        conn = ClientSession(self._next_id, f"{peer[0]}:{peer[1]}" if peer else "?")
        conn.authenticated = not self.config.requirepass
        try:
            async with handler_scope(writer, 1.0):
                with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                    await self._serve(conn, reader, writer)
        finally:
            self._tasks.discard(task)

    # -- one connection ---------------------------------------------------
    async def _serve(
        self, conn: ClientSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = RequestParser(max_bulk=self.max_bulk, max_request=4 * self.max_bulk)
        if not conn.authenticated:
            parser.restrict()
        pending: deque[Awaitable[RespReply] | RespReply] = deque()
        try:
            await self._loop(conn, parser, pending, reader, writer)
        finally:
            for item in pending:  # the client is gone: stop its requests
                if isinstance(item, asyncio.Future):
                    item.cancel()

    async def _loop(
        self,
        conn: ClientSession,
        parser: RequestParser,
        pending: deque[Awaitable[RespReply] | RespReply],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        idle = self.config.idle_timeout_s or None
        closing = False
        while not closing:
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), idle)
            except TimeoutError:
                return  # idle: Redis closes silently too
            if not data:
                return
            conn.last_active = time.monotonic()
            parser.feed(data)
            queued = 0  # bytes the pending requests may take (module doc)
            while True:
                item = parser.gets()
                if item is None:
                    break
                if isinstance(item, RespProtocolError):
                    self.stats.protocol_errors += 1
                    self._client_log.log(logging.INFO, "client %s: %s; closing the connection",
                                         conn.peer, item)
                    pending.append(Error(str(item)))
                    closing = True
                    break
                request = list(item)
                spec = commands.lookup(request)
                bound = commands.REPLY_SLACK if spec is None else spec.reply_bound(request,
                                                                                   self.limits)
                cost = sum(map(len, request)) + bound
                if pending and (len(pending) >= MAX_PENDING
                                or queued + cost > MAX_PENDING_BYTES):
                    await self._flush(conn, pending, writer)
                    queued = 0
                pending.append(self._dispatch(conn, request, spec))
                queued += cost
                if conn.hold_s:
                    await self._hold(conn, pending, writer)
                    queued = 0
                if conn.authenticated and parser.restricted:
                    parser.lift()
                if request and request[0].upper() == b"QUIT":
                    closing = True
                    break
            await self._flush(conn, pending, writer)

    async def _hold(
        self,
        conn: ClientSession,
        pending: deque[Awaitable[RespReply] | RespReply],
        writer: asyncio.StreamWriter,
    ) -> None:
        """After a failed AUTH: answer it, and go on with the connection,
        only once ``conn.hold_s`` has passed."""
        delay, conn.hold_s = conn.hold_s, 0.0
        await asyncio.sleep(delay)
        await self._flush(conn, pending, writer)

    async def _flush(
        self,
        conn: ClientSession,
        pending: deque[Awaitable[RespReply] | RespReply],
        writer: asyncio.StreamWriter,
    ) -> None:
        out: list[bytes] = []
        size = 0
        while pending:
            item = pending.popleft()
            if isinstance(item, Awaitable):
                try:
                    item = await item
                except CommandError as exc:
                    item = Error(str(exc))
            data = encode_reply(item, conn.proto)
            if len(data) >= WRITE_CHUNK:  # a big reply: no copy into one buffer
                if out:
                    await self._write(conn, writer, b"".join(out))
                    out, size = [], 0
                await self._write(conn, writer, data)
                continue
            out.append(data)
            size += len(data)
            if size >= WRITE_CHUNK:
                await self._write(conn, writer, b"".join(out))
                out, size = [], 0
        if out:
            await self._write(conn, writer, b"".join(out))

    async def _write(self, conn: ClientSession, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write in slices of WRITE_CHUNK, each once the socket has taken
        the one before; a client that does not read for idle_timeout_s is
        dropped (a write it accepts counts as activity, as in Redis), so it
        cannot pin our memory forever."""
        view = memoryview(data)
        for start in range(0, len(view), WRITE_CHUNK):
            writer.write(view[start:start + WRITE_CHUNK])
            try:
                await asyncio.wait_for(writer.drain(), self.config.idle_timeout_s or None)
            except TimeoutError:
                self.stats.slow_readers_dropped += 1
                self._client_log.log(
                    logging.WARNING, "client %s dropped: took none of its replies for %.0f s "
                    "(%d bytes unsent)", conn.peer, self.config.idle_timeout_s,
                    len(view) - start + writer.transport.get_write_buffer_size())
                raise ConnectionError("client stopped reading its replies") from None

    def _dispatch(self, conn: ClientSession, request: list[bytes],
                  spec: CommandSpec | None) -> Awaitable[RespReply] | RespReply:
        self.stats.commands_processed += 1
        try:
            if not conn.authenticated and (spec is None or spec.name not in
                                           commands.NO_AUTH_NEEDED):
                raise NoAuthError()
            spec = commands.checked(request, spec)
            command = spec.parse(spec.name, request[1:], self.limits)
            if spec.answer is not None:
                return spec.answer(self.session_commands, conn, command)
            levels = command.consistency.merged(self.session_commands.defaults(conn))
            check_levels(levels, self.config.n)
            return self._submit(conn, spec, command, levels)
        except CommandError as exc:
            return Error(str(exc))

    def _submit(
        self, conn: ClientSession, spec: CommandSpec, command: Command, levels: Consistency
    ) -> asyncio.Future[RespReply]:
        """Start a command that reaches storage as a task, so pipelined
        requests wait for their quorums concurrently; but one that names a
        key an earlier, unfinished command of this connection names waits
        for it first, so a pipelined SET k then GET k reads its own write,
        as on Redis."""
        prior = {conn.key_tails[k] for k in command.keys if k in conn.key_tails}
        run, backend, observe = spec.run, self.backend, self._observe
        assert run is not None

        async def execute() -> RespReply:
            if prior:
                await asyncio.wait(prior)
            started = time.perf_counter()
            outcome = "error"
            try:
                if spec.write and (why := backend.draining) is not None:
                    raise UnavailableError(why)
                reply = await run(backend, command, levels)
                outcome = "ok"
                return reply
            except NoQuorumError:
                outcome = "noquorum"
                raise
            finally:
                observe(spec, levels, outcome, time.perf_counter() - started)

        fut = asyncio.ensure_future(execute())
        for k in command.keys:
            conn.key_tails[k] = fut

        def done(f: asyncio.Future[RespReply]) -> None:
            for k in command.keys:
                if conn.key_tails.get(k) is f:
                    del conn.key_tails[k]

        fut.add_done_callback(done)
        return fut
