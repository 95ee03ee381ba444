"""Sibling-set merge (plain and context writes, one rule), tombstone GC, the
sibling and context wire formats. Realistic histories through every merge
path: tests/property/test_version_histories.py."""

from __future__ import annotations

import itertools
from functools import reduce

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardserver.protocol import vclock
from shardserver.protocol.errors import VersionFormatError
from shardserver.protocol.hlc import make_hlc
from shardserver.protocol.vclock import EMPTY, ActorId, VClock
from shardserver.protocol.versions import (
    EMPTY_CONTEXT,
    Context,
    MergeResult,
    SiblingSet,
    Version,
    VersionId,
    as_plain,
    context_of,
    decode_context,
    decode_siblings,
    digest,
    encode_context,
    encode_siblings,
    gc_tombstones,
    lww_winner,
    merge,
    merge_sets,
    new_version_for_context,
    plain_version,
    supersedes,
    visible_value,
)
from tests.shardserver.strategies import A, B, C, D, actors_st, clocks

BIG_CAP = 1000  # a cap that never binds, for the algebraic properties

clocks_st = clocks(4, max_size=4)
values_st = st.one_of(st.none(), st.binary(max_size=6))
ids_st = st.tuples(st.integers(0, 20), actors_st)
#: Any floor at all, also above the version's own id: supersedes must be a
#: strict partial order even on versions no writer makes.
any_versions_st = st.builds(
    Version, clock=clocks_st, hlc=st.integers(0, 20), actor=actors_st, value=values_st,
    floor=st.none() | ids_st,
)


@st.composite
def stored_versions(draw: st.DrawFn) -> Version:
    """Versions the decoder accepts: a floor, if any, at most the own id."""
    v = draw(st.builds(Version, clock=clocks_st, hlc=st.integers(0, 20), actor=actors_st,
                       value=values_st))
    kind = draw(st.sampled_from(["none", "plain", "below"]))
    if kind == "plain":
        return as_plain(v)
    if kind == "below":
        return Version(v.clock, v.hlc, v.actor, v.value, min(draw(ids_st), v.lww_key()))
    return v


versions_st = stored_versions()


def fold(versions: list[Version] | SiblingSet, cap: int = BIG_CAP) -> SiblingSet:
    result: SiblingSet = ()
    for v in versions:
        result = merge(result, v, cap).siblings
    return result


def maximal(versions: list[Version]) -> set[Version]:
    """Reference model: the distinct versions no other version supersedes."""
    return {v for v in versions if not any(supersedes(w, v) for w in versions)}


def v(clock: dict[ActorId, int], hlc: int, actor: ActorId, value: bytes | None,
      floor: VersionId | None = None) -> Version:
    return Version(VClock.of(clock), hlc, actor, value, floor)


def seen_by(siblings: SiblingSet | list[Version]) -> Context:
    return context_of(tuple(siblings))


# --- the relation -------------------------------------------------------------------


@given(st.lists(any_versions_st, min_size=3, max_size=10))
@settings(deadline=None)
@pytest.mark.property
def test_supersedes_is_a_strict_partial_order_on_any_versions(versions: list[Version]) -> None:
    above = {(i, j) for i, x in enumerate(versions) for j, y in enumerate(versions)
             if supersedes(x, y)}
    for i, j in above:
        assert i != j and (j, i) not in above  # irreflexive, asymmetric
        for k in range(len(versions)):
            if (j, k) in above:
                assert (i, k) in above  # transitive


def test_transitivity_needs_the_floor_condition_on_cover() -> None:
    """The flaw in covering alone: a context entry {B: 101} covers B's plain
    write at 100 that the client never saw (a replica had B's later write,
    not yet that one). Were that enough, x would beat L, L beats z by its
    floor, but x does not beat z: the merge would depend on arrival order
    ({x} one way, {x, z} the other). x must not beat a floor it did not see."""
    c = new_version_for_context(EMPTY_CONTEXT, B, 101, b"c")
    plain = plain_version(B, 100, b"unseen")
    z = v({}, 99, A, b"z")
    x = new_version_for_context(seen_by((c,)), A, 110, b"x")
    assert vclock.descends(x.clock, VClock.of({B: 100}))  # x's context covers L's dot
    assert supersedes(plain, z) and not supersedes(x, z)
    assert not supersedes(x, plain)
    for order in itertools.permutations([plain, z, x]):
        assert fold(list(order)) == (plain, x)


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
    assert context_of(result.siblings) == Context(VClock.of({A: 5, B: 3}), None)


