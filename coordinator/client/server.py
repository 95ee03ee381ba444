"""The client-facing server: RESP over TCP.

Startup -> serve -> shutdown, uvicorn-style. Each accepted connection is a
:class:`~coordinator.client.connection.ClientConnection`, an
``asyncio.Protocol`` with a FIFO of reply slots (no task per connection or
per command; the limits it keeps are in its module doc and in
docs/protocol.md). Connections past ``max_clients`` are told so and closed.
Connection-level commands are answered at once by their handler
(coordinator.client.session). The others run their handler against the
node's :class:`~coordinator.client.data_commands.Backend`, timed and counted
by ``observe`` as they finish. Log lines that a client can trigger at will
are rate-limited (coordinator.ratelimit).
"""

from __future__ import annotations

import asyncio
import logging
import time

from coordinator.client import commands
from coordinator.client.connection import (
    MAX_PENDING,
    MAX_PENDING_BYTES,
    WRITE_CHUNK,
    ClientConnection,
    Observe,
    Shared,
)
from coordinator.client.data_commands import Backend
from coordinator.client.parsing import Limits
from coordinator.client.session import ClientStats, InfoText, SessionCommands
from coordinator.config import NodeConfig
from coordinator.ratelimit import LimitedLog

__all__ = ["MAX_PENDING", "MAX_PENDING_BYTES", "WRITE_CHUNK", "ClientServer", "Observe"]

log = logging.getLogger("ringkv.server")

LISTEN_BACKLOG = 511  # as Redis's tcp-backlog; asyncio's default is 100


class ClientServer:
    def __init__(self, config: NodeConfig, backend: Backend, info: InfoText,
                 observe: Observe) -> None:
        self.config = config
        self.backend = backend
        self.limits = Limits.of(config)
        self.stats = ClientStats()
        self.session_commands = SessionCommands(config, self.stats, info, len(commands.TABLE))
        # A bulk a little over the value limit still parses, so an oversized
        # value gets "value too large" and the connection stays; a bulk far
        # over it is a protocol error that closes the connection.
        self._shared = Shared(
            config=config, backend=backend, session_commands=self.session_commands,
            observe=observe, stats=self.stats, limits=self.limits,
            max_bulk=max(1 << 20, 2 * config.max_value_bytes), client_log=LimitedLog(log),
        )
        self.started = time.time()
        self._server: asyncio.Server | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        shared = self._shared
        self._server = await asyncio.get_running_loop().create_server(
            lambda: ClientConnection(shared), self.config.bind, self.config.client_port,
            backlog=LISTEN_BACKLOG,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving clients on %s:%d", self.config.bind, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._shared.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def clients(self) -> int:
        return len(self._shared.connections)
