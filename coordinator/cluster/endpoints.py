"""Cluster membership as gossip state, and its merge rule (pure).

Every node keeps a map node id -> :class:`Endpoint`. A node bumps its own
``version`` on every heartbeat and picks a new ``generation`` (its start
time) on every restart, so ``(generation, version)`` orders everything a
node ever said about itself: on merge the larger pair wins, which makes the
merge commutative, associative and idempotent and lets any gossip order
converge (as Cassandra's gossiper does). The ring travels with the state and
the higher ring epoch wins.

Liveness (UP/DOWN) is *not* gossiped: each node decides it locally with its
failure detector (DESIGN §9); ``status`` is what a node says about its own
intent (joining, up, leaving, removed).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from coordinator.cluster.ring import NodeId
from coordinator.errors import CoordinatorError


class MembershipError(CoordinatorError):
    """Gossip state from a peer did not decode."""


class MemberStatus(enum.Enum):
    JOINING = "joining"
    UP = "up"
    LEAVING = "leaving"
    REMOVED = "removed"


_STATUSES: Final[Mapping[str, MemberStatus]] = {s.value: s for s in MemberStatus}


@dataclass(frozen=True, slots=True)
class Endpoint:
    node: NodeId
    generation: int  # start time of the node's current incarnation (ms)
    version: int  # bumped by the node on every heartbeat
    status: MemberStatus
    client_addr: str  # host:port for clients
    peer_addr: str  # host:port for coordinators
    ring_epoch: int
    zone: str = ""  # failure zone from the node's config ("" = none)

    def newer_than(self, other: Endpoint) -> bool:
        return (self.generation, self.version) > (other.generation, other.version)

    def beat(self) -> Endpoint:
        return replace(self, version=self.version + 1)


Members = Mapping[NodeId, Endpoint]


def merge(mine: Members, theirs: Members) -> dict[NodeId, Endpoint]:
    """Per node, the entry with the larger (generation, version)."""
    out = dict(mine)
    for node, ep in theirs.items():
        have = out.get(node)
        if have is None or ep.newer_than(have):
            out[node] = ep
    return out


def changed(before: Members, after: Members) -> list[NodeId]:
    """Nodes whose entry differs, e.g. to feed heartbeats to the detector."""
    # The identity test first: merge keeps the unchanged entries' objects,
    # and comparing every field of 1,000 entries per message adds up.
    return sorted(n for n, ep in after.items() if (old := before.get(n)) is not ep and old != ep)


def stale(raw: object, mine: Members) -> bool:
    """Whether an encoded endpoint is no newer than the entry ``mine`` holds
    for its node, so it can be skipped without decoding it: at 1,000 nodes
    that is most entries of every message (measured with
    benchmarks/simulate.py). Anything malformed is not stale, so
    :func:`decode` still sees it and rejects it."""
    if not isinstance(raw, list) or len(raw) < 3:
        return False
    node, generation, version = raw[0], raw[1], raw[2]
    if type(node) is not str or type(generation) is not int or type(version) is not int:
        return False
    have = mine.get(NodeId(node))
    return have is not None and (generation, version) <= (have.generation, have.version)


def digest(members: Members) -> dict[str, list[int]]:
    """What a node advertises so a peer can send only newer entries."""
    return {n: [ep.generation, ep.version] for n, ep in sorted(members.items())}


def newer_for(members: Members, peer_digest: Mapping[str, list[int]]) -> list[Endpoint]:
    """Entries that are newer than what ``peer_digest`` says the peer has."""
    out = []
    for node, ep in members.items():
        seen = peer_digest.get(node)
        if seen is None or (ep.generation, ep.version) > (seen[0], seen[1]):
            out.append(ep)
    return out


def encode(ep: Endpoint) -> list[Any]:
    return [
        ep.node,
        ep.generation,
        ep.version,
        ep.status.value,
        ep.client_addr,
        ep.peer_addr,
        ep.ring_epoch,
        ep.zone,
    ]


def decode(raw: object) -> Endpoint:
    if not isinstance(raw, list) or len(raw) not in (7, 8):
        raise MembershipError(f"endpoint must be a list of 7 or 8 fields, got {raw!r:.80}")
    node, generation, version, status, client_addr, peer_addr, epoch = raw[:7]
    zone = raw[7] if len(raw) == 8 else ""
    if not isinstance(zone, str) or len(zone) > 256:
        raise MembershipError("endpoint zone must be a string of at most 256 chars")
    if not isinstance(node, str) or not node:
        raise MembershipError("endpoint node id must be a non-empty string")
    for name, v in (("generation", generation), ("version", version), ("ring epoch", epoch)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise MembershipError(f"endpoint {name} must be a non-negative int, got {v!r:.40}")
    if not isinstance(client_addr, str) or not isinstance(peer_addr, str):
        raise MembershipError("endpoint addresses must be strings")
    st = _STATUSES.get(status) if isinstance(status, str) else None
    if st is None:
        raise MembershipError(f"unknown endpoint status {status!r:.40}")
    return Endpoint(NodeId(node), generation, version, st, client_addr, peer_addr, epoch, zone)
