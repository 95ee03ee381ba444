"""What repair needs to reach replicas: handoff and anti-entropy depend on
this narrow view of ``coordinator.data.router.Router``, not on the node."""

from __future__ import annotations

from typing import Protocol

from coordinator.cluster.ring import NodeId, Ring
from shardserver.protocol import messages as m


class Replicas(Protocol):
    @property
    def id(self) -> NodeId: ...

    @property
    def ring(self) -> Ring | None: ...

    @property
    def timeout_s(self) -> float: ...

    def is_up(self, node: NodeId) -> bool: ...

    async def call(self, node: NodeId, request: m.Request, timeout: float) -> m.Reply: ...


class LocalReplicas(Replicas, Protocol):
    """Replicas, and this node's own workers without a peer hop."""

    async def local(self, request: m.Request, timeout: float) -> m.Reply: ...
