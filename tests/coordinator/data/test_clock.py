"""The clock bound (coordinator/clock.py, reconcile.decode_context): what a
timestamp from outside may do to the node's HLC, checked without
processes against a fake wall clock (issue 13, done point 5)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest

from coordinator.cluster.endpoints import Endpoint, MemberStatus, encode
from coordinator.cluster.gossip import Gossiper
from coordinator.cluster.ring import NodeId
from coordinator.data.clock import Clock
from coordinator.data.reconcile import context_write, decode_context
from coordinator.errors import CommandError
from coordinator.repair.hints import HintStore
from shardserver.protocol.hlc import hlc_wall_ms, make_hlc
from shardserver.protocol.vclock import MAX_COUNTER, ActorId, VClock, make_actor
from shardserver.protocol.versions import (
    EMPTY_CONTEXT,
    Context,
    VersionId,
    encode_context,
    plain_version,
)

NOW_MS = 1_700_000_000_000
DRIFT_MS = 60_000
ME = make_actor("n1", 7)
OTHER = make_actor("n2", 3)


class Wall:
    """A settable ``time.time``."""

    def __init__(self, ms: int = NOW_MS) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def clock() -> Clock:
    return Clock(DRIFT_MS, wall=Wall())


def ctx(entries: dict[ActorId, int], floor: VersionId | None = None) -> bytes:
    return encode_context(Context(VClock.of(entries), floor))


# --- client contexts (pure) -----------------------------------------------------------


def test_a_context_counter_up_to_the_bound_is_taken_one_ms_past_it_is_refused() -> None:
    edge = make_hlc(NOW_MS + DRIFT_MS, 0xFFFF)
    assert decode_context(ctx({ME: edge}), NOW_MS, DRIFT_MS).clock.get(ME) == edge
    past = make_hlc(NOW_MS + DRIFT_MS + 1)
    want = (r"^ERR invalid context: counter for n2#3 is 60001 ms ahead of this node's clock "
            r"\(max_clock_drift_ms = 60000\)$")
    with pytest.raises(CommandError, match=want):
        decode_context(ctx({ME: edge, OTHER: past}), NOW_MS, DRIFT_MS)


def test_a_floor_from_the_future_is_refused_like_a_counter() -> None:
    """A floor is an HLC too: one past the bound would let the VSET beat
    every plain write until that time (and drag the clock that adopts it)."""
    edge = (make_hlc(NOW_MS + DRIFT_MS, 0xFFFF), OTHER)
    assert decode_context(ctx({ME: 5}, edge), NOW_MS, DRIFT_MS).floor == edge
    want = (r"^ERR invalid context: floor of n2#3 is 60001 ms ahead of this node's clock "
            r"\(max_clock_drift_ms = 60000\)$")
    with pytest.raises(CommandError, match=want):
        decode_context(ctx({ME: 5}, (make_hlc(NOW_MS + DRIFT_MS + 1), OTHER)), NOW_MS, DRIFT_MS)
    with pytest.raises(CommandError, match=r"ERR invalid context: .*no '<node>#<incarnation>'"):
        decode_context(ctx({ME: 5}, (5, ActorId(b"nobody"))), NOW_MS, DRIFT_MS)


def test_ten_years_ahead_and_the_last_uint64_are_refused_as_ahead() -> None:
    ten_years = make_hlc(NOW_MS + 10 * 365 * 86_400_000)
    for counter in (ten_years, MAX_COUNTER):
        with pytest.raises(CommandError, match=r"counter for n1#7 is [0-9]+ ms ahead"):
            decode_context(ctx({ME: counter}), NOW_MS, DRIFT_MS)


def test_no_dot_fits_after_the_last_counter() -> None:
    # Even with a bound that let it through, the write is refused, not overflowed.
    far = decode_context(ctx({ME: MAX_COUNTER}), NOW_MS, MAX_COUNTER)
    with pytest.raises(CommandError, match="ERR invalid context: no dot"):
        context_write(far, ME, make_hlc(NOW_MS), b"v")


def _raw(entries: list[list[object]]) -> bytes:
    body: bytes = msgpack.packb(entries, use_bin_type=True)
    return b"\x01" + body


@pytest.mark.parametrize(("raw", "why"), [
    (_raw([[b"n1#1", -1]]), r"counter -1 out of 1\.\.2\*\*64-1"),
    (_raw([[b"n1#1", 0]]), r"counter 0 out of"),
    (b"\x01\x91\x92\xc4\x04n1#1\xd3" + (-(2**63)).to_bytes(8, "big", signed=True),
     "out of 1..2"),
    (_raw([[b"n1#1", 1.5]]), "counter must be an int"),
    (_raw([[b"n1#1", True]]), "counter must be an int"),
    (_raw([["n1#1", 5]]), "actor must be 1..255 bytes"),
    (_raw([[b"x" * 256, 5]]), "actor must be 1..255 bytes"),
    (_raw([[b"no-incarnation", 5]]), "no '<node>#<incarnation>' form"),
    (_raw([[b"n1#01", 5]]), "bad incarnation"),
    (_raw([[b"n1#1", 5], [b"n1#1", 6]]), "duplicate actor"),
    (_raw([[b"n1#1", 5, 6]]), r"expected \[actor, counter\]"),
    (_raw([[b"a#1", 1]] * 4097), "4097 entries > 4096"),
    (b"\x01" + msgpack.packb({"a": 1}), "expected a list of pairs"),
    (b"\x01\x90\x00", "malformed msgpack"),
    (b"\x01\x91", "malformed msgpack"),
    (b"\x01" + b"\x91" * 5000 + b"\x90", "malformed msgpack"),
    (b"\x03\x90", r"unknown format version 3 \(expected 1 or 2\)"),
    (b"\x02" + msgpack.packb([[]]), r"expected \[clock, floor\]"),
    (b"\x02" + msgpack.packb([[], [1]]), r"floor: expected nil or \[hlc, actor\]"),
    (b"\x02" + msgpack.packb([[], [-1, b"n1#1"]]), "floor: hlc must be a uint64"),
])
def test_malformed_contexts_name_what_is_wrong(raw: bytes, why: str) -> None:
    with pytest.raises(CommandError, match=f"^ERR invalid context: .*{why}"):
        decode_context(raw, NOW_MS, DRIFT_MS)


# --- the node's clock -------------------------------------------------------------------


def test_a_timestamp_past_the_bound_from_a_replica_is_counted_not_adopted() -> None:
    c = clock()
    c.saw(make_hlc(NOW_MS + DRIFT_MS + 5))
    assert c.lead_ms() == 0 and c.stats.peer_timestamps_ignored == 1
    assert c.stats.max_ahead_ms == DRIFT_MS + 5
    assert hlc_wall_ms(c.now()) == NOW_MS
    c.saw(make_hlc(NOW_MS + 500))  # within the bound: the HLC receive rule
    assert hlc_wall_ms(c.now()) == NOW_MS + 500 and c.lead_ms() == 500
    c.saw(MAX_COUNTER)
    assert c.stats.peer_timestamps_ignored == 2


KEY = b"k"


def test_a_context_is_checked_counted_and_then_adopted() -> None:
    c = clock()
    with pytest.raises(CommandError, match="invalid context: counter for n1#7 is"):
        c.context(KEY, c.issue(KEY, ctx({ME: make_hlc(NOW_MS + 10 * DRIFT_MS)})))
    with pytest.raises(CommandError, match="invalid context: context: malformed msgpack"):
        c.context(KEY, c.issue(KEY, b"\x01garbage"))
    assert c.stats.contexts_refused == 2 and c.lead_ms() == 0
    assert c.stats.max_ahead_ms == 10 * DRIFT_MS  # contexts count there too
    seen = make_hlc(NOW_MS + 1000, 3)
    assert c.context(KEY, c.issue(KEY, ctx({OTHER: seen}))).clock.get(OTHER) == seen
    assert c.now() > seen  # our next write comes after what the client saw
    assert c.context(KEY, b"") == EMPTY_CONTEXT
    floor = make_hlc(NOW_MS + 2000, 1)
    sealed = c.issue(KEY, ctx({OTHER: seen}, (floor, OTHER)))
    assert c.context(KEY, sealed).floor == (floor, OTHER)
    assert c.now() > floor  # and after the floor it saw


def test_only_contexts_this_cluster_issued_for_the_key_are_taken() -> None:
    """A forged context within the drift bound used to be adopted: a client
    could drag the HLC forward a bound at a time. Now only sealed ones go."""
    c = Clock(DRIFT_MS, wall=Wall(), secret=b"cluster secret")
    peer = Clock(DRIFT_MS, wall=Wall(), secret=b"cluster secret")
    stranger = Clock(DRIFT_MS, wall=Wall(), secret=b"another cluster")
    near = ctx({ME: make_hlc(NOW_MS + DRIFT_MS - 1)})
    sealed = peer.issue(KEY, near)  # any node of the cluster may have issued it
    forged = [
        near,  # unsealed
        stranger.issue(KEY, near),  # sealed by another cluster
        peer.issue(b"other key", near),  # sealed for another key
        sealed[:-1] + bytes([sealed[-1] ^ 1]),  # tag altered
        ctx({ME: make_hlc(NOW_MS + DRIFT_MS - 2)}) + sealed[len(near):],  # body altered
        sealed[-16:],  # a tag alone
    ]
    for token in forged:
        with pytest.raises(CommandError, match=r"^ERR invalid context: not issued by this "
                                               r"cluster$"):
            c.context(KEY, token)
    assert c.stats.contexts_refused == len(forged) and c.lead_ms() == 0
    assert c.context(KEY, sealed).clock.get(ME) == make_hlc(NOW_MS + DRIFT_MS - 1)


def test_a_context_write_outranks_its_context_even_when_the_clock_lags() -> None:
    """The data path adopts the context before it takes the dot; the dot
    then lies past every counter and the floor, on a node whose own clock
    lags the writer of what the client read by up to the bound."""
    c = clock()
    seen = {OTHER: make_hlc(NOW_MS + DRIFT_MS, 9), ME: make_hlc(NOW_MS - 5)}
    floor = (make_hlc(NOW_MS + DRIFT_MS, 7), OTHER)
    context = c.context(KEY, c.issue(KEY, ctx(seen, floor)))
    write = context_write(context, ME, c.now(), b"v")
    assert write.lww_key() > max((h, a) for a, h in seen.items()) and write.lww_key() > floor
    assert write.floor == floor and write.clock == VClock.of(seen)


def test_a_peer_write_stamped_past_the_bound_is_refused() -> None:
    c = clock()
    assert c.refuse_write(plain_version(OTHER, make_hlc(NOW_MS + DRIFT_MS), b"v")) is None
    ahead = plain_version(OTHER, make_hlc(NOW_MS + DRIFT_MS + 1), b"v")
    why = c.refuse_write(ahead)
    assert why is not None and "60001 ms ahead" in why and "n2#3" in why
    # A context counter from the future is as bad as the dot.
    sneaky = plain_version(OTHER, make_hlc(NOW_MS), b"v")
    sneaky = type(sneaky)(VClock.of({ME: MAX_COUNTER}), sneaky.hlc, OTHER, b"v")
    assert c.refuse_write(sneaky) is not None
    # And so is a floor.
    floored = type(sneaky)(VClock(), sneaky.hlc, OTHER, b"v", (MAX_COUNTER, ME))
    assert c.refuse_write(floored) is not None
    assert c.stats.peer_writes_refused == 3


def test_gossip_with_a_generation_from_the_future_is_ignored() -> None:
    c = clock()
    me = Endpoint(NodeId("n1"), NOW_MS, 1, MemberStatus.UP, "c1", "p1", 1)
    g = Gossiper(me, [], send=_no_send, accept=c.endpoint_ok)
    fine = Endpoint(NodeId("n2"), NOW_MS - 5, 3, MemberStatus.UP, "c2", "p2", 1)
    future = Endpoint(NodeId("n3"), NOW_MS + DRIFT_MS + 1, 1, MemberStatus.UP, "c3", "p3", 1)
    g.receive({"from": "n2", "members": [encode(fine), encode(future)]})
    assert set(g.members) == {"n1", "n2"}
    assert c.stats.gossip_refused == 1
    # A forged newer generation for a known node does not shadow it either.
    forged = Endpoint(NodeId("n2"), NOW_MS + 10 * DRIFT_MS, 0, MemberStatus.UP, "x", "x", 1)
    g.receive({"from": "n3", "members": [encode(forged)]})
    assert g.members[NodeId("n2")] == fine


async def _no_send(addr: str, payload: dict[str, Any]) -> dict[str, Any]:
    raise ConnectionError("no network in this test")


def test_a_hint_record_from_the_future_restarts_its_age(tmp_path: Path) -> None:
    async def write() -> None:
        store = HintStore(str(tmp_path))
        await store.add(1, "n2", NOW_MS - 1000)
        await store.add(2, "n2", NOW_MS + DRIFT_MS + 1)

    asyncio.run(write())
    c = clock()
    store = HintStore(str(tmp_path))
    store.load(c.hint_since)
    assert [h.since_ms for h in store.all()] == [NOW_MS - 1000, NOW_MS]
    assert c.stats.hints_reset == 1
