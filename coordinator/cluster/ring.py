"""The ring: Q fixed partitions, their owners, and preference lists (pure).

A key hashes to a partition; a partition's preference list is the walk
p, p+1, ... collecting distinct nodes; the first N are its primaries and the
rest, in order, its fallbacks::

    partition   0   1   2   3   4   5   6   7        (Q = 8, N = 3)
    owner       A   B   C   D   A   B   C   D
    pref(6)  =  C, D, A, B   ->  primaries C D A, fallbacks B

:func:`claim` places a new cluster's partitions; :func:`rebalance` derives
the next epoch for a join, leave or replace. Both keep every node at floor or
ceil of Q/#nodes partitions and aim, in this order, for node-distinct windows
of N consecutive partitions, zone-distinct windows where zones are configured,
and the fewest moved partitions; the combinatorics (and when node-distinct
placement is achievable at all) are in :mod:`coordinator.cluster.placement`. No I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NewType

from coordinator.cluster import placement, reassign
from coordinator.errors import RingError

PartitionId = NewType("PartitionId", int)
NodeId = NewType("NodeId", str)

DEFAULT_Q = 64
DEFAULT_N = 3
#: Gossip carries the ring; a bound keeps a hostile peer from making us build
#: a billion-entry tuple.
MAX_Q = 1 << 16
#: Version of the encoded form, bumped when a field's meaning changes.
ENCODING_VERSION = 1


def check_q(q: int) -> None:
    """Raise :class:`RingError` unless ``q`` is a power of two in 1..MAX_Q."""
    if isinstance(q, bool) or not isinstance(q, int) or q < 1 or q > MAX_Q or q & (q - 1):
        raise RingError(f"Q must be a power of two between 1 and {MAX_Q}, got {q!r}")


def partition_of(key: bytes, q: int) -> PartitionId:
    """The partition of ``key``: the top log2(Q) bits of its 64-bit blake2b hash.

    Taking the top bits (not ``hash % Q``) means doubling Q later splits every
    partition in two in place, which keeps a future split cheap.
    """
    check_q(q)
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return PartitionId(int.from_bytes(digest, "big") >> (64 - (q.bit_length() - 1)))


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A ring member and its failure zone (rack, availability zone); ``None`` = unknown."""

    node_id: NodeId
    zone: str | None = None


NodeSpec = NodeInfo | tuple[str, str | None]


def normalize_nodes(nodes: Iterable[NodeSpec]) -> tuple[NodeInfo, ...]:
    """Nodes as :class:`NodeInfo` sorted by id; duplicate or empty ids are rejected."""
    infos: dict[NodeId, NodeInfo] = {}
    for spec in nodes:
        info = spec if isinstance(spec, NodeInfo) else NodeInfo(NodeId(spec[0]), spec[1])
        if not isinstance(info.node_id, str) or not info.node_id:
            raise RingError(f"node id must be a non-empty string, got {info.node_id!r}")
        if info.zone is not None and not isinstance(info.zone, str):
            raise RingError(f"zone of {info.node_id} must be a string or None")
        if info.node_id in infos:
            raise RingError(f"duplicate node id {info.node_id}")
        infos[info.node_id] = info
    return tuple(sorted(infos.values(), key=lambda i: i.node_id))


