"""A shard worker process: one ShardStore served on a unix socket.

Life cycle (as uvicorn's server: startup → main loop → shutdown)::

    bind socket ─▶ open engine in a thread (WAL replay) ─▶ ready ─▶ … ─▶ SIGTERM
         │              meanwhile every request but PING gets NOT_READY        │
         └──────────────────────────────────────────────────────────── close engine

- Engine calls run in a bounded thread pool, so the event loop only parses
  frames and writes replies.
- Admission control: at most ``max_inflight`` requests in flight in total and
  ``max_inflight_per_conn`` per connection; the rest get OVERLOADED at once.
  Frames are capped at ``max_frame_bytes`` and connections at
  ``max_connections``; together that bounds memory.
- Engine errors become statuses at this boundary: DiskFullError and
  StorageIOError → READ_ONLY (with the engine's message), store argument
  errors → BAD_REQUEST / NOT_SERVED, anything else → INTERNAL.

    python -m shardserver.worker --socket /run/ringkv/w0.sock --data /var/lib/ringkv/w0 \\
        --partitions 0-31 [--fsync interval|always|never]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import uvloop

from lsm.options import Options
from shardserver import handlers
from shardserver.admission import DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_INFLIGHT_PER_CONN, Admission
from shardserver.layout import DEFAULT_TOMBSTONE_GRACE_MS, MAX_PARTITIONS
from shardserver.protocol.pool import WORKER_MAX_FRAME_BYTES
from shardserver.storage import ShardStore

log = logging.getLogger("ringkv.worker")

DEFAULT_THREADS = 8
#: With ``max_frame_bytes`` this bounds the bytes buffered for requests.
DEFAULT_MAX_CONNECTIONS = 256


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    socket_path: str
    data_dir: str
    partitions: range
    worker_id: str = "0"
    fsync: Literal["always", "interval", "never"] = "interval"
    memtable_bytes: int = 8 << 20
    fsync_interval_ms: int = 1000
    block_cache_bytes: int = 64 << 20
    tombstone_grace_ms: int = DEFAULT_TOMBSTONE_GRACE_MS
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_inflight_per_conn: int = DEFAULT_MAX_INFLIGHT_PER_CONN
    max_frame_bytes: int = WORKER_MAX_FRAME_BYTES
    threads: int = DEFAULT_THREADS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    startup_delay_s: float = 0.0  # test kit: hold the readiness gate closed this long
    filter_refresh_s: float = 60.0


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.store: ShardStore | None = None
        self.admission = Admission(config.max_inflight, config.max_inflight_per_conn)
        self._pool = ThreadPoolExecutor(
            max_workers=config.threads, thread_name_prefix=f"w{config.worker_id}"
        )
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self.open_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.store is not None

    # -- startup ------------------------------------------------------------------
    async def start(self) -> None:
        path = self.config.socket_path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of a killed predecessor
        self._server = await asyncio.start_unix_server(
            self._on_connection, path=path, limit=64 << 10
        )
        self._spawn(self._open(), "open-engine")
        self._spawn(self._watch_parent(os.getppid()), "watch-parent")
        log.info("listening on %s", path)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self) -> None:
        cfg = self.config
        if cfg.startup_delay_s > 0:
            await asyncio.sleep(cfg.startup_delay_s)
        options = Options(
            fsync=cfg.fsync, memtable_bytes=cfg.memtable_bytes,
            fsync_interval_ms=cfg.fsync_interval_ms, block_cache_bytes=cfg.block_cache_bytes,
        )
        try:
            store = await asyncio.to_thread(
                ShardStore.open, cfg.data_dir, cfg.partitions, options,
                tombstone_grace_ms=cfg.tombstone_grace_ms,
            )
        except Exception as exc:
            # Exit so the supervisor restarts us with backoff; a worker that
            # cannot open its engine must not look alive.
            self.open_error = f"{type(exc).__name__}: {exc}"
            log.error("cannot open %s: %s", cfg.data_dir, self.open_error)
            self._stop.set()
            return
        self.store = store
        log.info("ready: partitions %d-%d", cfg.partitions.start, cfg.partitions.stop - 1)
        self._spawn(self._refresh_filter(), "refresh-filter")

    async def _watch_parent(self, parent: int) -> None:
        """Stop cleanly when the coordinator that started us is gone (killed
        with SIGKILL it cannot stop us), so a restarted node finds its engine
        directories free instead of held by orphans."""
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.warning("parent process %d is gone; stopping", parent)
        self._stop.set()

    async def _refresh_filter(self) -> None:
        # The filter carries "now" for tombstone grace; move it forward.
        while True:
            await asyncio.sleep(self.config.filter_refresh_s)
            if self.store is not None:
                self.store.refresh_filter()

    # -- main loop ------------------------------------------------------------------
    async def serve_until_stopped(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._conns) >= self.config.max_connections:
            log.warning("refusing a connection: %d open", len(self._conns))
            writer.close()
            return
        self._conns.add(task)
        conn = handlers.Connection(self, reader, writer)
        try:
            await conn.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Shutdown. Not re-raised: Python 3.11's start_server callback calls
            # task.exception() on the handler and would log a traceback.
            pass
        finally:
            self._conns.discard(task)
            await conn.close()

    async def run_in_pool(self, fn: handlers.Call) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn)

    # -- shutdown ---------------------------------------------------------------------
    async def shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns) + list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._conns, *self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        # In-flight engine calls finish in their threads; then close the engine.
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
            self.store = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.socket_path)
        log.info("stopped")


async def run(config: WorkerConfig) -> int:
    worker = Worker(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    await worker.start()
    try:
        await worker.serve_until_stopped()
    finally:
        await worker.shutdown()
    return 1 if worker.open_error else 0


def parse_partitions(text: str) -> range:
    """``A-B`` (inclusive) or a single ``A``."""
    try:
        lo, _, hi = text.partition("-")
        start, stop = int(lo), int(hi or lo) + 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"partitions must be A-B, not {text!r}") from None
    if not 0 <= start < stop <= MAX_PARTITIONS:
        raise argparse.ArgumentTypeError(f"partition range {text!r} out of 0-{MAX_PARTITIONS - 1}")
    return range(start, stop)


def parse_args(argv: Sequence[str] | None) -> WorkerConfig:
    p = argparse.ArgumentParser(prog="python -m shardserver.worker", description=__doc__)
    p.add_argument("--socket", required=True, help="unix socket path to listen on")
    p.add_argument("--data", required=True, help="engine directory")
    p.add_argument("--partitions", required=True, type=parse_partitions, help="A-B, inclusive")
    p.add_argument("--worker-id", default="0", help="name used in logs")
    p.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    p.add_argument("--memtable-bytes", type=int, default=8 << 20)
    p.add_argument("--fsync-interval-ms", type=int, default=1000)
    p.add_argument("--block-cache-bytes", type=int, default=64 << 20)
    p.add_argument("--tombstone-grace-ms", type=int, default=DEFAULT_TOMBSTONE_GRACE_MS)
    p.add_argument("--max-inflight", type=int, default=DEFAULT_MAX_INFLIGHT)
    p.add_argument("--max-inflight-per-conn", type=int, default=DEFAULT_MAX_INFLIGHT_PER_CONN)
    p.add_argument("--max-frame-bytes", type=int, default=WORKER_MAX_FRAME_BYTES)
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    p.add_argument("--startup-delay", type=float, default=0.0,
                   help="test kit: stay not-ready this many seconds before opening the engine")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(), stream=sys.stderr,
        format=f"%(asctime)s worker-{a.worker_id} %(levelname)s %(name)s: %(message)s",
    )
    return WorkerConfig(
        socket_path=a.socket, data_dir=a.data, partitions=a.partitions, worker_id=a.worker_id,
        fsync=a.fsync, memtable_bytes=a.memtable_bytes, tombstone_grace_ms=a.tombstone_grace_ms,
        fsync_interval_ms=a.fsync_interval_ms, block_cache_bytes=a.block_cache_bytes,
        max_inflight=a.max_inflight, max_inflight_per_conn=a.max_inflight_per_conn,
        max_frame_bytes=a.max_frame_bytes, threads=a.threads, startup_delay_s=a.startup_delay,
        max_connections=a.max_connections,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return uvloop.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