def test_two_writes_through_one_coordinator_with_one_context_stay_siblings() -> None:
    """The lost update that clocks with the writer's own entry caused: the
    second VSET's clock {A: 9} covered the first's {A: 7}, so the first
    (acknowledged) write vanished. With dots, neither context saw the
    other's write."""
    seen = seen_by((v({}, 3, B, b"base"),))
    first = new_version_for_context(seen, A, 7, b"left")
    second = new_version_for_context(seen, A, 9, b"right")
    both = merge(merge((), first).siblings, second).siblings
    assert sorted(x.value for x in both if x.value) == [b"left", b"right"]
    merged = new_version_for_context(context_of(both), A, 11, b"both")
    assert merge(both, merged).siblings == (merged,)


def test_identical_version_is_deduplicated() -> None:
    x = v({A: 1}, 5, A, b"x")
    assert merge((x,), x).siblings == (x,)


def test_one_id_with_different_payload_or_floor_keeps_both() -> None:
    x = v({A: 1}, 5, A, b"x")
    y = v({A: 1}, 5, A, b"y")
    assert merge((x,), y).siblings == (x, y)
    assert merge((x,), as_plain(x)).siblings == (x, as_plain(x))


def test_context_write_supersedes_exactly_what_was_seen() -> None:
    x = v({A: 10}, 10, A, b"x")
    y = v({B: 11}, 11, B, b"y")
    seen = (x, y)
    write = new_version_for_context(context_of(seen), C, 20, b"z")
    assert merge(seen, write).siblings == (write,)
    # A write made concurrently with the same context is kept next to it.
    other = new_version_for_context(context_of(seen), D, 19, b"w")
    assert merge((write,), other).siblings == (other, write)


def test_context_write_is_minted_past_everything_its_context_covers() -> None:
    """Under clock skew the coordinator's HLC may lie behind a counter it
    was shown; the dot still goes past every counter and the floor, or the
    write could not supersede what its client saw."""
    ctx = Context(VClock.of({A: 50, B: 70}), (60, C))
    assert new_version_for_context(ctx, D, 5, b"v").hlc == 71
    assert new_version_for_context(Context(EMPTY, (90, C)), D, 5, b"v").hlc == 91
    assert new_version_for_context(ctx, D, 500, b"v").hlc == 500
    with pytest.raises(VersionFormatError, match="no dot"):
        new_version_for_context(Context(VClock.of({A: (1 << 64) - 1})), D, 5, b"v")


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


def test_merge_sets_normalises_improper_input_from_the_wire() -> None:
    x = v({A: 1}, 1, A, b"x")
    newer = v({A: 2}, 2, A, b"newer")
    assert merge_sets((), (x, x)).siblings == (x,)
    assert merge_sets((x, newer), ()).siblings == (newer,)


# --- plain (last-writer-wins) writes ------------------------------------------------


def test_plain_write_supersedes_every_smaller_id_and_is_stored_as_minted() -> None:
    x = v({A: 10}, 10, A, b"x")
    y = v({B: 11}, 11, B, b"y")
    s = plain_version(C, 20, b"s")
    assert s.clock == EMPTY and s.floor == (20, C)
    assert merge(fold([x, y]), s).siblings == (s,)
    # Any arrival order: the stored copy is the write itself, no clocks absorbed.
    assert fold([s, y, x]) == (s,)


def test_plain_write_older_than_a_sibling_it_cannot_beat_stays_beside_it() -> None:
    newer_vset = new_version_for_context(EMPTY_CONTEXT, A, 30, b"vset")
    older = plain_version(B, 20, b"old")
    both = fold([newer_vset, older])
    assert both == fold([older, newer_vset]) == (older, newer_vset)
    assert visible_value(both) == b"vset"  # GET: the greater id
    newer_plain = plain_version(B, 40, b"new")
    assert merge(both, newer_plain).siblings == (newer_plain,)
    # A plain write with a smaller id than an existing plain write loses.
    assert merge((newer_plain,), older).siblings == (newer_plain,)


