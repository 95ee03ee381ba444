"""Ring placement: hashing, balance, distinctness, preference lists, rebalancing."""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.cluster import placement, reassign
from coordinator.cluster.ring import (
    NodeId,
    NodeInfo,
    Ring,
    claim,
    conflicts,
    decode_ring,
    encode_ring,
    fallbacks,
    moved_partitions,
    partition_of,
    partitions_of_node,
    preference_list,
    primaries,
    rebalance,
    remove_nodes,
    replicated_partitions,
    zone_shared,
)
from coordinator.errors import RingError

QS = (8, 16, 64, 256)
#: Slack over the new node's share when one node joins: each greedy swap that
#: repairs a conflict costs two moves.
JOIN_SLACK = 2


def names(k: int, start: int = 0) -> list[tuple[str, str | None]]:
    return [(f"node{i:02d}", None) for i in range(start, start + k)]


def window_distinct(owners: tuple[NodeId, ...] | list[int], n: int) -> bool:
    q = len(owners)
    return all(len({owners[(i + d) % q] for d in range(n)}) == n for i in range(q))


def assert_balanced(ring: Ring) -> None:
    counts = Counter(ring.owners)
    k = len(ring.nodes)
    for info in ring.nodes:
        assert counts[info.node_id] in (ring.q // k, -(-ring.q // k)), (info, counts)


# -- partition_of -------------------------------------------------------------


def test_partition_of_known_answers() -> None:
    # Pinned: changing the hash would move every key of every cluster.
    assert [partition_of(k, 64) for k in (b"", b"a", b"foo", b"user:1000")] == [57, 16, 29, 51]
    assert [partition_of(k, 256) for k in (b"", b"a", b"foo", b"user:1000")] == [228, 64, 116, 206]
    assert partition_of(b"anything", 1) == 0


def test_partition_of_is_top_bits_of_blake2b() -> None:
    for key in (b"x", b"\x00\xff" * 9, b"k" * 1024):
        h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
        for bits in range(11):
            assert partition_of(key, 1 << bits) == h >> (64 - bits)


def test_partition_of_doubling_q_splits_in_place() -> None:
    for i in range(200):
        key = f"key{i}".encode()
        assert partition_of(key, 128) // 2 == partition_of(key, 64)


def test_partition_of_is_uniformish() -> None:
    q, keys = 64, 64_000
    counts = Counter(partition_of(f"k{i}".encode(), q) for i in range(keys))
    assert len(counts) == q
    expected = keys / q
    # Chi-square with 63 degrees of freedom: 120 is far beyond the 0.999 quantile (~104).
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 120


@pytest.mark.parametrize("q", [0, 3, 48, -8, 1 << 17])
def test_bad_q_rejected(q: int) -> None:
    with pytest.raises(RingError):
        partition_of(b"k", q)
    with pytest.raises(RingError):
        claim(names(3), q=q, n=2)


# -- claim --------------------------------------------------------------------


def test_achievable_matches_brute_force_on_small_cases() -> None:
    def exists(q: int, k: int, n: int) -> bool:
        big = -(-q // k)
        counts = [big] * (q - (big - 1) * k) + [big - 1] * (k - (q - (big - 1) * k))
        seq: list[int] = []

        def dfs(pos: int) -> bool:
            if pos == q:
                return True
            banned = set(seq[max(0, pos - n + 1) :])
            wrap = n - 1 - (q - 1 - pos)
            if wrap > 0:
                banned |= set(seq[:wrap])
            for s in range(k):
                if counts[s] and s not in banned:
                    counts[s] -= 1
                    seq.append(s)
                    if dfs(pos + 1):
                        return True
                    counts[s] += 1
                    seq.pop()
            return False

        return dfs(0)

    for k in range(2, 7):
        for n in range(2, k + 1):
            for q in range(n, 17):
                assert placement.achievable(q, k, n) == exists(q, k, n), (q, k, n)


@pytest.mark.parametrize("q", QS)
def test_claim_exhaustive_over_supported_range(q: int) -> None:
    for k in range(1, 9):
        for n in range(1, k + 1):
            ring = claim(names(k), q=q, n=n)
            assert_balanced(ring)
            if placement.achievable(q, k, n):
                assert window_distinct(ring.owners, n), (q, k, n)
                assert conflicts(ring) == (0, 0)


def test_balanced_sequence_beyond_supported_range() -> None:
    for k in range(1, 20):
        for n in range(1, k + 1):
            for q in (*range(n, 70), 512, 1024):
                if placement.achievable(q, k, n):
                    assert window_distinct(placement.balanced_sequence(q, k, n), n)


@pytest.mark.property
@settings(max_examples=200)
@given(k=st.integers(1, 8), q=st.sampled_from(QS), data=st.data())
def test_claim_properties(k: int, q: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, k))
    ids = data.draw(st.lists(st.text("abcdef0123", min_size=1, max_size=6), min_size=k,
                             max_size=k, unique=True))
    ring = claim([(i, None) for i in ids], q=q, n=n)
    assert_balanced(ring)
    for p in range(q):
        pref = preference_list(ring, p)
        assert len(pref) == len(set(pref)) == len(set(ring.owners))
        assert pref[0] == ring.owners[p]
        assert primaries(ring, p) + fallbacks(ring, p) == pref
        assert len(set(primaries(ring, p))) == min(n, k)
    if placement.achievable(q, k, n):
        assert window_distinct(ring.owners, n)
        # Node-distinct windows make the primaries exactly the next N owners.
        for p in range(q):
            assert primaries(ring, p) == tuple(ring.owners[(p + d) % q] for d in range(n))
    # One node joins, its id sorting anywhere among the others.
    joiner = data.draw(st.text("abcdef0123", min_size=1, max_size=6).filter(lambda i: i not in ids))
    grown = rebalance(ring, [(i, None) for i in [*ids, joiner]])
    assert_balanced(grown)
    moved = moved_partitions(ring, grown)
    if placement.achievable(q, k, n) and placement.achievable(q, k + 1, n):
        assert window_distinct(grown.owners, n)
        assert len(moved) <= math.ceil(q / (k + 1)) + JOIN_SLACK
        assert {b for _, _, b in moved} <= {joiner}


def test_claim_zone_distinct_when_zones_are_equal_sized() -> None:
    for zones in (2, 3, 4):
        for per in (1, 2, 3):
            nodes = [(f"n{z}{i}", f"zone{z}") for z in range(zones) for i in range(per)]
            for q in QS:
                n = min(3, zones)
                ring = claim(nodes, q=q, n=n)
                assert_balanced(ring)
                zone_of = ring.zones()
                zw = min(n, zones)
                if placement.achievable(q, zones, zw) and placement.achievable(
                    q, zones * per, n
                ):
                    assert conflicts(ring) == (0, 0), (zones, per, q)
                    for p in range(q):
                        assert len({zone_of[o] for o in primaries(ring, p)}) == zw


def test_claim_spreads_unequal_zones_as_far_as_possible() -> None:
    nodes = [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")]
    ring = claim(nodes, q=64, n=3)
    assert_balanced(ring)
    assert conflicts(ring)[0] == 0
    zone_of = ring.zones()
    # Zone a holds half the partitions, so window-3 zone distinctness is
    # impossible; every preference list still spans at least two zones.
    for p in range(64):
        assert len({zone_of[o] for o in primaries(ring, p)}) >= 2


def test_fewer_nodes_than_n() -> None:
    ring = claim(names(2), q=8, n=3)
    assert_balanced(ring)
    for p in range(8):
        assert len(primaries(ring, p)) == 2
        assert fallbacks(ring, p) == ()


def test_more_nodes_than_partitions() -> None:
    ring = claim(names(12), q=8, n=3)
    assert_balanced(ring)
    assert len(set(ring.owners)) == 8
    assert window_distinct(ring.owners, 3)
    idle = [i.node_id for i in ring.nodes if i.node_id not in ring.owners]
    assert len(idle) == 4 and all(partitions_of_node(ring, x) == () for x in idle)


# -- rebalance ----------------------------------------------------------------


@pytest.mark.parametrize("q", QS)
def test_join_moves_about_one_share(q: int) -> None:
    for k in range(1, 8):
        for n in range(1, k + 1):
            ring = claim(names(k), q=q, n=n)
            new = rebalance(ring, names(k + 1))
            assert new.epoch == ring.epoch + 1
            assert_balanced(new)
            moved = moved_partitions(ring, new)
            if placement.achievable(q, k, n) and placement.achievable(q, k + 1, n):
                assert len(moved) <= math.ceil(q / (k + 1)) + JOIN_SLACK, (q, k, n)
                assert window_distinct(new.owners, n), (q, k, n)
                # Every moved partition went to the new node.
                assert {b for _, _, b in moved} <= {NodeId(f"node{k:02d}")}


def minimal_moves(ring: Ring, members: list[tuple[str, str | None]]) -> int:
    """Moves that balance alone forces: every partition a node must gain."""
    counts = Counter(ring.owners)
    ids = [NodeId(m[0]) for m in sorted(members)]
    targets = reassign.targets_for(len(ids), ring.q, [counts[i] for i in ids])
    return sum(max(0, t - counts[i]) for t, i in zip(targets, ids, strict=True))


@pytest.mark.parametrize("q", QS)
def test_leave_moves_about_the_leavers_share(q: int) -> None:
    for k in range(2, 9):
        for n in range(1, k):
            ring = claim(names(k), q=q, n=n)
            leaver = NodeId(f"node{k - 1:02d}")
            new = rebalance(ring, names(k - 1))
            assert_balanced(new)
            assert leaver not in new.owners
            moved = len(moved_partitions(ring, new))
            assert moved >= len(partitions_of_node(ring, leaver))
            if placement.achievable(q, k, n) and placement.achievable(q, k - 1, n):
                assert window_distinct(new.owners, n), (q, k, n)
            if n == 1:
                # No distinctness to keep: exactly the moves balance forces.
                assert moved == minimal_moves(ring, names(k - 1)), (q, k)


def test_replace_moves_exactly_the_old_nodes_partitions() -> None:
    for q in QS:
        for k in range(2, 9):
            n = min(3, k)
            ring = claim(names(k), q=q, n=n)
            swapped = [*names(k - 1), ("fresh", None)]
            new = rebalance(ring, swapped)
            old_share = set(partitions_of_node(ring, NodeId(f"node{k - 1:02d}")))
            assert {p for p, _, _ in moved_partitions(ring, new)} == old_share
            assert set(partitions_of_node(new, NodeId("fresh"))) == old_share


@pytest.mark.property
@settings(max_examples=30)
@given(
    q=st.sampled_from(QS),
    start=st.integers(1, 8),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 100)), max_size=4),
)
def test_join_leave_sequences_stay_balanced(
    q: int, start: int, steps: list[tuple[bool, int]]
) -> None:
    n = min(3, start)
    members = names(start)
    ring = claim(members, q=q, n=n)
    fresh = 100
    for join, pick in steps:
        if join or len(members) == 1:
            members = [*members, (f"node{fresh}", None)]
            fresh += 1
        else:
            members = [m for i, m in enumerate(members) if i != pick % len(members)]
        new = rebalance(ring, members)
        assert_balanced(new)
        assert new.epoch == ring.epoch + 1
        if placement.achievable(q, len(members), n):
            assert window_distinct(new.owners, n)
        ring = new


