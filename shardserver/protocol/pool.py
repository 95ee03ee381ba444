"""What the coordinator needs of the node's worker processes, as a Protocol.

The coordinator may import only ``shardserver.protocol`` (import-linter), so
it types its dependency against ``WorkerPool``; ``cli serve`` builds the real
one (``shardserver.supervisor.Supervisor``) and hands it in. Tests can pass a
fake that serves in-process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

#: A worker splits replies into frames of at most this, and refuses request
#: frames past it: both sides of a worker connection hold to it.
WORKER_MAX_FRAME_BYTES = 16 << 20


def usable_cores() -> int:
    """Processors this process may run on (its affinity mask, as a container
    or ``taskset`` sets it), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_worker_count(cores: int | None = None) -> int:
    """Workers for a node with ``cores`` processors to itself (default: all
    this process may use) when its config says ``workers = 0``: one core is
    the coordinator's (one event loop, it never uses more), each worker gets
    one of the rest, and there is at least one. On 2 cores that is one
    worker: two processes, not three competing for two cores
    (docs/configuration.md, "Sizing workers")."""
    return max(1, (usable_cores() if cores is None else cores) - 1)


def partition_ranges(q: int, workers: int) -> list[range]:
    """Worker i's partitions: ``i*Q/W <= p < (i+1)*Q/W``."""
    if q < 1 or workers < 1:
        raise ValueError("need q >= 1 and workers >= 1")
    return [range(i * q // workers, (i + 1) * q // workers) for i in range(workers)]


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker process as its supervisor sees it."""

    worker: int
    partitions: range
    socket: str
    pid: int | None  # None while it is not running
    ready: bool
    restarts: int
    last_exit: int | None


class WorkerPool(Protocol):
    @property
    def workers(self) -> int: ...

    def worker_for(self, partition: int) -> int:
        """Index of the worker serving ``partition``."""
        ...

    def socket_for(self, partition: int) -> str:
        """Unix socket of the worker serving ``partition`` (for ShardClient)."""
        ...

    def ready(self, index: int) -> bool:
        """False while the worker is down or replaying its WAL: route around it."""
        ...

    def status(self) -> list[WorkerView]: ...

    async def start(self) -> None: ...

    async def wait_ready(self, timeout_s: float) -> None: ...

    async def stop(self, timeout_s: float = 10.0) -> None: ...
