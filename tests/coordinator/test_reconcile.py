from __future__ import annotations

import pytest

from coordinator.errors import CommandError
from coordinator.reconcile import (
    context_write,
    decode_context,
    get_reply,
    plain_write,
    reconcile,
    vget_reply,
)
from shardserver.protocol import versions
from shardserver.protocol.vclock import ActorId, make_actor

A = make_actor("n1", 1)
B = make_actor("n2", 1)


NOW_MS = 1_700_000_000_000
DRIFT_MS = 60_000


def ctx_write(context: bytes, actor: ActorId, hlc: int, value: bytes | None) -> versions.Version:
    return context_write(decode_context(context, NOW_MS, DRIFT_MS), actor, hlc, value)


def apply(siblings: versions.SiblingSet, v: versions.Version, lww: bool) -> versions.SiblingSet:
    fn = versions.apply_lww if lww else versions.merge
    return fn(siblings, v).siblings


def test_two_vsets_with_the_same_context_make_siblings_and_the_merged_context_one() -> None:
    base = apply((), plain_write(A, 100, b"v0"), lww=True)
    ctx = vget_reply(base)[0]
    s = apply(base, ctx_write(ctx, A, 200, b"x"), lww=False)
    s = apply(s, ctx_write(ctx, B, 201, b"y"), lww=False)
    reply = vget_reply(s)
    assert sorted(reply[1:]) == [b"x", b"y"]
    assert get_reply(s) == b"y"  # last writer wins for plain GET meanwhile
    s = apply(s, ctx_write(reply[0], A, 300, b"merged"), lww=False)
    assert vget_reply(s)[1:] == [b"merged"]


def test_plain_set_after_vget_context_dominates_and_del_hides() -> None:
    s = apply((), plain_write(A, 100, b"a"), lww=True)
    s = apply(s, plain_write(B, 150, b"b"), lww=True)
    assert get_reply(s) == b"b"
    s = apply(s, plain_write(A, 160, None), lww=True)
    assert get_reply(s) is None
    assert vget_reply(s)[1:] == []


def test_reconcile_merges_and_names_stale_replicas() -> None:
    old = apply((), plain_write(A, 100, b"old"), lww=True)
    new = apply(old, plain_write(B, 200, b"new"), lww=True)
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
