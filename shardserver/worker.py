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

    python -m shardserver.worker --config worker.json   (or --config -: stdin)

with a :class:`~shardserver.config.WorkerConfig` as JSON; the supervisor
writes it to the worker's stdin.
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
from typing import Any

import uvloop

from lsm.options import Options
from lsm.priority import lower_thread_priority
from shardserver import handlers
from shardserver.admission import Admission
from shardserver.config import WorkerConfig
from shardserver.direct import DirectPeers
from shardserver.errors import WorkerConfigError
from shardserver.protocol import heap
from shardserver.protocol.attach import attach_path
from shardserver.storage import ShardStore

log = logging.getLogger("ringkv.worker")

class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.store: ShardStore | None = None
        self.settings = settings = config.settings
        self.admission = Admission(settings.max_inflight, settings.max_inflight_per_conn)
        self._pool = ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix=f"w{config.worker_id}"
        )
        # Compactions, drops, scans and tree builds (handlers._BACKGROUND)
        # run on threads at the engine's compaction niceness.
        self._background = ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix=f"w{config.worker_id}-bg",
            initializer=lower_thread_priority, initargs=(BACKGROUND_NICE,),
        )
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self.open_error: str | None = None
        #: Peer connections our coordinator hands over (peer protocol 5).
        self.direct = DirectPeers(self, attach_path(config.socket_path),
                                  settings.max_connections)

    @property
    def ready(self) -> bool:
        return self.store is not None

    @property
    def direct_counts(self) -> dict[str, int]:
        return self.direct.counts()

    # -- startup ------------------------------------------------------------------
    async def start(self) -> None:
        path = self.config.socket_path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of a killed predecessor
        self._server = await asyncio.start_unix_server(
            self._on_connection, path=path, limit=64 << 10
        )
        self.direct.start()
        self._spawn(self._open(), "open-engine")
        self._spawn(self._watch_parent(os.getppid()), "watch-parent")
        log.info("listening on %s", path)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self) -> None:
        cfg = self.config
        settings = self.settings
        if settings.startup_delay_s > 0:
            await asyncio.sleep(settings.startup_delay_s)
        try:
            store = await asyncio.to_thread(
                ShardStore.open, cfg.data_dir, cfg.partition_range, settings.options(),
                tombstone_grace_ms=settings.tombstone_grace_ms,
            )
        except Exception as exc:
            # Exit so the supervisor restarts us with backoff; a worker that
            # cannot open its engine must not look alive.
            self.open_error = f"{type(exc).__name__}: {exc}"
            log.error("cannot open %s: %s", cfg.data_dir, self.open_error)
            self._stop.set()
            return
        self.store = store
        log.info("ready: partitions %d-%d", cfg.partitions[0], cfg.partitions[1] - 1)
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
            await asyncio.sleep(self.settings.filter_refresh_s)
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
        if len(self._conns) >= self.settings.max_connections:
            log.warning("refusing a connection: %d open", len(self._conns))
            writer.close()
            return
        self._conns.add(task)
        conn = handlers.WorkerConnection(self, reader, writer)
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

    async def run_in_pool(self, fn: handlers.Call, background: bool = False) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._background if background else self._pool, fn)

    # -- shutdown ---------------------------------------------------------------------
    async def shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns) + list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._conns, *self._tasks, return_exceptions=True)
        await self.direct.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        # In-flight engine calls finish in their threads; then close the engine.
        for pool in (self._pool, self._background):
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
            self.store = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.socket_path)
        log.info("stopped")


#: How long the thread holding the GIL keeps it while another waits (Python's
#: default is 5 ms). The engine's flush and compaction threads are CPU-bound
#: Python: each time the event loop thread let the GIL go for a system call,
#: one of them could keep it 5 ms, and a loop turn with a few sends waited
#: that many times over. 0.5 ms hands it back ten times sooner.
SWITCH_INTERVAL_S = 0.0005
#: The niceness of the threads that run background requests.
BACKGROUND_NICE = Options().compaction_nice


async def run(config: WorkerConfig) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    worker = Worker(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    await worker.start()
    heap.settle()
    try:
        await worker.serve_until_stopped()
    finally:
        await worker.shutdown()
    return 1 if worker.open_error else 0


def parse_args(argv: Sequence[str] | None) -> WorkerConfig:
    """``--config FILE`` (or ``-``: stdin): the worker's config as JSON
    (shardserver.config); exits with a one-line error when it is bad."""
    p = argparse.ArgumentParser(prog="python -m shardserver.worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="worker config as JSON; - reads stdin")
    a = p.parse_args(argv)
    try:
        if a.config == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(a.config, "rb") as f:
                data = f.read()
        config = WorkerConfig.from_json(data)
        config.negotiate()
    except (OSError, WorkerConfigError) as exc:
        p.error(str(exc))
    logging.basicConfig(
        level=config.settings.log_level.upper(), stream=sys.stderr,
        format=f"%(asctime)s worker-{config.worker_id} %(levelname)s %(name)s: %(message)s",
    )
    return config


def main(argv: Sequence[str] | None = None) -> int:
    return uvloop.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
