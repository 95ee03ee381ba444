"""Sibling-set merge, LWW writes, tombstone GC and the sibling wire format."""

from __future__ import annotations

import itertools
from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardserver.protocol import vclock
from shardserver.protocol.hlc import make_hlc
from shardserver.protocol.vclock import EMPTY, ActorId, VClock, VersionFormatError
from shardserver.protocol.versions import (
    MergeResult,
    SiblingSet,
    Version,
    apply_lww,
    context_of,
    decode_siblings,
    digest,
    encode_siblings,
    gc_tombstones,
    lww_winner,
    merge,
    merge_sets,
    new_version_for_context,
    supersedes,
    visible_value,
)
from tests.shardserver.strategies import A, B, C, D, actors_st, clocks

BIG_CAP = 1000  # a cap that never binds, for the algebraic properties

clocks_st = clocks(4, max_size=4)
values_st = st.one_of(st.none(), st.binary(max_size=6))
versions_st = st.builds(
    Version, clock=clocks_st, hlc=st.integers(0, 20), actor=actors_st, value=values_st
)


def fold(versions: list[Version] | SiblingSet, cap: int = BIG_CAP) -> SiblingSet:
    result: SiblingSet = ()
    for v in versions:
        result = merge(result, v, cap).siblings
    return result


def maximal(versions: list[Version]) -> set[Version]:
    """Reference model: the distinct versions no other version supersedes."""
    return {v for v in versions if not any(supersedes(w, v) for w in versions)}


def v(clock: dict[ActorId, int], hlc: int, actor: ActorId, value: bytes | None) -> Version:
    return Version(VClock.of(clock), hlc, actor, value)


# --- merge: unit tests ------------------------------------------------------------


def test_descendant_replaces_and_ancestor_is_ignored() -> None:
    old = v({A: 1}, 1, A, b"old")
    new = v({A: 2}, 2, A, b"new")
    assert merge((old,), new) == MergeResult((new,), 0)
    assert merge((new,), old) == MergeResult((new,), 0)


def test_concurrent_versions_become_siblings() -> None:
    x = v({A: 1}, 5, A, b"x")
    y = v({B: 1}, 3, B, b"y")
    result = merge((x,), y)
    assert result.siblings == (y, x)  # canonical order: by (hlc, actor)
    assert lww_winner(result.siblings) == x
    assert visible_value(result.siblings) == b"x"
    # The context covers each sibling's history and its own write (dot).
    assert context_of(result.siblings) == VClock.of({A: 5, B: 3})


def test_two_writes_through_one_coordinator_with_one_context_stay_siblings() -> None:
    """The lost update that clocks with the writer's own entry caused: the
    second VSET's clock {A: 9} covered the first's {A: 7}, so the first
    (acknowledged) write vanished. With dots, neither context saw the
    other's write."""
    seen = context_of((v({}, 3, B, b"base"),))
    first = new_version_for_context(seen, A, 7, b"left")
    second = new_version_for_context(seen, A, 9, b"right")
    both = merge(merge((), first).siblings, second).siblings
    assert sorted(x.value for x in both if x.value) == [b"left", b"right"]
    merged = new_version_for_context(context_of(both), A, 11, b"both")
    assert merge(both, merged).siblings == (merged,)


def test_identical_version_is_deduplicated() -> None:
    x = v({A: 1}, 5, A, b"x")
    assert merge((x,), x).siblings == (x,)


def test_equal_clocks_with_different_payload_are_both_kept() -> None:
    x = v({A: 1}, 5, A, b"x")
    y = v({A: 1}, 5, A, b"y")
    assert merge((x,), y).siblings == (x, y)


def test_context_write_supersedes_exactly_what_was_seen() -> None:
    x = v({A: 10}, 10, A, b"x")
    y = v({B: 11}, 11, B, b"y")
    seen = (x, y)
    write = new_version_for_context(context_of(seen), C, 20, b"z")
    assert merge(seen, write).siblings == (write,)
    # A write made concurrently with the same context is kept next to it.
    other = new_version_for_context(context_of(seen), D, 19, b"w")
    assert merge((write,), other).siblings == (other, write)


