"""One worker connection: frames in, requests dispatched, replies batched out.

Every request of a frame is admitted or answered OVERLOADED at once. The
replica writes of a frame are one engine batch of merge operands, applied
on the event loop when the engine can take it without waiting
(``ShardStore.try_write_many``), else in the worker's thread pool; replica
reads are answered on the event loop when the memtables and the block cache
hold the answer (``ShardStore.read_cached``), the others in one trip to the
pool. Everything else runs in the pool. Replies finished in the same
event-loop turn leave as one frame (DESIGN §2: batching between processes).
Engine and store errors are translated to statuses here, the boundary
between the engine's vocabulary and the wire's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from lsm import NOT_CACHED
from lsm.errors import ClosedError, CorruptionError, InvalidArgumentError, StorageIOError
from shardserver.admission import Admission, ConnSlots
from shardserver.config import WorkerConfig, WorkerSettings
from shardserver.errors import (
    BadRequestError,
    PartitionChangedError,
    PartitionDroppingError,
    PartitionNotServedError,
)
from shardserver.protocol import codec, merkle, messages, records
from shardserver.protocol import versions as vs
from shardserver.protocol.errors import ProtocolError, VersionFormatError
from shardserver.protocol.messages import Reply, Request, Status
from shardserver.protocol.worker_stats import WorkerStats
from shardserver.storage import ShardStore, WriteOp

log = logging.getLogger("ringkv.worker")

#: The answer to a replica write: applied (no payload; the worker did not read
#: the key, so it cannot say what the key holds now).
_WRITTEN = Reply(Status.OK, None)

Call = Callable[[], object]


class WorkerHost(Protocol):
    """What a connection needs of its worker (``shardserver.worker.Worker``)."""

    config: WorkerConfig
    settings: WorkerSettings
    store: ShardStore | None  # None until the engine is open
    admission: Admission

    @property
    def direct_counts(self) -> dict[str, int]: ...

    @property
    def ready(self) -> bool: ...

    async def run_in_pool(self, fn: Call, background: bool = False) -> object: ...


_READ_BYTES = 256 << 10
#: Requests that are long CPU-bound work no client waits on: they run on the
#: worker's niced threads (Worker.run_in_pool), so an operator's compaction
#: or an anti-entropy tree build yields the core to replica reads and writes.
_BACKGROUND = (messages.Compact, messages.Flush, messages.DropPartition, messages.ScanPartition,
               messages.TreeLevel, messages.BucketDigests)


def error_status(exc: BaseException) -> tuple[Status, str]:
    """Engine/store error → wire status and message."""
    if isinstance(exc, StorageIOError):  # DiskFullError included
        return Status.READ_ONLY, str(exc)
    if isinstance(exc, PartitionNotServedError):
        return Status.NOT_SERVED, str(exc)
    if isinstance(exc, PartitionDroppingError):
        return Status.UNAVAILABLE, str(exc)
    if isinstance(exc, PartitionChangedError):
        return Status.CONFLICT, str(exc)
    if isinstance(exc, BadRequestError | InvalidArgumentError):
        return Status.BAD_REQUEST, str(exc)
    if isinstance(exc, ClosedError):
        return Status.NOT_READY, "worker is shutting down"
    if isinstance(exc, CorruptionError | VersionFormatError):
        return Status.INTERNAL, f"corruption: {exc}"
    return Status.INTERNAL, f"{type(exc).__name__}: {exc}"


#: A check every request of a connection passes first (a direct peer
#: connection's, ``shardserver.direct``): None to go on, else the reply.
Screen = Callable[[Request], "Reply | None"]


class WorkerConnection:
    def __init__(
        self, worker: WorkerHost, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        *, screen: Screen | None = None,
    ) -> None:
        self.worker = worker
        self.screen = screen
        self.reader = reader
        self.writer = writer
        self.slots = ConnSlots()
        self._pending: list[tuple[int, Reply]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        decoder = codec.FrameDecoder(self.worker.settings.max_frame_bytes)
        while True:
            data = await self.reader.read(_READ_BYTES)
            if not data:
                return
            decoder.feed(data)
            try:
                frames = decoder.frames()
                for payload in frames:
                    self._on_frame(codec.decode_requests_lenient(payload))
            except ProtocolError as exc:
                log.warning("dropping a connection: %s", exc)
                return
            # Backpressure: stop reading while the peer does not read replies.
            await self.writer.drain()

    def _on_frame(self, requests: list[tuple[int, Request | ProtocolError]]) -> None:
        worker = self.worker
        store = worker.store
        writes: list[tuple[int, messages.ReplicaWrite]] = []
        reads: list[tuple[int, messages.ReplicaRead]] = []
        for rid, req in requests:
            if isinstance(req, ProtocolError):
                self._reply(rid, Reply.error(Status.BAD_REQUEST, str(req)))
            elif self.screen is not None and (no := self.screen(req)) is not None:
                self._reply(rid, no)
            elif isinstance(req, messages.Ping):
                self._reply(rid, Reply(Status.OK, self._ping()))
            elif store is None:
                self._reply(rid, Reply.error(Status.NOT_READY, "worker is recovering"))
            elif not worker.admission.try_admit(self.slots):
                self._reply(rid, Reply.error(Status.OVERLOADED, "too many requests in flight"))
            elif isinstance(req, messages.ReplicaWrite):
                writes.append((rid, req))
            elif isinstance(req, messages.ReplicaRead):
                reads.append((rid, req))
            else:
                self._start(self._execute(store, rid, req))
        if writes and store is not None:
            self._writes(store, writes)
        if reads and store is not None:
            self._reads(store, reads)

    def _writes(self, store: ShardStore, writes: list[tuple[int, messages.ReplicaWrite]]) -> None:
        """The writes of one frame share one engine batch: one WAL record, one
        sync. On the event loop if the engine takes it without waiting."""
        ops = [WriteOp(w.partition, w.key, w.version, w.mode) for _, w in writes]
        try:
            inline = store.try_write_many(ops)
        except Exception:
            inline = False  # the pool's path answers each request (errors included)
        if not inline:
            self._start(self._execute_writes(store, writes, ops))
            return
        for rid, _ in writes:
            self.worker.admission.release(self.slots)
            self._reply(rid, _WRITTEN)

    def _reads(self, store: ShardStore, reads: list[tuple[int, messages.ReplicaRead]]) -> None:
        """Answered on the event loop when cached; the rest in one pool trip."""
        misses: list[tuple[int, messages.ReplicaRead]] = []
        for rid, r in reads:
            try:
                raw = store.read_cached(r.partition, r.key)
            except Exception as exc:
                reply = _error_reply(r, exc)
            else:
                if raw is NOT_CACHED:
                    misses.append((rid, r))
                    continue
                reply = Reply(Status.OK, raw)
            self.worker.admission.release(self.slots)
            self._reply(rid, reply)
        if misses:
            self._start(self._execute_reads(store, misses))

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, store: ShardStore, rid: int, req: Request) -> None:
        try:
            result = await self.worker.run_in_pool(dispatch(store, req),
                                                   isinstance(req, _BACKGROUND))
            if isinstance(req, messages.Stats) and isinstance(result, dict):
                result["direct"] = self.worker.direct_counts  # the worker's, not the store's
            reply = Reply(Status.OK, result)
        except Exception as exc:
            reply = _error_reply(req, exc)
        finally:
            self.worker.admission.release(self.slots)
        self._reply(rid, reply)

    async def _execute_writes(
        self, store: ShardStore, writes: list[tuple[int, messages.ReplicaWrite]],
        ops: list[WriteOp],
    ) -> None:
        try:
            try:
                await self.worker.run_in_pool(lambda: store.write_many(ops))
                replies = [_WRITTEN] * len(writes)
            except (BadRequestError, PartitionNotServedError, PartitionDroppingError):
                # One op refused: apply them one by one for per-request answers.
                replies = []
                for (_, w), op in zip(writes, ops, strict=True):
                    try:
                        await self.worker.run_in_pool(functools.partial(store.write_many, [op]))
                        replies.append(_WRITTEN)
                    except Exception as exc:
                        replies.append(_error_reply(w, exc))
            except Exception as exc:
                replies = [_error_reply(w, exc) for _, w in writes]
        finally:
            for _ in writes:
                self.worker.admission.release(self.slots)
        for (rid, _), reply in zip(writes, replies, strict=True):
            self._reply(rid, reply)

    async def _execute_reads(
        self, store: ShardStore, reads: list[tuple[int, messages.ReplicaRead]]
    ) -> None:
        def read_all() -> list[Reply]:
            out = []
            for _, r in reads:
                try:
                    out.append(Reply(Status.OK, store.read_raw(r.partition, r.key)))
                except Exception as exc:
                    out.append(_error_reply(r, exc))
            return out

        try:
            result = await self.worker.run_in_pool(read_all)
            assert isinstance(result, list)
            replies: list[Reply] = result
        except Exception as exc:
            replies = [_error_reply(r, exc) for _, r in reads]
        finally:
            for _ in reads:
                self.worker.admission.release(self.slots)
        for (rid, _), reply in zip(reads, replies, strict=True):
            self._reply(rid, reply)

    def _ping(self) -> dict[str, Any]:
        w = self.worker
        return {
            "ready": w.ready,
            "worker": w.config.worker_id,
            "pid": os.getpid(),
            "partitions": list(w.config.partitions),
            "inflight": w.admission.inflight,
            "protocol": w.config.negotiate(),
            "direct": w.direct_counts,
        }

    def _reply(self, rid: int, reply: Reply) -> None:
        self._pending.append((rid, reply))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        # Every reply finished in this loop turn leaves in one frame.
        self._flush_scheduled = False
        replies, self._pending = self._pending, []
        if replies and not self.writer.is_closing():
            # Split so no frame passes the limit the coordinator reads with:
            # one client's big MGET must not cost everyone the connection.
            for frame in codec.encode_reply_frames(replies, self.worker.settings.max_frame_bytes):
                self.writer.write(frame)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def _error_reply(req: Request, exc: BaseException) -> Reply:
    status, message = error_status(exc)
    if status is Status.INTERNAL:
        log.error("%s failed: %s", messages.op_of(req), message, exc_info=exc)
    return Reply.error(status, message)


def dispatch(store: ShardStore, req: Request) -> Call:
    """The engine call a request asks for, as a closure for the thread pool;
    it returns the reply payload (messages' docstring)."""
    if isinstance(req, messages.ReplicaWrite):
        w = req
        return lambda: store.write(w.partition, w.key, w.version, w.mode)
    if isinstance(req, messages.ReplicaWriteSet):
        ws = req
        return lambda: vs.encode_siblings(
            store.write_set(ws.partition, ws.key, ws.siblings).siblings
        )
    if isinstance(req, messages.ReplicaRead):
        r = req
        return lambda: store.read_raw(r.partition, r.key)
    if isinstance(req, messages.ScanPartition):
        sc = req
        return lambda: _scan(store, sc.partition, sc.after, sc.limit)
    if isinstance(req, messages.DropPartition):
        d = req
        return lambda: store.drop_partitions(range(d.partition, d.partition + d.count), d.if_mark)
    if isinstance(req, messages.Flush):
        return store.flush
    if isinstance(req, messages.Compact):
        c = req
        return lambda: store.compact(c.partition)
    if isinstance(req, messages.Stats):
        return lambda: records.to_wire(worker_stats(store))
    if isinstance(req, messages.SetPartitions):
        sp = req
        return lambda: store.set_partitions(sp.partitions)
    if isinstance(req, messages.TreeLevel):
        tl = req
        return lambda: merkle.pack_nodes(store.tree_level(tl.partition, tl.depth, tl.indices))
    if isinstance(req, messages.BucketDigests):
        bd = req
        return lambda: [[k, d] for k, d in store.bucket_digests(bd.partition, bd.buckets)]
    if isinstance(req, messages.ReplicaRepairSet):
        rs = req
        return lambda: vs.encode_siblings(
            store.repair_set(rs.partition, rs.key, rs.siblings).siblings
        )
    raise BadRequestError(f"unexpected request {type(req).__name__}")


def worker_stats(store: ShardStore) -> WorkerStats:
    """The store's figures as the typed record coordinators read."""
    return records.from_wire(WorkerStats, store.stats(), "worker stats")


def _scan(store: ShardStore, partition: int, after: bytes | None, limit: int) -> dict[str, Any]:
    # The mark is read before the scan starts: every write it counts is in
    # the pages from here on (a conditional drop relies on that).
    mark = store.write_mark(partition)
    items, next_after = store.scan_raw(partition, after, limit)
    return {"items": [[k, v] for k, v in items], "next": next_after, "mark": mark}
