"""The client commands that act on the whole cluster rather than on a key
(DBSIZE, FLUSHALL/FLUSHDB), and the rest of what the client server's
``Backend`` asks of the node: the data path, whether it drains and whether
the operator turned writes off (``ops.read_only``).

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
from coordinator.ops.read_only import ReadOnlySwitch
from coordinator.ops.status import WorkerStatsPoller, storage_totals
from shardserver.protocol import messages as m
from shardserver.protocol import records
from shardserver.protocol.errors import ProtocolError, ShardUnavailable
from shardserver.protocol.worker_stats import WorkerStats


class ClusterCommands:
    def __init__(self, config: NodeConfig, view: ClusterView, router: Router, data: DataPath,
                 worker_stats: WorkerStatsPoller, *, read_only: ReadOnlySwitch) -> None:
        self.config = config
        self._read_only = read_only
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

    @property
    def read_only(self) -> str | None:
        return self._read_only.refusal

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

        async def flush(node: NodeId) -> str | None:
            if node == self.view.id:
                reply = await self.flush_local()
            else:
                try:
                    reply = await self.router.call(node, m.FlushAll(), ADMIN_TIMEOUT_S)
                except ShardUnavailable as exc:
                    return f"{node}: {exc.reason}"
            return None if reply.ok else f"{node}: {reply.message}"

        # Each node drops its own workers' ranges: nodes may run different
        # numbers of workers.
        failures = [f for f in await asyncio.gather(*map(flush, ring.node_ids)) if f is not None]
        if failures:
            raise UnavailableError(
                f"FLUSHALL incomplete, {len(failures)} failures, first: {failures[0]}"
            )

    def flush_refused(self) -> m.Reply | None:
        """The reply that refuses a peer's drop of our partitions (FLUSHALL's
        part), or None when ``enable_flush`` allows it here."""
        if self.config.enable_flush:
            return None
        return m.Reply.error(
            m.Status.BAD_REQUEST, f"{self.config.id} refuses to drop partitions for a peer: "
            "FLUSHALL is disabled here (enable_flush = false)")

    async def flush_local(self) -> m.Reply:
        """FLUSHALL's part on this node (``FlushAll`` from any coordinator):
        every partition of each of our workers dropped, one drop (one
        compaction) per worker. Refused unless ``enable_flush`` is set here:
        each node decides for itself."""
        if (refused := self.flush_refused()) is not None:
            return refused

        async def drop(index: int) -> m.Reply:
            parts = self.router.worker_partitions(index)
            reply = await self.router.worker_call(
                index, m.DropPartition(parts.start, len(parts)), ADMIN_TIMEOUT_S)
            if reply.ok:
                return reply
            return m.Reply.error(reply.status, f"partitions {parts.start}-{parts[-1]}: "
                                 f"{reply.message}")

        replies = await asyncio.gather(*map(drop, range(self.router.workers)))
        failed = [r for r in replies if not r.ok]
        return failed[0] if failed else m.Reply(m.Status.OK)
