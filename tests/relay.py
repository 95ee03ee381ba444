"""A man in the middle for peer connections, on 127.0.0.1: it relays a
client's connection to ``target`` byte for byte, except that it cuts the
client→server stream into frames (4-byte length + body) and hands each to
``tamper(index, frame)``, which returns what to forward in its place (index
0 is the handshake answer, so the handshake passes when ``tamper`` leaves
frame 0 alone). It knows no secret: what it can do, an attacker on the path
can do."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable

HEADER = struct.Struct(">I")
Tamper = Callable[[int, bytes], list[bytes]]


class Relay:
    def __init__(self, target: tuple[str, int], tamper: Tamper) -> None:
        self.target = target
        self.tamper = tamper
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter,
                      ) -> None:
        s_reader, s_writer = await asyncio.open_connection(*self.target)
        pumps = [asyncio.create_task(self._frames(c_reader, s_writer)),
                 asyncio.create_task(self._bytes(s_reader, c_writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            c_writer.close()
            s_writer.close()

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = 0
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(HEADER.size)
                body = await reader.readexactly(HEADER.unpack(header)[0])
                for out in self.tamper(index, header + body):
                    writer.write(out)
                index += 1
                await writer.drain()

    @staticmethod
    async def _bytes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
