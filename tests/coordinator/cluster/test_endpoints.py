from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.cluster.endpoints import (
    Endpoint,
    MembershipError,
    MemberStatus,
    changed,
    decode,
    digest,
    encode,
    merge,
    newer_for,
    stale,
)
from coordinator.cluster.ring import NodeId


def ep(node: str, gen: int, ver: int, status: MemberStatus = MemberStatus.UP) -> Endpoint:
    return Endpoint(NodeId(node), gen, ver, status, f"127.0.0.1:{7000 + gen}", "127.0.0.1:1", 1)


endpoints = st.builds(
    ep,
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 3),
    st.integers(0, 5),
    st.sampled_from(list(MemberStatus)),
)
views = st.lists(endpoints, max_size=6).map(lambda eps: merge({}, {e.node: e for e in eps}))


def test_restart_wins_over_any_old_version() -> None:
    old = {NodeId("a"): ep("a", 1, 900)}
    new = {NodeId("a"): ep("a", 2, 0)}
    assert merge(old, new)[NodeId("a")].generation == 2
    assert merge(new, old)[NodeId("a")].generation == 2
    assert changed(old, merge(old, new)) == ["a"]


def test_digest_exchange_sends_only_newer_entries() -> None:
    mine = {NodeId("a"): ep("a", 1, 5), NodeId("b"): ep("b", 1, 2)}
    theirs = {NodeId("a"): ep("a", 1, 7)}
    assert [e.node for e in newer_for(mine, digest(theirs))] == ["b"]
    assert [e.node for e in newer_for(theirs, digest(mine))] == ["a"]


def test_encode_decode_and_garbage() -> None:
    e = ep("a", 3, 4, MemberStatus.LEAVING)
    assert decode(encode(e)) == e
    for bad in (
        None,
        [],
        ["a", 1, 2, "up", "x", "y"],
        ["a", -1, 2, "up", "x", "y", 0],
        ["a", 1, 2, "sleeping", "x", "y", 0],
        ["", 1, 2, "up", "x", "y", 0],
        ["a", 1, 2, "up", "x", "y", 0, 7],
    ):
        with pytest.raises(MembershipError):
            decode(bad)


def test_stale_entries_are_skipped_undecoded_and_garbage_is_never_stale() -> None:
    mine = {NodeId("a"): ep("a", 2, 5)}
    assert stale(encode(ep("a", 2, 5)), mine)
    assert stale(encode(ep("a", 1, 9)), mine)  # an older generation
    assert not stale(encode(ep("a", 2, 6)), mine)
    assert not stale(encode(ep("b", 0, 0)), mine)  # a node we do not know
    for garbage in ([["a"], 2, 5], ["a", "2", 5], ["a", 2, 5.0], ["a", True, 5], "a", []):
        assert not stale(garbage, mine)  # left to decode, which rejects it
    with pytest.raises(MembershipError, match="unknown endpoint status"):
        decode(["a", 1, 1, ["up"], "c", "p", 0])


def test_zone_travels_and_old_seven_field_endpoints_still_decode() -> None:
    zoned = Endpoint(NodeId("a"), 1, 2, MemberStatus.UP, "c:1", "p:1", 3, "rack-2")
    assert decode(encode(zoned)).zone == "rack-2"
    assert decode(encode(zoned)[:7]).zone == ""


@pytest.mark.property
@settings(max_examples=200)
@given(a=views, b=views, c=views)
def test_merge_is_a_semilattice(
    a: dict[NodeId, Endpoint], b: dict[NodeId, Endpoint], c: dict[NodeId, Endpoint]
) -> None:
    # Same (generation, version) with different payloads cannot happen (a node
    # bumps its version for every change), so compare on that key.
    def key(m: dict[NodeId, Endpoint]) -> dict[str, tuple[int, int]]:
        return {n: (e.generation, e.version) for n, e in m.items()}

    assert key(merge(a, b)) == key(merge(b, a))
    assert key(merge(merge(a, b), c)) == key(merge(a, merge(b, c)))
    assert key(merge(a, a)) == key(a)
