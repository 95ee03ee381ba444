"""The membership reducer without processes (coordinator/cluster/membership.py):
which ring a node holds after each event, and the effects it asks for."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.cluster import membership as mb
from coordinator.cluster import ring as ringmod
from coordinator.cluster.ring import NodeId, Ring
from coordinator.errors import RingError, UnavailableError

Q = 16
A, B, C, D = (NodeId(n) for n in "abcd")


def members(*names: str) -> dict[NodeId, str]:
    return {NodeId(n): "" for n in names}


def claimed(*names: str, n: int = 2) -> Ring:
    return ringmod.claim([(NodeId(x), None) for x in names], Q, n)


def state(me: NodeId = A, ring: Ring | None = None) -> mb.MembershipState:
    return mb.MembershipState(me, Q, 2, ring)


def of(effects: list[mb.Effect], kind: type) -> list[mb.Effect]:
    return [e for e in effects if isinstance(e, kind)]


def test_form_claims_a_ring_from_the_members_and_persists_it() -> None:
    s, effects = mb.apply(state(), mb.Form(members("a", "b", "c")))
    assert s.ring is not None and s.ring.epoch == 1
    assert s.ring.node_ids == (A, B, C) and s.ring.n == 2
    assert of(effects, mb.PersistRing) == [mb.PersistRing(s.ring)]
    assert of(effects, mb.Announce) == [mb.Announce(1, False)]
    assert not of(effects, mb.HintCopies), "a first ring moves no copies"


def test_form_with_a_ring_already_does_nothing() -> None:
    ring = claimed("a", "b")
    assert mb.apply(state(ring=ring), mb.Form(members("a", "b", "c"))) == (state(ring=ring), [])


def test_a_better_ring_is_adopted_a_worse_one_ignored() -> None:
    ours = claimed("a", "b", "c")
    theirs = ringmod.rebalance(ours, [(A, None), (B, None), (C, None), (D, None)])
    s, effects = mb.apply(state(ring=ours), mb.RingReceived(theirs, members("a", "b", "c", "d")))
    assert s.ring is theirs and mb.PersistRing(theirs) in effects
    assert mb.Note(logging.INFO, f"ring epoch 1 -> {theirs.epoch}") in effects
    back, effects = mb.apply(s, mb.RingReceived(ours, members("a", "b", "c", "d")))
    assert back.ring is theirs and effects == []


def test_equal_epochs_settle_on_one_ring_whoever_receives_which() -> None:
    one = claimed("a", "b", "c")
    other = ringmod.Ring(1, Q, 2, tuple(reversed(one.owners)), one.nodes)
    s1, _ = mb.apply(state(A, one), mb.RingReceived(other, members("a", "b", "c")))
    s2, _ = mb.apply(state(B, other), mb.RingReceived(one, members("a", "b", "c")))
    assert s1.ring == s2.ring


def test_a_ring_of_another_q_is_refused_with_a_note() -> None:
    ours = claimed("a", "b")
    alien = ringmod.claim([(A, None), (B, None)], 2 * Q, 2)
    alien = ringmod.Ring(5, alien.q, alien.n, alien.owners, alien.nodes)
    s, effects = mb.apply(state(ring=ours), mb.RingReceived(alien, members("a", "b")))
    assert s.ring is ours
    assert effects == [mb.Note(logging.ERROR, f"ignoring a ring with Q={2 * Q} (ours is {Q})")]


def test_a_member_seen_but_not_in_the_ring_joins_by_rebalance() -> None:
    ours = claimed("a", "b", "c")
    s, effects = mb.apply(state(ring=ours), mb.MembersSeen(members("a", "b", "c", "d")))
    assert s.ring is not None and s.ring.epoch == 2 and D in s.ring.node_ids
    moved = {e.partition for e in of(effects, mb.HintCopies)}  # type: ignore[attr-defined]
    # Every partition a stops replicating goes to its new primaries as hints.
    assert moved == {p for p in range(Q) if A in ringmod.primaries(ours, p)
                     and A not in ringmod.primaries(s.ring, p)}
    assert moved, "a join moves some of a's partitions"
    for e in of(effects, mb.HintCopies):
        assert isinstance(e, mb.HintCopies)
        assert set(e.owners) == (set(ringmod.primaries(s.ring, e.partition))
                                 - set(ringmod.primaries(ours, e.partition)))
    again, effects = mb.apply(s, mb.MembersSeen(members("a", "b", "c", "d")))
    assert again is s and effects == []


def test_remove_makes_the_next_ring_and_retargets_hints_for_the_removed() -> None:
    ours = claimed("a", "b", "c", "d")
    s, effects = mb.apply(state(ring=ours), mb.Remove(D, members("a", "b", "c", "d")))
    assert s.ring is not None and D in s.ring.removed and D not in s.ring.node_ids
    assert mb.RetargetHints(frozenset({D})) in effects
    # The replicas that stay hint each partition d replicated (d hands nothing over).
    lost = {p for p in range(Q) if D in ringmod.primaries(ours, p)
            and A in ringmod.primaries(ours, p)}
    assert {e.partition for e in of(effects, mb.HintCopies)} == lost  # type: ignore[attr-defined]
    assert mb.apply(s, mb.Remove(D, members("a", "b", "c"))) == (s, [])


def test_remove_refuses_a_stranger_and_a_missing_ring() -> None:
    with pytest.raises(UnavailableError, match="not formed"):
        mb.apply(state(), mb.Remove(D, members("a")))
    with pytest.raises(RingError, match="not a member"):
        mb.apply(state(ring=claimed("a", "b", "c")), mb.Remove(D, members("a", "b", "c")))


def test_the_removed_node_itself_announces_it() -> None:
    ours = claimed("a", "b", "c", "d")
    s, effects = mb.apply(state(D, ours), mb.Remove(D, members("a", "b", "c", "d")))
    assert s.ring is not None and mb.Announce(s.ring.epoch, True) in effects


def test_a_removal_lost_to_a_concurrent_change_is_applied_again() -> None:
    base = claimed("a", "b", "c", "d")
    removed, _ = mb.apply(state(ring=base), mb.Remove(D, members("a", "b", "c", "d")))
    assert removed.ring is not None
    # Meanwhile another node's ring (a higher epoch) knows nothing of it.
    theirs = Ring(removed.ring.epoch + 3, Q, 2, base.owners, base.nodes)
    s, effects = mb.apply(removed, mb.RingReceived(theirs, members("a", "b", "c", "d")))
    assert s.ring is not None and D in s.ring.removed and s.ring.epoch > theirs.epoch
    assert sum(isinstance(e, mb.PersistRing) for e in effects) == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["join", "remove", "gossip"]), max_size=8), st.randoms())
def test_removed_ids_only_grow_and_never_come_back(steps: list[str], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    known = ["a", "b", "c"]
    s, _ = mb.apply(state(), mb.Form(members(*known)))
    removed: set[NodeId] = set()
    for i, step in enumerate(steps):
        assert s.ring is not None
        if step == "join":
            known.append(f"n{i}")
            s, _ = mb.apply(s, mb.MembersSeen(members(*known)))
        elif step == "remove":
            alive = [x for x in s.ring.node_ids if x != A]
            if len(s.ring.node_ids) > 2 and alive:
                gone = NodeId(rnd.choice(alive))
                s, _ = mb.apply(s, mb.Remove(gone, members(*known)))
                removed.add(gone)
        else:
            s, _ = mb.apply(s, mb.RingReceived(s.ring, members(*known)))
            s, _ = mb.apply(s, mb.MembersSeen(members(*known)))
        assert s.ring is not None
        assert removed <= s.ring.removed
        assert not s.ring.removed & set(s.ring.node_ids)
