"""Background requests (compactions, drops, scans, tree builds) run on the
worker's niced threads; replica reads and writes on threads at the event
loop's priority (shardserver.worker, handlers._BACKGROUND)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from shardserver.config import WorkerConfig
from shardserver.worker import BACKGROUND_NICE, Worker


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_background_calls_run_niced_and_the_others_do_not(tmp_path: Path) -> None:
    me = _niceness()
    worker = Worker(WorkerConfig(str(tmp_path / "w.sock"), str(tmp_path / "data"), (0, 4)))

    async def both() -> tuple[object, object]:
        return (await worker.run_in_pool(_niceness, background=True),
                await worker.run_in_pool(_niceness))

    try:
        assert asyncio.run(both()) == (max(me, BACKGROUND_NICE), me)
    finally:
        for pool in (worker._pool, worker._background):
            pool.shutdown(wait=True)