def test_zones_configured_later_need_an_explicit_reshuffle() -> None:
    ring = claim(names(6), q=64, n=3)
    zoned = [(f"node{i:02d}", f"z{i % 2}") for i in range(6)]
    kept = rebalance(ring, zoned)
    # Local swaps only: never worse for zones, and far from a reshuffle.
    before = conflicts(Ring(epoch=9, q=64, n=3, owners=ring.owners, nodes=kept.nodes))
    assert conflicts(kept)[0] == 0
    assert conflicts(kept)[1] <= before[1]
    assert len(moved_partitions(ring, kept)) <= 2 * before[1]
    reshuffled = rebalance(ring, zoned, reshuffle_for_zones=True)
    assert conflicts(reshuffled) == (0, 0)
    assert_balanced(reshuffled)


def test_remove_takes_a_node_out_for_good() -> None:
    ring = claim(names(5), q=64, n=3)
    gone = NodeId("node02")
    after = remove_nodes(ring, {gone}, [(i.node_id, i.zone) for i in ring.nodes])
    assert after.epoch == ring.epoch + 1
    assert gone not in after.node_ids and after.removed == {gone}
    assert window_distinct(after.owners, 3)
    assert_balanced(after)
    # Every partition the removed node replicated gets a new replica (more may
    # move: see coordinator.cluster.reassign on leaves).
    changed = {p for p in range(64) if primaries(ring, p) != primaries(after, p)}
    assert changed >= set(replicated_partitions(ring, gone))
    # Removed ids are carried forward by later changes, and never come back.
    joined = rebalance(after, [*((i.node_id, i.zone) for i in after.nodes), ("node05", None)])
    assert joined.removed == {gone}
    with pytest.raises(RingError, match="cannot be members again"):
        rebalance(after, names(5))


