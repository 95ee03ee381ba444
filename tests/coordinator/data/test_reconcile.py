from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.data import votes
from coordinator.data.reconcile import (
    context_write,
    decode_context,
    get_reply,
    plain_write,
    reconcile,
    unanimous,
    vget_reply,
)
from coordinator.errors import CommandError
from shardserver.protocol import versions
from shardserver.protocol.errors import VersionFormatError
from shardserver.protocol.vclock import ActorId, make_actor

A = make_actor("n1", 1)
B = make_actor("n2", 1)


NOW_MS = 1_700_000_000_000
DRIFT_MS = 60_000


def ctx_write(context: bytes, actor: ActorId, hlc: int, value: bytes | None) -> versions.Version:
    return context_write(decode_context(context, NOW_MS, DRIFT_MS), actor, hlc, value)


def apply(siblings: versions.SiblingSet, v: versions.Version) -> versions.SiblingSet:
    return versions.merge(siblings, v).siblings


def test_two_vsets_with_the_same_context_make_siblings_and_the_merged_context_one() -> None:
    base = apply((), plain_write(A, 100, b"v0"))
    ctx = vget_reply(base)[0]
    s = apply(base, ctx_write(ctx, A, 200, b"x"))
    s = apply(s, ctx_write(ctx, B, 201, b"y"))
    reply = vget_reply(s)
    assert sorted(reply[1:]) == [b"x", b"y"]
    assert get_reply(s) == b"y"  # last writer wins for plain GET meanwhile
    s = apply(s, ctx_write(reply[0], A, 300, b"merged"))
    assert vget_reply(s)[1:] == [b"merged"]


def test_plain_set_after_vget_context_dominates_and_del_hides() -> None:
    s = apply((), plain_write(A, 100, b"a"))
    s = apply(s, plain_write(B, 150, b"b"))
    assert get_reply(s) == b"b"
    s = apply(s, plain_write(A, 160, None))
    assert get_reply(s) is None
    assert vget_reply(s)[1:] == []


def test_reconcile_merges_and_names_stale_replicas() -> None:
    old = apply((), plain_write(A, 100, b"old"))
    new = apply(old, plain_write(B, 200, b"new"))
    result = reconcile({"n1": new, "n2": old, "n3": None}, cap=16)
    assert get_reply(result.merged) == b"new"
    assert result.stale == ("n2", "n3")
    assert reconcile({"n1": None, "n2": None}, cap=16).stale == ()


def test_bad_context_is_a_client_error() -> None:
    with pytest.raises(CommandError, match="ERR invalid context"):
        ctx_write(b"\xff garbage", A, 1, b"v")


def test_a_rotten_copy_is_outvoted_on_read_and_a_tie_stays_visible() -> None:
    good = plain_write(A, 1000 << 16, b"good")
    rotten = versions.Version(good.clock, good.hlc, good.actor, b"r0tten")
    result = reconcile({"n1": (good,), "n2": (rotten,), "n3": (good,)}, 16)
    assert result.merged == (good,)
    assert result.stale == ("n2",)
    tie = reconcile({"n1": (good,), "n2": (rotten,)}, 16)
    assert sorted(v.value for v in tie.merged if v.value) == [b"good", b"r0tten"]


def test_a_vget_context_carries_the_floor_of_the_plain_writes_it_saw() -> None:
    t = NOW_MS << 16
    s = apply((), plain_write(A, t + 5, b"a"))
    assert apply(s, ctx_write(b"", B, t + 1, b"old")) == s  # older than the SET: gone
    s = apply(s, ctx_write(b"", B, t + 9, b"b"))  # newer, saw nothing: a sibling
    assert vget_reply(s)[1:] == [b"a", b"b"]
    ctx = vget_reply(s)[0]
    assert ctx[0] == 2  # context format 2: clock and floor
    assert decode_context(ctx, NOW_MS, DRIFT_MS).floor == (t + 5, A)
    write = ctx_write(ctx, B, t + 2, b"c")  # minted past what it saw
    assert write.hlc > t + 9 and write.floor == (t + 5, A)
    assert apply(s, write) == (write,)
    # A context from before floors still decodes, without one.
    old = versions.encode_context(versions.Context(versions.context_of(s).clock))
    assert old[0] == 1 and decode_context(old, NOW_MS, DRIFT_MS).floor is None


# -- the unanimous fast path ----------------------------------------------------

actors = st.sampled_from([A, B, make_actor("n3", 2)])
any_versions = st.builds(
    versions.Version, clock=st.just(versions.EMPTY), hlc=st.integers(0, 5), actor=actors,
    value=st.one_of(st.none(), st.sampled_from([b"x", b"y", b"z"])),
    floor=st.one_of(st.none(), st.tuples(st.integers(0, 5), actors)),
).map(lambda v: v if v.floor is None or v.floor <= v.lww_key()
      else versions.as_plain(v))  # a floor above the own id is refused on decode


@pytest.mark.property
@settings(max_examples=300)
@given(siblings=st.lists(any_versions, max_size=4), copies=st.integers(1, 3),
       cap=st.integers(1, 4), odd=st.one_of(st.none(), st.lists(any_versions, max_size=3)))
def test_unanimous_agrees_with_reconcile_where_it_answers(
    siblings: list[versions.Version], copies: int, cap: int,
    odd: list[versions.Version] | None,
) -> None:
    """Any bytes a replica may send (unsorted, duplicated, superseded or
    clashing versions, over the cap), the same from every replica or one
    replica different: where the fast path answers, reconcile finds the same
    merged set and no replica to repair."""
    payloads: list[bytes | None] = [versions.encode_siblings(tuple(siblings)) if siblings
                                    else None] * copies
    if odd is not None:
        payloads.append(versions.encode_siblings(tuple(odd)) if odd else None)
    try:
        answers = {f"n{i}": None if p is None else versions.decode_siblings(p)
                   for i, p in enumerate(payloads)}
    except VersionFormatError:  # bytes the decoder refuses (a duplicate version)
        if len(set(payloads)) == 1:
            with pytest.raises(VersionFormatError):
                unanimous(payloads, cap)
        else:
            assert unanimous(payloads, cap) is None
        return
    fast = unanimous(payloads, cap)
    full = reconcile(answers, cap)
    if fast is not None:
        assert fast == full.merged
        assert full.stale == ()
    elif len(set(payloads)) == 1 and full.stale == () and payloads[0] is not None:
        # It may decline only where merging changes the set or copies clash.
        decoded = versions.decode_siblings(payloads[0])
        assert full.merged != decoded or votes.conflicts([decoded])


def test_unanimous_takes_the_common_read_and_declines_the_rest() -> None:
    s = apply((), plain_write(A, 100, b"v"))
    one = versions.encode_siblings(s)
    assert unanimous([one, one], 16) == s
    assert unanimous([None, None], 16) == ()
    other = versions.encode_siblings(apply(s, plain_write(B, 200, b"w")))
    assert unanimous([one, other], 16) is None
    assert unanimous([one, None], 16) is None
