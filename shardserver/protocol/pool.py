"""What the coordinator needs of the node's worker processes, as a Protocol.

The coordinator may import only ``shardserver.protocol`` (import-linter), so
it types its dependency against ``WorkerPool``; ``cli serve`` builds the real
one (``shardserver.supervisor.Supervisor``) and hands it in. Tests can pass a
fake that serves in-process.
"""

from __future__ import annotations

from typing import Protocol


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

    def status(self) -> list[dict[str, object]]: ...

    async def start(self) -> None: ...

    async def wait_ready(self, timeout_s: float) -> None: ...

    async def stop(self, timeout_s: float = 10.0) -> None: ...
