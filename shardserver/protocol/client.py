"""Asyncio client of one shard worker over its unix socket (or, with a
``connector``, of a peer coordinator over authenticated TCP: same frames).

- Request ids: a per-client counter; replies are matched by id, in any order.
- Batching: every call made in the same event-loop turn is queued and written
  as ONE frame by a flush scheduled with ``loop.call_soon`` (DESIGN §2).
  ``frames_sent`` counts frames, so tests can see the batching. A request
  msgpack cannot encode (an int past 64 bits) or too big for a frame fails
  alone with BAD_REQUEST; the rest of its batch still goes out.
- Timeouts: each call has one deadline covering the wait for an in-flight
  slot, connecting and the reply. Past it the call returns
  ``Reply(Status.TIMEOUT)``; its slot is dropped and a late reply ignored.
- Bounded in-flight: at most ``max_inflight`` calls wait for replies; a call
  that cannot get a slot before its deadline returns
  ``Reply(Status.OVERLOADED)``, without sending anything.
- Connection loss (EOF, socket error, garbage from the worker) fails every
  pending call with ``ShardUnavailable`` naming the socket path; the next
  call connects again (a supervisor restarts workers on the same path).

The reader task is owned by the client and cancelled by ``close()``. It is
the one await on the network without a timeout of its own: it idles while
nothing is in flight, and every call waiting on it has its deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from shardserver.protocol import codec, merkle, records
from shardserver.protocol.errors import ProtocolError, ShardError, ShardUnavailable
from shardserver.protocol.messages import (
    BucketDigests,
    Compact,
    DropPartition,
    Flush,
    Ping,
    ReplicaRead,
    ReplicaRepairSet,
    ReplicaWrite,
    ReplicaWriteSet,
    Reply,
    Request,
    ScanPartition,
    SetPartitions,
    Stats,
    Status,
    TreeLevel,
    WriteMode,
)
from shardserver.protocol.versions import SiblingSet, Version, decode_siblings
from shardserver.protocol.worker_stats import WorkerStats

__all__ = ["DEFAULT_MAX_INFLIGHT", "Connector", "ShardClient", "ShardError", "ShardUnavailable"]

DEFAULT_MAX_INFLIGHT = 1024
DEFAULT_TIMEOUT_S = 5.0
#: Outgoing frames are split to stay under this (the worker's default cap is 16 MiB).
DEFAULT_MAX_SEND_FRAME = 8 << 20
_READ_CHUNK = 256 << 10
_CLOSE_TIMEOUT_S = 2.0


#: Opens the stream to the server (default: the unix socket at ``path``).
#: Peers pass one that connects over TCP and authenticates first; it raises
#: OSError or ShardUnavailable when the server cannot be reached.
Connector = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class ShardClient:
    def __init__(
        self,
        path: str,
        *,
        connector: Connector | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_send_frame: int = DEFAULT_MAX_SEND_FRAME,
        max_recv_frame: int = codec.DEFAULT_MAX_FRAME,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.path = path
        self._connector: Connector = connector or (lambda: asyncio.open_unix_connection(path))
        self.timeout_s = timeout_s
        self.max_inflight = max_inflight
        self.max_send_frame = max_send_frame
        self.max_recv_frame = max_recv_frame
        self.frames_sent = 0
        self.frames_received = 0
        # The in-flight window, shared by call() and submit(): a slot per
        # request awaiting its reply; waiters get freed slots in order.
        self._slots = max_inflight
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Request, asyncio.Future[Reply]]] = {}
        self._queue: list[tuple[int, Request]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def connect(cls, path: str, timeout: float, **kwargs: Any) -> ShardClient:
        """A client already connected to ``path`` (raises ShardUnavailable)."""
        client = cls(path, **kwargs)
        await client._ensure_connected(timeout)
        return client

    @property
    def connected(self) -> bool:
        return self._writer is not None

    @property
    def inflight(self) -> int:
        return len(self._pending)

    # -- calls --------------------------------------------------------------------

    async def call(self, request: Request, timeout: float | None = None) -> Reply:
        """Send ``request`` and wait for its reply, at most ``timeout`` seconds.

        Returns TIMEOUT / OVERLOADED replies for those local outcomes; raises
        ShardUnavailable when the connection cannot be made or breaks.
        """
        if self._closed:
            raise ShardUnavailable(self.path, "client closed")
        t = self.timeout_s if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t
        if not self._take_slot() and not await self._wait_slot(t):
            msg = f"{self.max_inflight} calls in flight to {self.path}"
            return Reply(Status.OVERLOADED, msg)
        try:
            try:
                await self._ensure_connected(deadline - loop.time())
            except TimeoutError:
                return Reply(Status.TIMEOUT, f"connecting to {self.path} took over {t}s")
            rid, fut = self._enqueue(request)
            try:
                return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except TimeoutError:
                return Reply(Status.TIMEOUT, f"no reply from {self.path} within {t}s")
            finally:
                self._pending.pop(rid, None)  # a late reply now finds no slot
        finally:
            self._give_slot()

    def _take_slot(self) -> bool:
        if self._slots > 0 and not self._slot_waiters:
            self._slots -= 1
            return True
        return False

    async def _wait_slot(self, timeout: float) -> bool:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._slot_waiters.remove(waiter)

    def _give_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to it
                return
        self._slots += 1

    def submit(self, request: Request) -> asyncio.Future[Reply]:
        """Queue ``request`` and return the future of its reply, without a
        task or a deadline of its own: the caller bounds the wait and cancels
        the future to give up (the coordinator's hot path; ``call`` costs a
        task and a timer per request). Not connected yet, or the in-flight
        window full: falls back to a task running ``call``."""
        if self._writer is None or self._closed or not self._take_slot():
            return asyncio.ensure_future(self.call(request))
        rid, fut = self._enqueue(request)

        def done(_: asyncio.Future[Reply]) -> None:
            self._pending.pop(rid, None)
            self._give_slot()

        fut.add_done_callback(done)
        return fut

    def _enqueue(self, request: Request) -> tuple[int, asyncio.Future[Reply]]:
        """Give ``request`` an id and a reply future; it leaves in this turn's frame."""
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        fut: asyncio.Future[Reply] = loop.create_future()
        self._pending[rid] = (request, fut)
        self._queue.append((rid, request))
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        return rid, fut

    def _flush(self) -> None:
        self._flush_handle = None
        batch, self._queue = self._queue, []
        # Drop entries whose caller already gave up (timed out or cancelled).
        batch = [(rid, req) for rid, req in batch if rid in self._pending]
        if not batch:
            return
        writer = self._writer
        if writer is None or writer.is_closing():
            self._fail_all("connection closed before the request was sent")
            return
        for frame in self._frames(batch):
            writer.write(frame)
            self.frames_sent += 1

    def _frames(self, batch: list[tuple[int, Request]]) -> list[bytes]:
        """The batch as frames of at most ``max_send_frame`` payload bytes.
        A request that cannot be encoded, or is too big for a frame on its
        own, fails alone with BAD_REQUEST; the others still go out."""
        frames: list[bytes] = []
        group: list[bytes] = []
        size = codec.FRAME_OVERHEAD
        for rid, env in codec.encode_envelopes(batch):
            if isinstance(env, ProtocolError):
                self._refuse(rid, str(env))
                continue
            if codec.FRAME_OVERHEAD + len(env) > self.max_send_frame:
                self._refuse(rid, f"request of {len(env)} bytes exceeds the frame limit "
                                  f"{self.max_send_frame}")
                continue
            if size + len(env) > self.max_send_frame:
                frames.append(codec.frame_of(group))
                group, size = [], codec.FRAME_OVERHEAD
            group.append(env)
            size += len(env)
        if group:
            frames.append(codec.frame_of(group))
        return frames

    def _refuse(self, rid: int, message: str) -> None:
        _, fut = self._pending[rid]
        if not fut.done():
            fut.set_result(Reply(Status.BAD_REQUEST, message))

    # -- connection ---------------------------------------------------------------

    async def _ensure_connected(self, timeout: float) -> None:
        if self._writer is not None:
            return
        if self._closed:
            raise ShardUnavailable(self.path, "client closed")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._open(), name=f"connect {self.path}")
            # Retrieved here in case every caller gave up before it finished.
            self._connecting.add_done_callback(_retrieve)
        task = self._connecting
        try:
            # shield: one caller timing out must not cancel the others' connect
            await asyncio.wait_for(asyncio.shield(task), max(0.0, timeout))
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _open(self) -> None:
        try:
            reader, writer = await self._connector()
        except OSError as e:
            raise ShardUnavailable(self.path, f"connect failed: {e.strerror or e}") from e
        if self._closed:
            writer.close()
            raise ShardUnavailable(self.path, "client closed")
        self._writer = writer
        self._reader_task = asyncio.create_task(
            self._read_loop(reader, writer), name=f"reader {self.path}"
        )

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = codec.FrameDecoder(self.max_recv_frame)
        reason = "connection closed by the worker"
        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    break
                decoder.feed(data)
                for payload in decoder.frames():
                    self.frames_received += 1
                    self._deliver(codec.decode_replies(payload))
        except ProtocolError as e:
            reason = f"bad frame from the worker: {e}"
        except OSError as e:
            reason = f"connection error: {e}"
        except asyncio.CancelledError:
            reason = "client closed"
            raise
        finally:
            if self._writer is writer:
                self._writer = None
                self._reader_task = None
            writer.close()
            self._fail_all(reason)

    def _deliver(self, replies: list[tuple[int, Reply]]) -> None:
        for rid, reply in replies:
            slot = self._pending.get(rid)
            if slot is None:
                continue  # late reply of a call that timed out
            request, fut = slot
            if fut.done():
                continue
            try:
                fut.set_result(codec.check_payload(request, reply))
            except ProtocolError as e:
                fut.set_result(Reply(Status.INTERNAL, f"bad reply from {self.path}: {e}"))

    def _fail_all(self, reason: str) -> None:
        self._queue.clear()
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ShardUnavailable(self.path, reason))
        self._pending.clear()

    async def close(self) -> None:
        """Cancel the reader, close the socket, fail what is still pending."""
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        tasks = [t for t in (self._connecting, self._reader_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT_S)
            for task in tasks:  # retrieve exceptions so none is logged as unretrieved
                if task.done() and not task.cancelled():
                    task.exception()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT_S)
        self._fail_all("client closed")

    async def __aenter__(self) -> ShardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- convenience: raise ShardError on non-OK replies --------------------------

    async def _ok(self, request: Request, timeout: float | None) -> Any:
        reply = await self.call(request, timeout)
        if reply.status is not Status.OK:
            raise ShardError(reply.status, reply.message, self.path)
        return reply.payload

    async def ping(self, timeout: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok(Ping(), timeout)
        return result

    async def wait_ready(self, timeout_s: float, interval_s: float = 0.05) -> None:
        """Ping until the worker says it is ready; TimeoutError past ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = "no answer"
        while (left := deadline - loop.time()) > 0:
            try:
                if (await self.ping(timeout=min(left, 1.0))).get("ready"):
                    return
                last = "not ready"
            except (ShardUnavailable, ShardError) as e:
                last = str(e)
            await asyncio.sleep(min(interval_s, max(0.0, deadline - loop.time())))
        raise TimeoutError(f"worker at {self.path} not ready after {timeout_s}s: {last}")

    async def read(self, partition: int, key: bytes, timeout: float | None = None) -> SiblingSet:
        """The key's sibling set; ``()`` when absent."""
        payload = await self._ok(ReplicaRead(partition, key), timeout)
        return () if payload is None else decode_siblings(payload)

    async def write(
        self, partition: int, key: bytes, version: Version, mode: WriteMode = "merge",
        timeout: float | None = None,
    ) -> None:
        """Apply one version (the worker does not read the key, so it does
        not say what the key holds now)."""
        await self._ok(ReplicaWrite(partition, key, version, mode), timeout)

    async def write_set(
        self, partition: int, key: bytes, siblings: SiblingSet, timeout: float | None = None
    ) -> SiblingSet:
        payload = await self._ok(ReplicaWriteSet(partition, key, siblings), timeout)
        return decode_siblings(payload)

    async def scan(
        self, partition: int, after: bytes | None = None, limit: int = 1000,
        timeout: float | None = None,
    ) -> tuple[list[tuple[bytes, SiblingSet]], bytes | None]:
        """One page: ``([(key, siblings), ...], next cursor or None)``."""
        p = await self._ok(ScanPartition(partition, after, limit), timeout)
        items = [(k, decode_siblings(s)) for k, s in p["items"]]
        return items, p.get("next")

    async def stats(self, timeout: float | None = None) -> WorkerStats:
        """The worker's figures, decoded (ShardError INTERNAL if they do not)."""
        payload = await self._ok(Stats(), timeout)
        try:
            return records.from_wire(WorkerStats, payload, "stats reply")
        except ProtocolError as e:
            raise ShardError(Status.INTERNAL, str(e), self.path) from e

    async def drop_partition(
        self, partition: int, timeout: float | None = None, count: int = 1,
        if_mark: int | None = None,
    ) -> Any:
        return await self._ok(DropPartition(partition, count, if_mark), timeout)

    async def flush(self, timeout: float | None = None) -> None:
        await self._ok(Flush(), timeout)

    async def compact(self, partition: int | None = None, timeout: float | None = None) -> None:
        await self._ok(Compact(partition), timeout)

    async def set_partitions(
        self, partitions: tuple[int, ...], timeout: float | None = None
    ) -> None:
        await self._ok(SetPartitions(tuple(partitions)), timeout)

    # -- anti-entropy ---------------------------------------------------------------

    async def tree_level(
        self, partition: int, depth: int, indices: tuple[int, ...], timeout: float | None = None
    ) -> list[int]:
        """Merkle node values at ``depth`` (the worker builds the tree if needed)."""
        payload = await self._ok(TreeLevel(partition, depth, tuple(indices)), timeout)
        return merkle.unpack_nodes(payload)

    async def bucket_digests(
        self, partition: int, buckets: tuple[int, ...], timeout: float | None = None
    ) -> dict[bytes, bytes]:
        """``{key: digest}`` of the keys in those leaf buckets."""
        payload = await self._ok(BucketDigests(partition, tuple(buckets)), timeout)
        return {k: d for k, d in payload}

    async def repair_set(
        self, partition: int, key: bytes, siblings: SiblingSet, timeout: float | None = None
    ) -> SiblingSet:
        payload = await self._ok(ReplicaRepairSet(partition, key, siblings), timeout)
        return decode_siblings(payload)
