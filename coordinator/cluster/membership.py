"""Which ring a node holds, as a pure reducer (etcd-raft's Step/Ready as
the model): ``apply(state, event) -> (state, effects)``. Nothing here does
I/O; the caller (``cluster.view.ClusterView``) carries out the effects:
writes the ring file (off the event loop), tells gossip, makes hints.

Events:

* ``Form``: the seeds answered (or the formation timeout passed) and there
  is no ring yet: claim one from the members gossip knows (epoch 1).
* ``RingReceived``: a ring came in gossip. It is adopted when its (epoch,
  member count) is higher than ours, equal ones broken by the owner list, so
  every node settles on the same ring. A removal we know of that it lacks (a
  concurrent ring change won over it) is applied again: removed ids only
  grow.
* ``MembersSeen``: gossip knows a member the ring lacks: it joins by
  ``rebalance`` (epoch + 1, fewest partitions moved).
* ``Remove``: ``ringkv remove``: the next ring without the node, which lists
  it as removed for good.

Effects of adopting a ring: ``PersistRing``, ``Announce`` (our epoch, and
whether we are removed), and for a ring change ``HintCopies`` (partitions
this node stops replicating, or whose replica left: our copy goes to the new
primaries, so handoff moves the data, Riak's ownership handoff through the
same code) and ``RetargetHints`` (hints held for removed nodes go to the
partitions' primaries). ``Note`` is a line for the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from coordinator.cluster import ring as ringmod
from coordinator.cluster.ring import NodeId, Ring
from coordinator.errors import RingError, UnavailableError

#: Every member gossip knows, with its zone ("" for none).
Members = Mapping[NodeId, str]


@dataclass(frozen=True, slots=True)
class MembershipState:
    me: NodeId
    q: int  # our config's partitions: a ring with another Q is refused
    n: int  # replication factor of a ring this node claims
    ring: Ring | None = None


# -- events ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Form:
    members: Members


@dataclass(frozen=True, slots=True)
class RingReceived:
    ring: Ring | None  # None: the gossip carried none
    members: Members


@dataclass(frozen=True, slots=True)
class MembersSeen:
    members: Members


@dataclass(frozen=True, slots=True)
class Remove:
    node: NodeId
    members: Members


Event = Form | RingReceived | MembersSeen | Remove


# -- effects ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PersistRing:
    ring: Ring


@dataclass(frozen=True, slots=True)
class Announce:
    """What gossip says of this node: its ring epoch, and that it is removed."""

    epoch: int
    removed: bool


@dataclass(frozen=True, slots=True)
class HintCopies:
    """Our copy of ``partition`` goes to ``owners`` (its new primaries)."""

    partition: int
    owners: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class RetargetHints:
    """Hints held for these (removed) nodes go to the partitions' primaries."""

    removed: frozenset[NodeId]


@dataclass(frozen=True, slots=True)
class Note:
    level: int
    text: str


Effect = PersistRing | Announce | HintCopies | RetargetHints | Note
#: The effects that change which hints this node holds (handed to handoff).
HintEffect = HintCopies | RetargetHints


def apply(state: MembershipState, event: Event) -> tuple[MembershipState, list[Effect]]:
    """The state after ``event`` and what the caller must do. Raises
    UnavailableError or RingError for a ``Remove`` that cannot be done."""
    effects: list[Effect] = []
    match event:
        case Form(members):
            if state.ring is None:
                effects.append(Note(logging.INFO, "forming a new ring with "
                                    + ", ".join(sorted(members))))
                new = ringmod.claim(_specs(state, members), state.q, state.n)
                state = _adopt(state, new, effects)
        case RingReceived(theirs, members):
            gone = state.ring.removed if state.ring else frozenset()
            if theirs is not None:
                gone |= theirs.removed
                if state.ring is None or better(theirs, state.ring):
                    state = _adopt(state, theirs, effects)
            if state.ring is not None and (lost := gone - state.ring.removed):
                # A concurrent ring change won over a removal: apply it again.
                try:
                    new = ringmod.remove_nodes(state.ring, lost, _specs(state, members))
                except RingError as exc:
                    effects.append(Note(logging.ERROR, f"cannot apply the removal of "
                                        f"{sorted(lost)} again: {exc}"))
                else:
                    state = _adopt(state, new, effects)
        case MembersSeen(members):
            ring = state.ring
            if ring is not None and not set(members) - ring.removed <= set(ring.node_ids):
                state = _adopt(state, ringmod.rebalance(ring, _specs(state, members)), effects)
        case Remove(node, members):
            old = state.ring
            if old is None:
                raise UnavailableError("the ring is not formed yet")
            if node not in old.removed:
                if node not in old.node_ids:
                    raise RingError(f"{node} is not a member of the ring "
                                    f"(members: {', '.join(old.node_ids)})")
                new = ringmod.remove_nodes(old, {node}, _specs(state, members))
                state = _adopt(state, new, effects)
    return state, effects


def needs_ring_math(state: MembershipState, event: Event) -> bool:
    """Whether ``apply`` would place partitions (claim, rebalance, remove):
    seconds of CPU at Q = 4,096 and hundreds of nodes, which the caller runs
    off its event loop. Everything else it does is O(Q) or less."""
    ring = state.ring
    match event:
        case Form():
            return ring is None
        case MembersSeen(members):
            return ring is not None and not set(members) - ring.removed <= set(ring.node_ids)
        case RingReceived(theirs):
            held = theirs if theirs is not None and (ring is None or better(theirs, ring)) \
                else ring
            gone = (ring.removed if ring else frozenset()) | (
                theirs.removed if theirs else frozenset())
            return held is not None and bool(gone - held.removed)
        case Remove():
            return True


def better(a: Ring, b: Ring) -> bool:
    """Which of two rings every node should settle on (a total order)."""
    ka, kb = (a.epoch, len(a.nodes)), (b.epoch, len(b.nodes))
    if ka != kb:
        return ka > kb
    return a.owners < b.owners


def _specs(state: MembershipState, members: Members) -> list[tuple[NodeId, str | None]]:
    """Every member known (gossip and ring) with its zone, for placement;
    never a removed one."""
    ring = state.ring
    zones: dict[NodeId, str | None] = dict(ring.zones()) if ring else {}
    removed = ring.removed if ring else frozenset()
    for node, zone in members.items():
        if node not in removed:
            zones[node] = zone or None
    return sorted(zones.items())


def _adopt(state: MembershipState, new: Ring, effects: list[Effect]) -> MembershipState:
    if new.q != state.q:
        effects.append(Note(logging.ERROR, f"ignoring a ring with Q={new.q} (ours is {state.q})"))
        return state
    old = state.ring
    me = state.me
    effects += [PersistRing(new), Announce(new.epoch, me in new.removed)]
    if old is not None:
        effects.append(Note(logging.INFO, f"ring epoch {old.epoch} -> {new.epoch}"))
        departed = set(old.node_ids) - set(new.node_ids)
        for p in range(new.q):
            before, after = ringmod.primaries(old, p), ringmod.primaries(new, p)
            gained = tuple(owner for owner in after if owner not in before)
            # We stop replicating p, or a replica of p left (a dead node hands
            # nothing over): our copy goes to the new primaries.
            if gained and me in before and (me not in after or departed & set(before)):
                effects.append(HintCopies(p, gained))
        if new.removed:
            effects.append(RetargetHints(new.removed))
    return replace(state, ring=new)