@dataclass(frozen=True, slots=True)
class Ring:
    """One version of the ring. Immutable: a change is a new Ring with epoch + 1.

    ``owners[p]`` is the node that claimed partition p; ``nodes`` are all
    members sorted by id (a member may own nothing when Q < #nodes); ``n`` is
    the replication factor the placement was made for; ``removed`` are the
    ids taken out of the cluster for good (``ringkv remove``): they never
    join again, whatever gossip says about them.
    """

    epoch: int
    q: int
    n: int
    owners: tuple[NodeId, ...]
    nodes: tuple[NodeInfo, ...]
    removed: frozenset[NodeId] = frozenset()
    # Walks cached per partition on first use: the request path asks on
    # every request, and a full walk is O(Q). Lazily, because deriving all
    # Q lists up front is O(Q * #nodes) (seconds at Q = 4096 and 1,000
    # nodes) and gossip decodes every ring it receives.
    _prefs: dict[int, tuple[NodeId, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _heads: dict[int, tuple[NodeId, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _owning: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        check_q(self.q)
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 0:
            raise RingError(f"epoch must be a non-negative integer, got {self.epoch!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise RingError(f"N must be a positive integer, got {self.n!r}")
        if len(self.owners) != self.q:
            raise RingError(f"ring has {len(self.owners)} owners for Q={self.q}")
        members = {info.node_id for info in self.nodes}
        if len(members) != len(self.nodes):
            raise RingError("duplicate node ids in ring")
        if back := members & self.removed:
            raise RingError(f"removed node(s) {sorted(back)} cannot be members again")
        for p, owner in enumerate(self.owners):
            if owner not in members:
                raise RingError(f"partition {p} owned by {owner!r}, which is not a member")
        object.__setattr__(self, "_owning", len(set(self.owners)))

    @property
    def node_ids(self) -> tuple[NodeId, ...]:
        """Member ids, sorted."""
        return tuple(info.node_id for info in self.nodes)

    def zone_of(self, node: NodeId) -> str | None:
        """The zone of a member (``None`` if unknown); KeyError for a non-member."""
        for info in self.nodes:
            if info.node_id == node:
                return info.zone
        raise KeyError(node)

    def zones(self) -> Mapping[NodeId, str | None]:
        """Member id -> zone."""
        return {info.node_id: info.zone for info in self.nodes}

    def partition_of(self, key: bytes) -> PartitionId:
        """The partition of ``key`` on this ring."""
        return partition_of(key, self.q)


def _walk(owners: Sequence[NodeId], p: int, count: int) -> tuple[NodeId, ...]:
    """The first ``count`` distinct owners from partition p on (wrapping)."""
    q = len(owners)
    seen: dict[NodeId, None] = {}
    i = p
    # Stops as soon as enough owners were seen, so a balanced ring costs
    # about ``count`` steps (at most #nodes) per partition rather than Q.
    for _ in range(q):
        if len(seen) >= count:
            break
        seen.setdefault(owners[i], None)
        i = (i + 1) % q
    return tuple(seen)


def _zone_numbers(nodes: Sequence[NodeInfo]) -> tuple[list[int], list[int], bool]:
    """Zone numbers for placement, relabel groups for alignment, and whether any zone is set.

    A node without a zone gets a zone number of its own (it conflicts with
    nobody) but shares one relabel group with the other unzoned nodes.
    """
    names = sorted({info.zone for info in nodes if info.zone is not None})
    index = {name: i for i, name in enumerate(names)}
    zones: list[int] = []
    groups: list[int] = []
    for j, info in enumerate(nodes):
        if info.zone is None:
            zones.append(len(names) + j)
            groups.append(-1)
        else:
            zones.append(index[info.zone])
            groups.append(index[info.zone])
    return zones, groups, bool(names)


def claim(
    nodes: Iterable[NodeSpec], q: int = DEFAULT_Q, n: int = DEFAULT_N, epoch: int = 1,
    time_budget_s: float | None = placement.TIME_BUDGET_S,
) -> Ring:
    """Place Q partitions on a new cluster (see the module docstring for the
    goals); the search stops ``time_budget_s`` after the call began."""
    check_q(q)
    infos = normalize_nodes(nodes)
    if not infos:
        raise RingError("a ring needs at least one node")
    zones, _, zoned = _zone_numbers(infos)
    seq = placement.claim_sequence(zones, q, n, zoned, placement.deadline_in(time_budget_s))
    return Ring(epoch=epoch, q=q, n=n, owners=tuple(infos[s].node_id for s in seq), nodes=infos)


def rebalance(
    ring: Ring,
    new_nodes: Iterable[NodeSpec],
    n: int | None = None,
    *,
    reshuffle_for_zones: bool = False,
    removed: Iterable[NodeId] = (),
    time_budget_s: float | None = placement.TIME_BUDGET_S,
) -> Ring:
    """The next epoch for a new member list (join, leave, replace, zone change).

    ``removed`` adds to the ring's removed ids (which are carried forward);
    none of them may be in ``new_nodes``.

    Best effort, in priority order: node-distinct windows, zone-distinct
    windows, fewest moved partitions. The incremental result (see
    :mod:`coordinator.cluster.reassign`) is kept unless a fresh claim, rotated and
    relabelled to agree with the old ring as far as it can, has fewer node
    conflicts: then most partitions move, which is the price of keeping the
    N replicas of every partition on N distinct nodes. Zone conflicts alone
    are repaired by local swaps (two moves each), not by reshuffling the
    ring, unless ``reshuffle_for_zones`` asks for that (e.g. once, after
    zones were first configured on a running cluster). The searches stop
    ``time_budget_s`` after the call began (None: unbounded), keeping the
    best ring found by then.
    """
    infos = normalize_nodes(new_nodes)
    if not infos:
        raise RingError("a ring needs at least one node")
    n = ring.n if n is None else n
    index = {info.node_id: i for i, info in enumerate(infos)}
    old = [index.get(owner) for owner in ring.owners]
    zones, groups, zoned = _zone_numbers(infos)
    zw = placement.zone_window(zones, n, zoned)
    deadline = placement.deadline_in(time_budget_s)
    best = reassign.reassign(old, zones, n, zoned, deadline)
    best_cost = placement.cost(best, zones, n, zw, old)
    if best_cost[:2] != (0, 0) and not placement.past(deadline):
        fresh = placement.claim_sequence(zones, ring.q, n, zoned, deadline)
        aligned = reassign.align(fresh, old, groups)
        fresh_cost = placement.cost(aligned, zones, n, zw, old)
        if fresh_cost[0] < best_cost[0] or (reshuffle_for_zones and fresh_cost < best_cost):
            best = aligned
    return Ring(
        epoch=ring.epoch + 1,
        q=ring.q,
        n=n,
        owners=tuple(infos[s].node_id for s in best),
        nodes=infos,
        removed=ring.removed | frozenset(removed),
    )


def remove_nodes(ring: Ring, gone: Iterable[NodeId], new_nodes: Iterable[NodeSpec]) -> Ring:
    """The next epoch without ``gone`` (taken out for good): ``new_nodes``
    are the members that stay. Refused when fewer than N would be left."""
    gone = frozenset(gone)
    stay = [i for i in normalize_nodes(new_nodes) if i.node_id not in gone]
    if len(stay) < ring.n:
        names = ", ".join(sorted(gone))
        raise RingError(f"removing {names} would leave {len(stay)} node(s) for N={ring.n}; "
                        "add a node first")
    return rebalance(ring, stay, removed=gone)


def conflicts(ring: Ring) -> tuple[int, int]:
    """(node, zone) conflicting pairs within the distinctness windows; (0, 0) is ideal."""
    index = {info.node_id: i for i, info in enumerate(ring.nodes)}
    zones, _, zoned = _zone_numbers(ring.nodes)
    owners = [index[o] for o in ring.owners]
    zw = placement.zone_window(zones, ring.n, zoned)
    node, zone, _ = placement.cost(owners, zones, ring.n, zw)
    return node, zone


def zone_shared(ring: Ring) -> tuple[PartitionId, ...]:
    """Partitions whose primaries span fewer zones than they could
    (min(N, zones)): losing one zone takes two of their replicas. With Z
    zones of equal size and N = Z, a Q that Z divides has none."""
    zones = ring.zones()
    if all(z is None for z in zones.values()):
        return ()
    want = min(ring.n, len({z for z in zones.values()}))
    return tuple(PartitionId(p) for p in range(ring.q)
                 if len({zones[o] for o in primaries(ring, p)}) < want)


def _check_partition(ring: Ring, partition: int) -> None:
    if not 0 <= partition < ring.q:
        raise RingError(f"partition {partition} out of range 0..{ring.q - 1}")


def preference_list(ring: Ring, partition: int) -> tuple[NodeId, ...]:
    """Every owning node in walk order from ``partition``: primaries, then fallbacks.

    Members that own no partition (possible only when Q < #nodes) never
    appear: they hold no data to read and are not on any walk.
    """
    _check_partition(ring, partition)
    walk = ring._prefs.get(partition)
    if walk is None:
        walk = ring._prefs[partition] = _walk(ring.owners, partition, ring._owning)
    return walk


def primaries(ring: Ring, partition: int, n: int | None = None) -> tuple[NodeId, ...]:
    """The first N distinct nodes of the walk (fewer if the ring has fewer nodes)."""
    n = ring.n if n is None else n
    if n != ring.n:
        return preference_list(ring, partition)[:n]
    _check_partition(ring, partition)
    head = ring._heads.get(partition)
    if head is None:
        head = ring._heads[partition] = _walk(ring.owners, partition, n)
    return head


def fallbacks(ring: Ring, partition: int, n: int | None = None) -> tuple[NodeId, ...]:
    """The nodes after the first N, in walk order: where hinted writes go."""
    return preference_list(ring, partition)[ring.n if n is None else n :]


def partitions_of_node(ring: Ring, node: NodeId) -> tuple[PartitionId, ...]:
    """Partitions ``node`` claimed (owns as first primary), ascending."""
    return tuple(PartitionId(p) for p, owner in enumerate(ring.owners) if owner == node)


def replicated_partitions(
    ring: Ring, node: NodeId, n: int | None = None
) -> tuple[PartitionId, ...]:
    """Partitions for which ``node`` is one of the N primaries: the data it must hold."""
    return tuple(
        PartitionId(p) for p in range(ring.q) if node in primaries(ring, p, n)
    )


def moved_partitions(old: Ring, new: Ring) -> tuple[tuple[PartitionId, NodeId, NodeId], ...]:
    """(partition, old owner, new owner) for each partition whose owner changed."""
    if old.q != new.q:
        raise RingError(f"cannot compare rings with Q={old.q} and Q={new.q}")
    return tuple(
        (PartitionId(p), a, b)
        for p, (a, b) in enumerate(zip(old.owners, new.owners, strict=True))
        if a != b
    )


def encode_ring(ring: Ring) -> dict[str, Any]:
    """A msgpack-able dict; owners are indexes into the node list to keep gossip small."""
    index = {info.node_id: i for i, info in enumerate(ring.nodes)}
    return {
        "v": ENCODING_VERSION,
        "epoch": ring.epoch,
        "q": ring.q,
        "n": ring.n,
        "nodes": [[info.node_id, info.zone] for info in ring.nodes],
        "owners": [index[owner] for owner in ring.owners],
        "removed": sorted(ring.removed),
    }


def decode_ring(data: object) -> Ring:
    """Inverse of :func:`encode_ring`; anything malformed raises :class:`RingError`.

    The input comes from the network, so every field is type-checked rather
    than trusted.
    """
    if not isinstance(data, Mapping):
        raise RingError(f"encoded ring must be a map, got {type(data).__name__}")
    if data.get("v") != ENCODING_VERSION:
        raise RingError(f"unsupported ring encoding version {data.get('v')!r}")
    raw_nodes = data.get("nodes")
    raw_owners = data.get("owners")
    if not isinstance(raw_nodes, list | tuple) or not isinstance(raw_owners, list | tuple):
        raise RingError("encoded ring needs 'nodes' and 'owners' lists")
    specs: list[tuple[str, str | None]] = []
    for item in raw_nodes:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise RingError(f"bad node entry {item!r}")
        node_id, zone = item
        if not isinstance(node_id, str) or not (zone is None or isinstance(zone, str)):
            raise RingError(f"bad node entry {item!r}")
        specs.append((node_id, zone))
    nodes = normalize_nodes(specs)
    if [info.node_id for info in nodes] != [s[0] for s in specs]:
        raise RingError("encoded ring's nodes are not sorted by id")
    owners: list[NodeId] = []
    for idx in raw_owners:
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(nodes):
            raise RingError(f"bad owner index {idx!r}")
        owners.append(nodes[idx].node_id)
    raw_removed = data.get("removed", [])  # absent in rings written before removal existed
    if not isinstance(raw_removed, list | tuple) or not all(
            isinstance(r, str) and r for r in raw_removed):
        raise RingError(f"encoded ring's removed must be a list of node ids, got {raw_removed!r}")
    return Ring(
        epoch=_int_field(data, "epoch"),
        q=_int_field(data, "q"),
        n=_int_field(data, "n"),
        owners=tuple(owners),
        nodes=nodes,
        removed=frozenset(NodeId(r) for r in raw_removed),
    )


def _int_field(data: Mapping[Any, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RingError(f"encoded ring's {name} must be an integer, got {value!r}")
    return value