def test_tombstone_follows_the_same_rules() -> None:
    x = v({A: 1}, 1, A, b"x")
    dele = new_version_for_context(context_of((x,)), B, 2, None)
    assert dele.is_tombstone
    assert merge((x,), dele).siblings == (dele,)
    assert visible_value((dele,)) is None
    concurrent_del = v({B: 1}, 9, B, None)
    both = merge((x,), concurrent_del).siblings
    assert both == (x, concurrent_del)
    assert visible_value(both) is None  # the tombstone is the newer write
    assert visible_value(()) is None
    assert lww_winner(()) is None


def test_cap_drops_oldest_and_counts() -> None:
    siblings = tuple(v({ActorId(b"n%d" % i): 1}, 100 - i, A, b"%d" % i) for i in range(4))
    incoming = v({ActorId(b"z"): 1}, 50, A, b"z")
    result = merge(fold(siblings), incoming, cap=3)
    assert result.dropped_by_cap == 2
    assert [s.hlc for s in result.siblings] == [98, 99, 100]


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cap"):
        merge((), v({A: 1}, 1, A, b""), cap=0)


# --- merge: properties --------------------------------------------------------


@given(st.lists(versions_st, max_size=8), st.data())
@settings(deadline=None)
@pytest.mark.property
def test_merge_is_order_grouping_and_duplicate_free(
    versions: list[Version], data: st.DataObject
) -> None:
    expected = fold(versions)
    assert set(expected) == maximal(versions)
    assert list(expected) == sorted(expected, key=lambda x: (x.hlc, x.actor))
    # Any order, with repeats.
    shuffled = data.draw(st.permutations(versions + versions[: data.draw(st.integers(0, 3))]))
    assert fold(shuffled) == expected
    # Any grouping: fold random chunks, then merge the partial sets pairwise.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=4)))
    chunks = [shuffled[i:j] for i, j in itertools.pairwise([0, *cuts, len(shuffled)])]
    parts = [fold(c) for c in chunks]
    empty: SiblingSet = ()
    grouped = reduce(lambda a, b: merge_sets(a, b, BIG_CAP).siblings, parts, empty)
    assert grouped == expected
    # Idempotent.
    assert merge_sets(expected, expected, BIG_CAP).siblings == expected


@given(st.lists(versions_st, max_size=8), actors_st, st.integers(0, 30), values_st)
@settings(deadline=None)
@pytest.mark.property
def test_version_descending_from_all_siblings_replaces_them(
    versions: list[Version], actor: ActorId, hlc: int, value: bytes | None
) -> None:
    siblings = fold(versions)
    write = new_version_for_context(context_of(siblings), actor, hlc, value)
    assert merge(siblings, write) == MergeResult((write,), 0)


@given(st.integers(1, 24), st.integers(1, 16), st.data())
@settings(deadline=None)
@pytest.mark.property
def test_concurrent_versions_kept_up_to_cap_then_oldest_dropped(
    n: int, cap: int, data: st.DataObject
) -> None:
    hlcs = data.draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n, unique=True))
    # Each version knows only its own actor: pairwise concurrent.
    versions = [
        v({ActorId(b"n%d" % i): 1}, h, ActorId(b"n%d" % i), data.draw(values_st))
        for i, h in enumerate(hlcs)
    ]
    siblings: SiblingSet = ()
    dropped = 0
    for version in versions:
        result = merge(siblings, version, cap)
        siblings, dropped = result.siblings, dropped + result.dropped_by_cap
    assert len(siblings) == min(n, cap)
    assert dropped == max(0, n - cap)
    # Nothing dominates anything here, so the cap is the only filter and
    # keeping the newest `cap` at every step keeps the newest `cap` overall.
    newest = sorted(versions, key=lambda x: x.lww_key())[-cap:]
    assert set(siblings) == set(newest)


