"""What a node answers over the peer channel besides replica reads and
writes (which ``data.router.Router.from_peer`` hands straight to a worker):
gossip, pings, its workers' figures, operator commands, and the requests
that are disk work rather than requests (drops, compactions, flushes,
anti-entropy tree levels and bucket digests), which reach our workers with
the admin timeout.
"""

from __future__ import annotations

from coordinator.cluster.view import ClusterView
from coordinator.config import NodeConfig
from coordinator.data.router import Router
from coordinator.ops.admin import ADMIN_TIMEOUT_S, AdminHandler
from coordinator.ops.cluster_commands import ClusterCommands
from coordinator.ops.status import WorkerStatsPoller
from shardserver.protocol import messages as m
from shardserver.protocol import records

#: Disk work, not requests: drops, compactions, and anti-entropy tree
#: requests that may scan a whole partition.
_SLOW = m.DropPartition | m.Compact | m.Flush | m.TreeLevel | m.BucketDigests


class PeerService:
    def __init__(self, config: NodeConfig, *, view: ClusterView, router: Router,
                 admin: AdminHandler, cluster_commands: ClusterCommands,
                 worker_stats: WorkerStatsPoller) -> None:
        self.config = config
        self.view = view
        self.router = router
        self.admin = admin
        self.cluster_commands = cluster_commands
        self.worker_stats = worker_stats

    async def handle(self, peer: str, request: m.Request) -> m.Reply:
        """``PeerServer``'s handler: the reply to ``request`` from ``peer``."""
        match request:
            case m.Gossip(payload):
                assert self.view.gossip is not None
                return m.Reply(m.Status.OK, self.view.gossip.receive(payload))
            case m.Ping():
                return m.Reply(m.Status.OK, {"ready": True, "node": self.config.id})
            case m.Stats():
                return m.Reply(m.Status.OK, {"workers": records.to_wire(self.worker_stats.latest)})
            case m.Admin(payload):
                return await self.admin.handle(payload)
            case m.FlushAll():
                return await self.cluster_commands.flush_local()
            case m.DropPartition() if (no := self.cluster_commands.flush_refused()) is not None:
                # Handoff and removal drop our copies through the router; a
                # peer's drop is an operator's, allowed only with FLUSHALL.
                return no
        timeout = ADMIN_TIMEOUT_S if isinstance(request, _SLOW) else self.router.timeout_s
        return await self.router.local(request, timeout)
