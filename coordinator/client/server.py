"""The client-facing server: RESP over TCP, one task per connection.

Startup -> accept loop -> shutdown, uvicorn-style: every connection task is
registered and cancelled on shutdown. Per connection, requests are parsed
sans-IO (coordinator.client.resp), turned into commands (coordinator.client.parsing), and
each gets a slot in a FIFO of pending replies; a writer drains the FIFO in
request order, so a pipeline of quorum requests can finish out of order
while its replies still come back in order (DESIGN §5). The FIFO is bounded
by count (MAX_PENDING) and by bytes (MAX_PENDING_BYTES: each request counts
its own size plus the largest reply it can have, commands.reply_bound):
when either is reached the connection stops reading until its replies have
been written, so a client that pipelines without reading, or asks for huge
replies, cannot grow our memory. A reply over WRITE_CHUNK leaves in slices
of that size, so the socket's buffer never holds a whole 64 MiB MGET.

Before AUTH the parser applies Redis's limits for unauthenticated clients
(coordinator.client.resp). A failed AUTH is counted, logged with the client's
address, and from the second on a connection it holds that connection:
its reply, and everything it sent after, wait AUTH_DELAY_BASE_S doubling
with each failure up to AUTH_DELAY_MAX_S (the event loop goes on serving
everyone else). Log lines that a client can trigger at will are
rate-limited (coordinator.ratelimit).

Connection-level commands (PING, ECHO, HELLO, AUTH, SELECT, CLIENT,
CONSISTENCY, COMMAND, CONFIG GET, QUIT) are answered here. Data commands go
to a :class:`DataPath`; a node without one (storage not attached yet)
answers ``UNAVAILABLE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import hmac
import logging
import re
import signal
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from coordinator.client import parsing as commands
from coordinator.client.parsing import Command, Limits, reply_bound
from coordinator.client.replies import OK, PONG, Error, Reply, SimpleString, encode_reply
from coordinator.client.resp import RequestParser
from coordinator.config import NodeConfig
from coordinator.data.quorum import Consistency, check_levels
from coordinator.errors import (
    CommandError,
    NoAuthError,
    ProtocolError,
    UnavailableError,
    WrongPassError,
)
from coordinator.ratelimit import LimitedLog
from coordinator.streams import handler_scope

log = logging.getLogger("ringkv.server")

VERSION = "0.1.0"
READ_CHUNK = 64 * 1024
# Replies queued per connection before reading pauses: with 64 KiB values
# at most 16 MiB held for one client that pipelines without reading.
MAX_PENDING = 256
# Bytes queued per connection before reading pauses: requests' sizes plus
# the largest replies they can have. One command bigger than this (an MGET
# of up to max_reply_bytes) runs alone.
MAX_PENDING_BYTES = 16 << 20
WRITE_CHUNK = 256 * 1024  # replies leave in writes of about this size
# Failed AUTHs on one connection: the first is answered at once, the n-th
# after AUTH_DELAY_BASE_S * 2**(n-2), at most AUTH_DELAY_MAX_S.
AUTH_DELAY_BASE_S = 0.02
AUTH_DELAY_MAX_S = 1.0
MAX_CONFIG_PATTERN = 256  # CONFIG GET pattern bytes; our names are < 32
LISTEN_BACKLOG = 511  # as Redis's tcp-backlog; asyncio's default is 100
_CONNECTION_COMMANDS = frozenset(
    {
        "PING",
        "ECHO",
        "HELLO",
        "AUTH",
        "SELECT",
        "CLIENT",
        "CONSISTENCY",
        "COMMAND",
        "CONFIG",
        "QUIT",
        "INFO",
    }
)
_NO_AUTH_NEEDED = frozenset({"AUTH", "HELLO", "QUIT"})


class DataPath(Protocol):
    """What the server needs from the cluster: run one data command."""

    async def execute(self, command: Command, consistency: Consistency) -> Reply: ...

    def info(self) -> dict[str, dict[str, Any]]: ...


@dataclass(slots=True)
class Connection:
    id: int
    peer: str
    proto: int = 2
    authenticated: bool = False
    name: str = ""
    consistency: Consistency = field(default_factory=Consistency)
    last_active: float = field(default_factory=time.monotonic)
    auth_failures: int = 0
    hold_s: float = 0.0  # read and answer nothing more for this long (failed AUTH)
    # key -> the connection's latest unfinished command on it (see _submit)
    key_tails: dict[bytes, asyncio.Future[Reply]] = field(default_factory=dict)


@dataclass(slots=True)
class Stats:
    connections_received: int = 0
    rejected_connections: int = 0
    commands_processed: int = 0
    protocol_errors: int = 0
    slow_readers_dropped: int = 0
    auth_failures: int = 0


class ClientServer:
    def __init__(self, config: NodeConfig, data: DataPath | None = None) -> None:
        self.config = config
        self.data = data
        self.limits = Limits(max_value_bytes=config.max_value_bytes,
                             max_reply_bytes=config.max_reply_bytes)
        self._password = config.requirepass.encode()
        self._auth_log = LimitedLog(log)
        self._client_log = LimitedLog(log)
        # A bulk a little over the value limit still parses, so an oversized
        # value gets "value too large" and the connection stays; a bulk far
        # over it is a protocol error that closes the connection.
        self.max_bulk = max(1 << 20, 2 * config.max_value_bytes)
        self.stats = Stats()
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
        conn = Connection(self._next_id, f"{peer[0]}:{peer[1]}" if peer else "?")
        conn.authenticated = not self.config.requirepass
        try:
            async with handler_scope(writer, 1.0):
                with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                    await self._serve(conn, reader, writer)
        finally:
            self._tasks.discard(task)

    # -- one connection ---------------------------------------------------
    async def _serve(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = RequestParser(max_bulk=self.max_bulk, max_request=4 * self.max_bulk)
        if not conn.authenticated:
            parser.restrict()
        pending: deque[Awaitable[Reply] | Reply] = deque()
        try:
            await self._loop(conn, parser, pending, reader, writer)
        finally:
            for item in pending:  # the client is gone: stop its requests
                if isinstance(item, asyncio.Future):
                    item.cancel()

    async def _loop(
        self,
        conn: Connection,
        parser: RequestParser,
        pending: deque[Awaitable[Reply] | Reply],
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
                if isinstance(item, ProtocolError):
                    self.stats.protocol_errors += 1
                    self._client_log.log(logging.INFO, "client %s: %s; closing the connection",
                                         conn.peer, item)
                    pending.append(Error(str(item)))
                    closing = True
                    break
                request = list(item)
                cost = sum(map(len, request)) + reply_bound(request, self.limits)
                if pending and (len(pending) >= MAX_PENDING
                                or queued + cost > MAX_PENDING_BYTES):
                    await self._flush(conn, pending, writer)
                    queued = 0
                pending.append(self._dispatch(conn, request))
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
        conn: Connection,
        pending: deque[Awaitable[Reply] | Reply],
        writer: asyncio.StreamWriter,
    ) -> None:
        """After a failed AUTH: answer it, and go on with the connection,
        only once ``conn.hold_s`` has passed."""
        delay, conn.hold_s = conn.hold_s, 0.0
        await asyncio.sleep(delay)
        await self._flush(conn, pending, writer)

    async def _flush(
        self,
        conn: Connection,
        pending: deque[Awaitable[Reply] | Reply],
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

    async def _write(self, conn: Connection, writer: asyncio.StreamWriter, data: bytes) -> None:
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

    def _dispatch(self, conn: Connection, request: list[bytes]) -> Awaitable[Reply] | Reply:
        self.stats.commands_processed += 1
        try:
            name = request[0].decode("utf-8", "replace").upper() if request else ""
            if not conn.authenticated and name not in _NO_AUTH_NEEDED:
                raise NoAuthError()
            command = commands.parse(request, self.limits)
            if command.name in _CONNECTION_COMMANDS:
                return self._connection_command(conn, command)
            if self.data is None:
                raise UnavailableError("storage is not attached to this node yet")
            levels = command.consistency.merged(self._effective(conn))
            check_levels(levels, self.config.n)
            return self._submit(conn, self.data, command, levels)
        except CommandError as exc:
            return Error(str(exc))

    @staticmethod
    def _submit(
        conn: Connection, data: DataPath, command: Command, levels: Consistency
    ) -> asyncio.Future[Reply]:
        """Start a data command as a task, so pipelined requests wait for
        their quorums concurrently; but one that names a key an earlier,
        unfinished command of this connection names waits for it first, so
        a pipelined SET k then GET k reads its own write, as on Redis."""
        prior = {conn.key_tails[k] for k in command.keys if k in conn.key_tails}

        async def run() -> Reply:
            if prior:
                await asyncio.wait(prior)
            return await data.execute(command, levels)

        fut = asyncio.ensure_future(run())
        for k in command.keys:
            conn.key_tails[k] = fut

        def done(f: asyncio.Future[Reply]) -> None:
            for k in command.keys:
                if conn.key_tails.get(k) is f:
                    del conn.key_tails[k]

        fut.add_done_callback(done)
        return fut

    # -- connection-level commands ---------------------------------------
    def _connection_command(self, conn: Connection, c: Command) -> Reply:
        name, args = c.name, c.args
        if name == "PING":
            return args[0] if args else PONG
        if name == "ECHO":
            return args[0]
        if name == "QUIT":
            return OK
        if name == "SELECT":
            return OK
        if name == "AUTH":
            return self._auth(conn, args[-1])
        if name == "HELLO":
            return self._hello(conn, list(args))
        if name == "CLIENT":
            return self._client(conn, list(args))
        if name == "CONSISTENCY":
            if c.consistency != Consistency():
                check_levels(c.consistency.merged(conn.consistency), self.config.n)
                conn.consistency = c.consistency.merged(conn.consistency)
                return OK
            return {k: v for k, v in asdict(self._effective(conn)).items()}
        if name == "COMMAND":
            sub = args[0].upper() if args else b""
            return len(commands.COMMANDS) if sub == b"COUNT" else []
        if name == "CONFIG":
            return self._config(list(args))
        if name == "INFO":
            return self.info_text(args[0].decode("utf-8", "replace") if args else "default")
        raise CommandError(f"ERR unknown command '{name}'")

    def _effective(self, conn: Connection) -> Consistency:
        c = self.config
        return conn.consistency.merged(Consistency(r=c.r, w=c.w, pr=c.pr, pw=c.pw))

    def _auth(self, conn: Connection, password: bytes) -> Reply:
        if not self.config.requirepass:
            raise CommandError(
                "ERR AUTH <password> called without any password configured for the "
                "default user. Are you sure your configuration is correct?"
            )
        if not hmac.compare_digest(password, self._password):
            conn.auth_failures += 1
            self.stats.auth_failures += 1
            if conn.auth_failures > 1:
                conn.hold_s = min(AUTH_DELAY_MAX_S,
                                  AUTH_DELAY_BASE_S * 2 ** (conn.auth_failures - 2))
            self._auth_log.log(logging.WARNING, "AUTH failed from %s (%d on this connection)",
                               conn.peer, conn.auth_failures)
            raise WrongPassError()
        conn.authenticated = True
        conn.auth_failures = 0
        return OK

    def _hello(self, conn: Connection, args: list[bytes]) -> Reply:
        proto = conn.proto
        if args:
            try:
                proto = int(args[0])
            except ValueError:
                raise CommandError(
                    "ERR Protocol version is not an integer or out of range"
                ) from None
            if proto not in (2, 3):
                raise CommandError("NOPROTO unsupported protocol version")
            rest = args[1:]
            while rest:
                opt = rest[0].upper()
                if opt == b"AUTH" and len(rest) >= 3:
                    self._auth(conn, rest[2])
                    rest = rest[3:]
                elif opt == b"SETNAME" and len(rest) >= 2:
                    conn.name = rest[1].decode("utf-8", "replace")
                    rest = rest[2:]
                else:
                    raise CommandError(f"ERR Syntax error in HELLO option '{rest[0]!r}'")
        if not conn.authenticated:
            raise NoAuthError()
        conn.proto = proto
        return {
            "server": "ringkv",
            "version": VERSION,
            "proto": proto,
            "id": conn.id,
            "mode": "cluster",
            "role": "master",
            "modules": [],
        }

    def _client(self, conn: Connection, args: list[bytes]) -> Reply:
        sub = args[0].upper()
        if sub == b"SETNAME" and len(args) == 2:
            conn.name = args[1].decode("utf-8", "replace")
            return OK
        if sub == b"GETNAME":
            return conn.name or None
        if sub == b"ID":
            return conn.id
        if sub == b"SETINFO":
            return OK
        raise CommandError(f"ERR unknown subcommand '{args[0].decode('utf-8', 'replace')}'")

    def _config(self, args: list[bytes]) -> Reply:
        if args[0].upper() != b"GET" or len(args) != 2:
            raise CommandError("ERR CONFIG is read-only here: only CONFIG GET <pattern>")
        if len(args[1]) > MAX_CONFIG_PATTERN:
            raise CommandError(
                f"ERR CONFIG GET pattern too long ({len(args[1])} > {MAX_CONFIG_PATTERN} bytes)")
        # Compiled here, not through fnmatch's cache of 32,768 patterns.
        match = re.compile(fnmatch.translate(args[1].decode("utf-8", "replace").lower())).match
        shown = {
            k: str(v) for k, v in asdict(self.config).items() if k not in ("secret", "requirepass")
        }
        # Redis names that tools ask for (redis-benchmark reads save and
        # appendonly), answered with what ringkv does instead.
        shown.update(
            save="",
            appendonly="yes",
            appendfsync={"always": "always", "interval": "everysec"}.get(self.config.fsync, "no"),
        )
        return {k: v for k, v in shown.items() if match(k)}

    def info_text(self, section: str) -> bytes:
        sections: dict[str, dict[str, Any]] = {
            "server": {
                "ringkv_version": VERSION,
                "node_id": self.config.id,
                "tcp_port": self.port,
                "uptime_in_seconds": int(time.time() - self.started),
            },
            "clients": {"connected_clients": self.clients, "maxclients": self.config.max_clients},
            "stats": asdict(self.stats),
        }
        if self.data is not None:
            sections.update(self.data.info())
        wanted = section.lower()
        lines: list[str] = []
        for name, fields_ in sections.items():
            if wanted not in ("default", "all", "everything", name):
                continue
            lines.append(f"# {name.capitalize()}")
            lines += [f"{k}:{v}" for k, v in fields_.items()]
            lines.append("")
        return "\r\n".join(lines).encode()


async def serve_forever(server: ClientServer, stop: asyncio.Event) -> None:
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m coordinator.client.server --port N``: the client server alone,
    without storage (data commands answer UNAVAILABLE); used by the protocol
    tests until ``ringkv serve`` wires the whole node."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--requirepass", default="")
    p.add_argument("--max-clients", type=int, default=10000)
    p.add_argument("--idle-timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    config = NodeConfig(
        client_port=args.port,
        requirepass=args.requirepass,
        max_clients=args.max_clients,
        idle_timeout_s=args.idle_timeout,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = ClientServer(config)
        await server.start()
        print(f"listening on {config.bind}:{server.port}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(run())


__all__ = ["ClientServer", "Connection", "DataPath", "SimpleString", "serve_forever"]

if __name__ == "__main__":
    main()