def test_cap_keeps_the_newest_when_arriving_in_order() -> None:
    versions = [v({ActorId(b"n%d" % i): 1}, i, A, None) for i in range(20)]
    result = merge_sets((), tuple(versions), cap=16)
    assert [s.hlc for s in result.siblings] == list(range(4, 20))
    assert result.dropped_by_cap == 4


# --- plain (LWW) writes -----------------------------------------------------------


def plain(actor: ActorId, hlc: int, value: bytes | None) -> Version:
    return new_version_for_context(EMPTY, actor, hlc, value)


def test_plain_set_supersedes_older_siblings_and_absorbs_their_clocks() -> None:
    x = v({A: 10}, 10, A, b"x")
    y = v({B: 11}, 11, B, b"y")
    s = plain(C, 20, b"s")
    result = apply_lww((x, y), s)
    # Its clock absorbs what it replaced (their writes included), not its own dot.
    assert result == MergeResult((Version(VClock.of({A: 10, B: 11}), 20, C, b"s"),), 0)
    # Anti-entropy from a replica that still holds x: x stays superseded.
    assert merge_sets(result.siblings, (x,)).siblings == result.siblings


def test_plain_set_older_than_existing_is_a_no_op() -> None:
    newer = plain(A, 30, b"new")
    older = plain(B, 20, b"old")
    assert apply_lww((newer,), older).siblings == (newer,)


def test_plain_set_is_idempotent_and_respects_causality() -> None:
    s = plain(A, 20, b"s")
    once = apply_lww((), s).siblings
    assert apply_lww(once, s).siblings == once
    # A VSET that saw the SET wins even with a smaller HLC (skewed clock).
    vset = new_version_for_context(context_of(once), B, 5, b"v")
    after = merge(once, vset).siblings
    assert after == (vset,)
    assert apply_lww(after, s).siblings == after


def test_context_after_plain_set_dominates_it() -> None:
    s = plain(A, make_hlc(1000), b"s")
    ctx = context_of(apply_lww((), s).siblings)
    assert vclock.dominates(vclock.increment(ctx, B, make_hlc(999)), s.clock)


def test_plain_del_is_a_tombstone_write() -> None:
    x = v({A: 1}, 1, A, b"x")
    result = apply_lww((x,), plain(B, 2, None))
    assert len(result.siblings) == 1
    assert visible_value(result.siblings) is None


@given(
    st.lists(
        st.tuples(actors_st, st.integers(1, 1000), values_st),
        min_size=1,
        max_size=6,
        unique_by=lambda w: (w[0], w[1]),
    ),
    st.data(),
)
@settings(deadline=None)
@pytest.mark.property
def test_plain_writes_converge_to_the_newest(
    writes: list[tuple[ActorId, int, bytes | None]], data: st.DataObject
) -> None:
    versions = [plain(a, h, val) for a, h, val in writes]
    newest = max(versions, key=lambda x: (x.hlc, x.actor))
    replicas: list[SiblingSet] = []
    for _ in range(3):
        order = data.draw(st.permutations(versions))
        state: SiblingSet = ()
        for version in order:
            state = apply_lww(state, version).siblings
        assert len(state) == 1
        assert visible_value(state) == newest.value
        assert lww_winner(state) is not None
        replicas.append(state)
    # Anti-entropy between replicas keeps the same winner. Replicas absorbed
    # different clocks, so copies of that one write may sit side by side until
    # the next write; nothing older comes back.
    merged: SiblingSet = reduce(lambda a, b: merge_sets(a, b).siblings, replicas)
    assert 1 <= len(merged) <= len(replicas)
    assert {(s.lww_key(), s.value) for s in merged} == {(newest.lww_key(), newest.value)}
    assert merge_sets(merged, replicas[0]).siblings == merged


# --- tombstone GC -----------------------------------------------------------------


