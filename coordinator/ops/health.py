"""How safe each partition's data is now (pure): its primaries, how many of
them this node sees up, and how many more losses it takes before W or R
primaries can no longer answer. The metrics, the status page and ``ringkv
status`` render it; computed on demand (O(Q) ring walks, cached by the
ring), never on the request path.

"Losses to quorum loss" counts primaries, the copies that hold a partition's
data: a sloppy quorum still takes writes through fallbacks after that point,
but reads of what only the lost primaries held fail or come back stale. 0
means W or R primaries are already out of reach; 1 means the next loss does
it (the alert ``RingkvPartitionOneLossFromQuorumLoss``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coordinator.cluster.ring import NodeId, Ring, primaries


@dataclass(frozen=True, slots=True)
class PartitionHealth:
    partition: int
    replicas: tuple[str, ...]  # the primaries, in preference order
    up: tuple[bool, ...]  # per replica, as this node's failure detector sees it
    losses_to_quorum_loss: int

    @property
    def replicas_up(self) -> int:
        return sum(self.up)


@dataclass(frozen=True, slots=True)
class RingHealth:
    n: int
    partitions: tuple[PartitionHealth, ...]

    @property
    def under_replicated(self) -> int:
        """Partitions with fewer than N primaries up."""
        return sum(1 for p in self.partitions if p.replicas_up < self.n)

    @property
    def at_quorum_risk(self) -> int:
        """Partitions one loss (or none) away from losing W or R primaries."""
        return sum(1 for p in self.partitions if p.losses_to_quorum_loss <= 1)


def ring_health(ring: Ring | None, is_up: Callable[[NodeId], bool], w: int, r: int) -> RingHealth:
    if ring is None:
        return RingHealth(0, ())
    need = max(w, r)
    seen: dict[NodeId, bool] = {}
    out = []
    for p in range(ring.q):
        nodes = primaries(ring, p)
        up = tuple(seen.setdefault(node, is_up(node)) for node in nodes)
        out.append(PartitionHealth(p, tuple(nodes), up, max(0, sum(up) - need + 1)))
    return RingHealth(ring.n, tuple(out))