def test_remove_refused_below_n_nodes() -> None:
    ring = claim(names(3), q=16, n=3)
    with pytest.raises(RingError, match="would leave 2 node"):
        remove_nodes(ring, {NodeId("node00")}, names(3))


def test_rings_without_removed_decode_as_before() -> None:
    data = encode_ring(claim(names(3), q=8, n=2))
    data.pop("removed")
    assert decode_ring(data).removed == frozenset()


def test_rebalance_to_nobody_rejected() -> None:
    with pytest.raises(RingError):
        rebalance(claim(names(3), q=8, n=2), [])


# -- lookups and encoding ------------------------------------------------------


def test_replicated_partitions_cover_n_times() -> None:
    ring = claim(names(5), q=64, n=3)
    total = sum(len(replicated_partitions(ring, i.node_id)) for i in ring.nodes)
    assert total == 64 * 3


def test_encode_decode_round_trip_through_msgpack() -> None:
    first = claim([("a", "z1"), ("b", "z2"), ("c", None)], q=16, n=2)
    second = rebalance(first, [("a", "z1"), ("c", None), ("d", "z2")], removed=["b"])
    for ring in (first, second):
        blob = msgpack.packb(encode_ring(ring))
        back = decode_ring(msgpack.unpackb(blob))
        assert back == ring
        assert back.epoch == ring.epoch
        assert preference_list(back, 3) == preference_list(ring, 3)
        assert back.nodes[0] == NodeInfo(NodeId("a"), "z1")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(v=2),
        lambda d: d.update(q=12),
        lambda d: d.update(epoch=-1),
        lambda d: d.update(epoch=True),
        lambda d: d.update(n=0),
        lambda d: d.update(owners=d["owners"][:-1]),
        lambda d: d["owners"].__setitem__(0, 99),
        lambda d: d["owners"].__setitem__(0, "a"),
        lambda d: d.update(nodes=[["b", None], ["a", None]]),
        lambda d: d.update(nodes=[["a", None], ["a", None]]),
        lambda d: d.update(nodes=[["a", 5], ["b", None]]),
        lambda d: d.update(nodes=[["a"], ["b", None]]),
        lambda d: d.pop("owners"),
        lambda d: d.update(removed="c"),
        lambda d: d.update(removed=[""]),
        lambda d: d.update(removed=["a"]),  # a member cannot be removed too
    ],
)
def test_decode_rejects_malformed(mutate: object) -> None:
    data = encode_ring(claim([("a", None), ("b", None)], q=8, n=2))
    assert callable(mutate)
    mutate(data)
    with pytest.raises(RingError):
        decode_ring(data)


