"""The client commands that act on the whole cluster rather than on a key
(DBSIZE, FLUSHALL/FLUSHDB), and the rest of what the client server's
``Backend`` asks of the node: the data path and whether it drains.

DBSIZE is an estimate: entries in every engine of the nodes that are up,
over N (versions and tombstones not yet compacted away count too).
FLUSHALL is a cluster-wide truncate that needs every node up, like
Cassandra's TRUNCATE, and ``enable_flush`` on each node.
"""

from __future__ import annotations

import asyncio
import contextlib

from coordinator.cluster.ring import NodeId
from coordinator.cluster.view import ClusterView
from coordinator.config import NodeConfig
from coordinator.data.datapath import DataPath
from coordinator.data.router import Router
from coordinator.errors import CommandError, UnavailableError
from coordinator.ops.admin import ADMIN_TIMEOUT_S
from coordinator.ops.status import WorkerStatsPoller, storage_totals
from shardserver.protocol import messages as m
from shardserver.protocol import records
from shardserver.protocol.client import ShardUnavailable
from shardserver.protocol.codec import ProtocolError
from shardserver.protocol.worker_stats import WorkerStats


class ClusterCommands:
    def __init__(self, config: NodeConfig, view: ClusterView, router: Router, data: DataPath,
                 worker_stats: WorkerStatsPoller) -> None:
        self.config = config
        self.view = view
        self.router = router
        self._data = data
        self.worker_stats = worker_stats

    @property
    def data(self) -> DataPath:
        return self._data

    @property
    def draining(self) -> str | None:
        return self.view.draining

    async def dbsize(self) -> int:
        ring = self.view.ring
        if ring is None:
            raise UnavailableError("the ring is not formed yet")
        return storage_totals(await self._all_nodes_stats()).entries // ring.n

    async def _all_nodes_stats(self) -> list[WorkerStats]:
        """The latest figures of every worker of every node that is up."""
        ring = self.view.ring
        assert ring is not None
        out = list(self.worker_stats.latest)
        for node in ring.node_ids:
            if node != self.view.id and self.view.is_up(node):
                with contextlib.suppress(ShardUnavailable, ProtocolError):
                    reply = await self.router.call(node, m.Stats(), self.router.timeout_s)
                    if reply.ok:
                        workers = reply.payload.get("workers", [])
                        out += records.from_wire(list[WorkerStats], workers, f"stats of {node}")
        return out

    async def flushall(self) -> None:
        if not self.config.enable_flush:
            raise CommandError(
                "ERR FLUSHALL is disabled on this cluster (set enable_flush = true in [security])"
            )
        ring = self.view.ring
        if ring is None:
            raise UnavailableError("the ring is not formed yet")
        down = [n for n in ring.node_ids if not self.view.is_up(n)]
        if down:
            raise UnavailableError(f"FLUSHALL needs every node up; down: {', '.join(down)}")

        async def drop_range(node: NodeId, parts: range) -> str | None:
            try:
                reply = await self.router.call(
                    node, m.DropPartition(parts.start, len(parts)), ADMIN_TIMEOUT_S
                )
            except ShardUnavailable as exc:
                return f"{node}: {exc.reason}"
            ok = reply.ok
            return None if ok else f"{node} partitions {parts.start}-{parts[-1]}: {reply.message}"

        # Workers own contiguous ranges of the same size on every node; one
        # drop (one compaction) per worker.
        w = self.router.workers
        ranges = [range(i * ring.q // w, (i + 1) * ring.q // w) for i in range(w)]
        drops = [drop_range(node, r) for node in ring.node_ids for r in ranges]
        failures = [f for f in await asyncio.gather(*drops) if f is not None]
        if failures:
            raise UnavailableError(
                f"FLUSHALL incomplete, {len(failures)} failures, first: {failures[0]}"
            )