def test_gc_drops_only_all_old_tombstones() -> None:
    old_del = v({A: 1}, make_hlc(1000), A, None)
    new_del = v({B: 1}, make_hlc(5000), B, None)
    value = v({C: 1}, make_hlc(1000), C, b"x")
    assert gc_tombstones((old_del,), now_ms=3000, grace_ms=2000) == ()
    assert gc_tombstones((old_del,), now_ms=2999, grace_ms=2000) == (old_del,)
    assert gc_tombstones((old_del, new_del), now_ms=3000, grace_ms=2000) == (old_del, new_del)
    assert gc_tombstones((old_del, value), now_ms=10**6, grace_ms=1) == (old_del, value)
    assert gc_tombstones((), now_ms=0, grace_ms=0) == ()


# --- wire format and digest -------------------------------------------------------


@given(st.lists(versions_st, max_size=8))
@settings(deadline=None)
@pytest.mark.property
def test_encode_decode_round_trip(versions: list[Version]) -> None:
    siblings = fold(versions)
    data = encode_siblings(siblings)
    assert data[0] == 1
    assert decode_siblings(data) == siblings
    assert digest(siblings) == digest(decode_siblings(data))
    assert len(digest(siblings)) == 8


def test_digest_distinguishes_sets_and_ignores_input_order() -> None:
    x = v({A: 1}, 1, A, b"x")
    y = v({B: 1}, 2, B, b"y")
    assert digest((x, y)) == digest((y, x))
    assert digest((x,)) != digest((y,))
    assert digest((x,)) != digest(())


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\x02\x90", "format version"),
        (b"\x01", "malformed"),
        (b"\x01\x90\x90", "malformed"),
        (b"\x01\x80", "expected a list"),
        (b"\x01\x91\x93\x90\x01\xc4\x01a", "expected"),
        (b"\x01\x91\x94\x90\xff\xc4\x01a\xc0", "hlc"),
        (b"\x01\x91\x94\x90\x01\xa1a\xc0", "actor"),
        (b"\x01\x91\x94\x90\x01\xc4\x01a\x05", "value"),
        (b"\x01\x91\x94\x91\x92\xc4\x01a\x00\x01\xc4\x01a\xc0", "clock"),
        (b"\x01\x92\x94\x90\x01\xc4\x01a\xc0\x94\x90\x01\xc4\x01a\xc0", "duplicate"),
    ],
)
def test_decode_rejects_malformed_siblings(data: bytes, match: str) -> None:
    with pytest.raises(VersionFormatError, match=match):
        decode_siblings(data)


@given(st.binary(max_size=80))
@settings(deadline=None, max_examples=200)
@pytest.mark.property
def test_decode_of_random_bytes_fails_cleanly(data: bytes) -> None:
    try:
        siblings = decode_siblings(b"\x01" + data)
    except VersionFormatError:
        return
    assert decode_siblings(encode_siblings(siblings)) == siblings


@given(st.lists(versions_st, min_size=1, max_size=4), st.data())
@settings(deadline=None, max_examples=200)
@pytest.mark.property
def test_decode_of_damaged_encoding_fails_cleanly(
    versions: list[Version], data: st.DataObject
) -> None:
    good = bytearray(encode_siblings(fold(versions)))
    pos = data.draw(st.integers(0, len(good) - 1))
    if data.draw(st.booleans()):
        good[pos] ^= data.draw(st.integers(1, 255))
        damaged = bytes(good)
    else:
        damaged = bytes(good[:pos])
    try:
        siblings = decode_siblings(damaged)
    except VersionFormatError:
        return
    assert all(isinstance(s, Version) for s in siblings)


def test_merge_sets_normalises_improper_input_from_the_wire() -> None:
    x = v({A: 1}, 1, A, b"x")
    newer = v({A: 2}, 2, A, b"newer")
    assert merge_sets((), (x, x)).siblings == (x,)
    assert merge_sets((x, newer), ()).siblings == (newer,)