def test_decode_rejects_non_map() -> None:
    with pytest.raises(RingError):
        decode_ring([1, 2, 3])


def test_ring_validates_owners() -> None:
    with pytest.raises(RingError):
        Ring(epoch=1, q=2, n=1, owners=(NodeId("a"), NodeId("x")), nodes=(NodeInfo(NodeId("a")),))
    with pytest.raises(RingError):
        preference_list(claim(names(2), q=8, n=2), 8)


def test_a_rebalance_out_of_time_stops_searching_and_is_still_balanced() -> None:
    """Issue 18.4: the optional searches are bounded by time as well as by
    count; with no time left the ring is still balanced and complete."""
    nodes = [(f"n{i:02d}", f"z{i % 3}") for i in range(40)]
    ring = claim(nodes, 1024, 3)
    stay = [info for info in ring.nodes if info.node_id != "n07"]
    new = remove_nodes(ring, {NodeId("n07")}, stay)  # default budget
    hurried = rebalance(ring, stay, removed={NodeId("n07")}, time_budget_s=0.0)
    for r in (new, hurried):
        counts = Counter(r.owners)
        assert set(counts) == {i.node_id for i in stay}
        assert max(counts.values()) - min(counts.values()) <= 1
        assert "n07" in r.removed and r.epoch == ring.epoch + 1


def test_improve_past_its_deadline_swaps_nothing() -> None:
    owners = [0, 0, 1, 1, 2, 2, 3, 3]
    before = list(owners)
    placement.improve(owners, [0, 1, 2, 3], 3, 0, deadline=time.monotonic() - 1)
    assert owners == before
    placement.improve(owners, [0, 1, 2, 3], 3, 0)
    zones = [0, 1, 2, 3]
    assert placement.cost(owners, zones, 3, 0)[0] < placement.cost(before, zones, 3, 0)[0]


def test_zone_shared_names_the_partitions_a_lost_zone_halves() -> None:
    # Q is a power of two, so 3 zones can never give every window of 3 all
    # three (the cyclic pattern would need 3 | Q); 2 or 4 equal zones can.
    for count, want_shared in ((3, True), (2, False), (4, False)):
        nodes = [(f"n{z}{i}", f"zone{z}") for z in range(count) for i in range(2)]
        for q in (64, 1024):
            ring = claim(nodes, q=q, n=3)
            shared = zone_shared(ring)
            assert bool(shared) == want_shared, (count, q, shared)
            assert len(shared) <= 4, "the placement minimises them"
            zone_of = ring.zones()
            for p in range(ring.q):
                spread = len({zone_of[o] for o in primaries(ring, p)})
                assert (spread < min(3, count)) == (p in shared), (count, q, p)
    assert zone_shared(claim([(f"n{i}", None) for i in range(6)], q=64, n=3)) == ()  # no zones