def test_plain_write_is_idempotent_and_a_vset_that_saw_it_wins() -> None:
    s = plain_version(A, 20, b"s")
    once = merge((), s).siblings
    assert merge(once, s).siblings == once
    # The VSET is minted past what it saw, so even a coordinator whose HLC
    # lags (5) writes a version that supersedes the SET.
    vset = new_version_for_context(context_of(once), B, 5, b"v")
    assert vset.hlc > s.hlc and vset.floor == s.floor
    after = merge(once, vset).siblings
    assert after == (vset,)
    assert merge(after, s).siblings == after


def test_a_vset_after_a_plain_set_inherits_its_floor() -> None:
    """Through a context write the floor of what its client saw lives on:
    it supersedes what the plain write superseded, also versions the client
    never saw that arrive later (the plain write beat them anyway)."""
    older = v({}, 15, D, b"never seen")
    s = plain_version(A, make_hlc(1000), b"s")
    vset = new_version_for_context(context_of((s,)), B, make_hlc(999), b"v")
    assert vset.floor == s.lww_key()
    assert supersedes(vset, older) and supersedes(s, older)
    assert fold([vset, older]) == (vset,)


def test_plain_del_is_a_tombstone_write() -> None:
    x = v({A: 1}, 1, A, b"x")
    result = merge((x,), plain_version(B, 2, None))
    assert len(result.siblings) == 1
    assert visible_value(result.siblings) is None


def test_as_plain_sets_the_floor_to_the_own_id() -> None:
    x = v({A: 3}, 7, B, b"x")
    assert as_plain(x).floor == (7, B)
    assert as_plain(as_plain(x)) == as_plain(x)
    assert as_plain(plain_version(A, 1, b"p")) == plain_version(A, 1, b"p")


# --- merge: properties --------------------------------------------------------


@given(st.lists(any_versions_st, max_size=8), st.data())
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
def test_version_written_over_all_siblings_replaces_them(
    versions: list[Version], actor: ActorId, hlc: int, value: bytes | None
) -> None:
    siblings = fold(versions)
    write = new_version_for_context(context_of(siblings), actor, hlc, value)
    assert merge(siblings, write) == MergeResult((write,), 0)


@given(st.lists(any_versions_st, max_size=8), actors_st, st.integers(0, 30), values_st)
@settings(deadline=None)
@pytest.mark.property
def test_plain_write_replaces_every_smaller_id(
    versions: list[Version], actor: ActorId, hlc: int, value: bytes | None
) -> None:
    write = plain_version(actor, hlc, value)
    after = merge(fold(versions), write).siblings
    assert all(s.lww_key() >= write.lww_key() for s in after)
    assert write in after or any(supersedes(s, write) for s in after)


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


# --- sibling wire format and digest -------------------------------------------------


@given(st.lists(versions_st, max_size=8))
@settings(deadline=None)
@pytest.mark.property
def test_encode_decode_round_trip(versions: list[Version]) -> None:
    siblings = fold(versions)
    data = encode_siblings(siblings)
    # Format 1 exactly when no version has a floor: one encoding per set.
    assert data[0] == (1 if all(s.floor is None for s in siblings) else 2)
    assert decode_siblings(data) == siblings
    assert digest(siblings) == digest(decode_siblings(data))
    assert len(digest(siblings)) == 8


def test_format_1_from_before_floors_decodes_without_floors() -> None:
    old = b"\x01" + msgpack.packb([[[[A, 4]], 5, A, b"x"]], use_bin_type=True)
    assert decode_siblings(old) == (v({A: 4}, 5, A, b"x"),)
    assert encode_siblings(decode_siblings(old)) == old  # same bytes, same digest


def test_format_2_carries_the_floor() -> None:
    s = plain_version(A, 5, b"s")
    data = encode_siblings((s,))
    assert data == b"\x02" + msgpack.packb([[[], 5, A, b"s", [5, A]]], use_bin_type=True)
    assert decode_siblings(data) == (s,)


def test_digest_distinguishes_sets_and_ignores_input_order() -> None:
    x = v({A: 1}, 1, A, b"x")
    y = v({B: 1}, 2, B, b"y")
    assert digest((x, y)) == digest((y, x))
    assert digest((x,)) != digest((y,))
    assert digest((x,)) != digest(())
    assert digest((x,)) != digest((as_plain(x),))


