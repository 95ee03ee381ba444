"""The shard layer's merge operator (shardserver.join): the fast path gives
the bytes the general join gives, the operator is the join of
``versions.merge_sets`` in any grouping, bad stored data never makes it
raise, and only versions that decode back become operands."""

from __future__ import annotations

import pickle
from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardserver.join import OPERATOR_NAME, SiblingSetJoin, check_version, fast_join, operand
from shardserver.protocol.errors import VersionFormatError
from shardserver.protocol.vclock import EMPTY, ActorId, VClock
from shardserver.protocol.versions import (
    SiblingSet,
    Version,
    decode_siblings,
    encode_siblings,
    merge_sets,
    plain_version,
)
from tests.shardserver.strategies import actors_st, clocks

BIG_CAP = 1000
HLC0 = 1 << 40

hlcs_st = st.integers(HLC0, HLC0 + 12)
values_st = st.none() | st.sampled_from([b"", b"a", b"b", b"x" * 300])


@st.composite
def versions_st(draw: st.DrawFn) -> Version:
    """Plain writes, context writes (with or without a floor) and versions
    from before floors, with ids that often collide."""
    kind = draw(st.sampled_from(["plain", "plain", "context", "old"]))
    actor, hlc, value = draw(actors_st), draw(hlcs_st), draw(values_st)
    if kind == "plain":
        return plain_version(actor, hlc, value)
    clock = draw(clocks(HLC0 + 12, max_size=3))
    if kind == "old":
        return Version(clock, hlc, actor, value)
    floor = draw(st.none() | st.tuples(st.integers(HLC0, hlc), actors_st))
    if floor is not None and floor > (hlc, actor):
        floor = (hlc, actor)
    return Version(clock, hlc, actor, value, floor)


def as_set(vs: list[Version]) -> SiblingSet:
    return merge_sets((), tuple(vs), BIG_CAP).siblings


sets_st = st.lists(versions_st(), max_size=4).map(as_set)


def general(a: bytes, b: bytes) -> bytes:
    return encode_siblings(merge_sets(decode_siblings(a), decode_siblings(b), BIG_CAP).siblings)


@given(sets_st, sets_st)
def test_the_fast_path_gives_the_bytes_of_the_general_join(a: SiblingSet, b: SiblingSet) -> None:
    ea, eb = encode_siblings(a), encode_siblings(b)
    fast = fast_join(ea, eb)
    if fast is not None:
        assert fast == general(ea, eb)
    assert SiblingSetJoin(BIG_CAP).partial_merge(b"k", ea, eb) == general(ea, eb)


@given(versions_st(), versions_st())
def test_two_writes_the_fast_path_decides_whenever_one_is_plain_and_newer(
    x: Version, y: Version
) -> None:
    ex, ey = encode_siblings((x,)), encode_siblings((y,))
    fast = fast_join(ex, ey)
    def plain(v: Version) -> bool:
        return v.floor == v.lww_key() and not v.clock

    if plain(x) and plain(y) and x.lww_key() != y.lww_key():
        assert fast is not None
    if fast is not None:
        assert fast == general(ex, ey)


def test_the_fast_path_returns_the_winner_unchanged() -> None:
    old = encode_siblings((plain_version(ActorId(b"n2#1"), HLC0, b"old"),))
    new = encode_siblings((plain_version(ActorId(b"n1#1"), HLC0 + 1, b"new"),))
    siblings = encode_siblings(as_set([Version(VClock.of({ActorId(b"a#0"): HLC0}), HLC0 - 5,
                                                ActorId(b"a#0"), b"s"),
                                        Version(EMPTY, HLC0, ActorId(b"b#0"), None)]))
    for a, b in ((old, new), (new, old), (siblings, new), (new, siblings)):
        assert fast_join(a, b) is new
    assert fast_join(new, new) is new
    twin = encode_siblings((plain_version(ActorId(b"n1#1"), HLC0 + 1, b"twin"),))
    assert fast_join(new, twin) is None  # one id, two values: both stay (general path)


@given(st.lists(sets_st, min_size=1, max_size=5), st.data())
def test_the_operator_is_the_join_in_any_grouping(sets: list[SiblingSet],
                                                   data: st.DataObject) -> None:
    join = SiblingSetJoin(BIG_CAP)
    encoded = [encode_siblings(s) for s in sets]
    empty: SiblingSet = ()
    expected = encode_siblings(reduce(lambda a, b: merge_sets(a, b, BIG_CAP).siblings, sets,
                                      empty))
    assert join.full_merge(b"k", None, encoded) == expected
    assert join.full_merge(b"k", encoded[0], encoded[1:] or [encoded[0]]) == expected
    order = data.draw(st.permutations(encoded))
    assert reduce(lambda a, b: join.partial_merge(b"k", a, b), order) == expected


def test_an_undecodable_stored_set_is_left_out_and_counted() -> None:
    join = SiblingSetJoin()
    write = operand(plain_version(ActorId(b"n1#1"), HLC0, b"v"))
    for garbage in (b"\x09junk", b"\x01\xc1", b"\x02\x91\x94\x90\x01\xc4\x00\xc0"):
        assert join.full_merge(b"k", garbage, [write]) == write
    assert join.counters["join_undecodable"] == 3
    assert join.full_merge(b"k", b"\x09junk", [b"\x09more junk"]) == b"\x09more junk"


def test_the_operator_pickles_for_the_compaction_child() -> None:
    join = SiblingSetJoin(7)
    copy = pickle.loads(pickle.dumps(join))
    assert copy.cap == 7 and copy.name == OPERATOR_NAME


@given(versions_st())
def test_an_operand_decodes_back_to_its_version(v: Version) -> None:
    assert decode_siblings(operand(v)) == (v,)


@pytest.mark.parametrize("bad", [
    Version(EMPTY, -1, ActorId(b"a#0"), b"v"),
    Version(EMPTY, 1 << 64, ActorId(b"a#0"), b"v"),
    Version(EMPTY, True, ActorId(b"a#0"), b"v"),
    Version(EMPTY, 5, ActorId(b""), b"v"),
    Version(EMPTY, 5, ActorId(b"a" * 256), b"v"),
    Version(EMPTY, 5, ActorId(b"a#0"), "text"),  # type: ignore[arg-type]
    Version(EMPTY, 5, ActorId(b"a#0"), b"v", (6, ActorId(b"a#0"))),  # floor above its id
    Version(VClock(((ActorId(b"a" * 300), 1),)), 5, ActorId(b"a#0"), b"v"),
    Version(VClock(((ActorId(b"a#0"), 1 << 64),)), 5, ActorId(b"a#0"), b"v"),
])
def test_a_version_that_would_not_decode_back_is_refused(bad: Version) -> None:
    with pytest.raises(VersionFormatError):
        check_version(bad)