def _v2(*records: list[object]) -> bytes:
    return b"\x02" + msgpack.packb(list(records), use_bin_type=True)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\x03\x90", "format version"),
        (b"\x01", "malformed"),
        (b"\x01\x90\x90", "malformed"),
        (b"\x01\x80", "expected a list"),
        (b"\x01\x91\x93\x90\x01\xc4\x01a", "expected"),
        (b"\x01\x91\x94\x90\xff\xc4\x01a\xc0", "hlc"),
        (b"\x01\x91\x94\x90\x01\xa1a\xc0", "actor"),
        (b"\x01\x91\x94\x90\x01\xc4\x01a\x05", "value"),
        (b"\x01\x91\x94\x91\x92\xc4\x01a\x00\x01\xc4\x01a\xc0", "clock"),
        (b"\x01\x92\x94\x90\x01\xc4\x01a\xc0\x94\x90\x01\xc4\x01a\xc0", "duplicate"),
        (_v2([[], 1, b"a", b"v"]), r"expected \[clock, hlc, actor, value, floor\]"),
        (_v2([[], 1, b"a", b"v", [1]]), r"floor: expected nil or \[hlc, actor\]"),
        (_v2([[], 1, b"a", b"v", [-1, b"a"]]), "floor: hlc must be a uint64"),
        (_v2([[], 1, b"a", b"v", [1, "a"]]), "floor: actor must be"),
        (_v2([[], 1, b"a", b"v", [1, b"b"]]), "lies above the version's id"),
        (_v2([[], 1, b"a", b"v", [2, b"a"]]), "lies above the version's id"),
        (b"\x01" + msgpack.packb([[[], 1, b"a", b"v", None]]), r"expected \[clock, hlc"),
    ],
)
def test_decode_rejects_malformed_siblings(data: bytes, match: str) -> None:
    with pytest.raises(VersionFormatError, match=match):
        decode_siblings(data)


@given(st.sampled_from([b"\x01", b"\x02"]), st.binary(max_size=80))
@settings(deadline=None, max_examples=200)
@pytest.mark.property
def test_decode_of_random_bytes_fails_cleanly(fmt: bytes, data: bytes) -> None:
    try:
        siblings = decode_siblings(fmt + data)
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


# --- client contexts ----------------------------------------------------------------


contexts_st = st.builds(Context, clock=clocks(6), floor=st.none() | ids_st)


@given(contexts_st)
@settings(deadline=None)
@pytest.mark.property
def test_context_round_trip(ctx: Context) -> None:
    data = encode_context(ctx)
    assert data[0] == (1 if ctx.floor is None else 2)
    assert decode_context(data) == ctx


def test_old_and_empty_contexts_decode_without_a_floor() -> None:
    assert decode_context(b"") == EMPTY_CONTEXT
    old = b"\x01" + msgpack.packb([[A, 7]], use_bin_type=True)  # before floors
    assert decode_context(old) == Context(VClock.of({A: 7}), None)
    assert decode_context(b"\x02" + msgpack.packb([[[A, 7]], None])) == Context(
        VClock.of({A: 7}), None)


def test_context_of_carries_the_greatest_floor() -> None:
    s1, s2 = plain_version(A, 5, b"1"), plain_version(B, 9, b"2")
    vset = new_version_for_context(context_of((s1,)), C, 12, b"3")
    assert context_of((s1, s2, vset)).floor == (9, B)
    assert context_of((v({A: 1}, 2, A, b"x"),)).floor is None
    assert context_of(()) == EMPTY_CONTEXT


@pytest.mark.parametrize(
    "data",
    [b"\x03\x90", b"\x01", b"\x01\xc1", b"\x01\x91\x05", b"\x01\x90\x90", b"\x01\x80",
     b"\x02\x90", b"\x02\x92\x90\x05", b"\x02\x92\x90\x92\xff\xc4\x01a", b"\x02\x91\x90"],
)
def test_decode_context_rejects_garbage(data: bytes) -> None:
    with pytest.raises(VersionFormatError):
        decode_context(data)


@given(st.sampled_from([b"\x01", b"\x02", b""]), st.binary(max_size=64))
@settings(deadline=None, max_examples=200)
@pytest.mark.property
def test_decode_context_of_random_bytes_never_crashes(fmt: bytes, data: bytes) -> None:
    try:
        ctx = decode_context(fmt + data)
    except VersionFormatError:
        return
    assert isinstance(ctx, Context)
    assert decode_context(encode_context(ctx)) == ctx
