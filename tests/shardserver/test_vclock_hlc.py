"""Vector clocks, actor ids and the hybrid logical clock (client contexts:
test_versions.py)."""

from __future__ import annotations

import threading

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardserver.protocol import vclock
from shardserver.protocol.hlc import (
    HLC,
    ClockDriftError,
    hlc_logical,
    hlc_wall_ms,
    make_hlc,
)
from shardserver.protocol.vclock import (
    EMPTY,
    Order,
    VClock,
    VersionFormatError,
    compare,
    concurrent,
    descends,
    dominates,
    increment,
    make_actor,
    merge,
    parse_actor,
)
from tests.shardserver.strategies import A, B, C, clocks

clocks_st = clocks(6)


# --- actors -------------------------------------------------------------------


def test_actor_round_trip() -> None:
    actor = make_actor("node-1", 7)
    assert actor == b"node-1#7"
    assert parse_actor(actor) == ("node-1", 7)


def test_actor_node_id_may_contain_separator() -> None:
    assert parse_actor(make_actor("x#y", 12)) == ("x#y", 12)


@pytest.mark.parametrize(
    "bad", [b"", b"node", b"#3", b"node#", b"node#x", b"node#03", b"node#-1", b"\xff#1"]
)
def test_parse_actor_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(VersionFormatError):
        parse_actor(bad)


def test_make_actor_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        make_actor("", 0)
    with pytest.raises(ValueError, match="incarnation"):
        make_actor("n", -1)
    with pytest.raises(ValueError, match="too long"):
        make_actor("n" * 300, 0)


def test_new_incarnation_is_a_new_actor() -> None:
    assert make_actor("n", 1) != make_actor("n", 2)


# --- clocks -------------------------------------------------------------------


def test_of_drops_zero_entries_and_sorts() -> None:
    clock = VClock.of({B: 2, A: 1, C: 0})
    assert clock.entries == ((A, 1), (B, 2))
    assert clock.get(C) == 0
    assert clock == VClock.of({A: 1, B: 2})
    assert hash(clock) == hash(VClock.of({A: 1, B: 2}))


def test_constructor_rejects_non_canonical_entries() -> None:
    with pytest.raises(ValueError, match="sorted"):
        VClock(((B, 1), (A, 1)))
    with pytest.raises(ValueError, match=">= 1"):
        VClock(((A, 0),))


def test_compare_cases() -> None:
    a1 = VClock.of({A: 1})
    a2b1 = VClock.of({A: 2, B: 1})
    b1 = VClock.of({B: 1})
    assert compare(a1, a1) is Order.EQUAL
    assert compare(a1, a2b1) is Order.BEFORE
    assert compare(a2b1, a1) is Order.AFTER
    assert compare(a1, b1) is Order.CONCURRENT
    assert compare(EMPTY, a1) is Order.BEFORE
    assert dominates(a2b1, b1)
    assert not dominates(a1, a1)
    assert descends(a1, a1)
    assert concurrent(a1, b1)


def test_increment_uses_hlc_but_stays_strictly_after() -> None:
    clock = VClock.of({A: 100})
    assert increment(clock, A, 500).get(A) == 500
    # A smaller HLC (wall clock went back) still moves the clock forward.
    assert increment(clock, A, 50).get(A) == 101
    assert dominates(increment(clock, B, 1), clock)


@given(clocks_st, clocks_st, clocks_st)
@settings(deadline=None)
@pytest.mark.property
def test_merge_is_a_join(a: VClock, b: VClock, c: VClock) -> None:
    m = merge(a, b)
    assert m == merge(b, a)
    assert merge(m, c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert descends(m, a)
    assert descends(m, b)
    assert vclock.merge_all([a, b, c]) == merge(m, c)


@given(clocks_st, clocks_st)
@settings(deadline=None)
@pytest.mark.property
def test_compare_matches_pointwise_definition(a: VClock, b: VClock) -> None:
    actors = set(a.as_dict()) | set(b.as_dict())
    ge = all(a.get(x) >= b.get(x) for x in actors)
    le = all(a.get(x) <= b.get(x) for x in actors)
    assert descends(a, b) == ge
    assert dominates(a, b) == (ge and a != b)
    assert concurrent(a, b) == (not ge and not le)


@given(clocks_st)
@settings(deadline=None)
@pytest.mark.property
def test_wire_round_trip(clock: VClock) -> None:
    assert vclock.decode(vclock.encode(clock)) == clock
    packed = msgpack.unpackb(msgpack.packb(vclock.encode(clock), use_bin_type=True))
    assert vclock.decode(packed) == clock


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ("x", "list of pairs"),
        ([[A]], r"\[actor, counter\]"),
        ([["a", 1]], "actor"),
        ([[b"", 1]], "actor"),
        ([[A, 0]], "out of"),
        ([[A, -3]], "out of"),
        ([[A, 1 << 64]], "out of"),
        ([[A, True]], "int"),
        ([[A, 1.5]], "int"),
        ([[A, 1], [A, 2]], "duplicate"),
    ],
)
def test_decode_rejects_malformed_clock(obj: object, match: str) -> None:
    with pytest.raises(VersionFormatError, match=match):
        vclock.decode(obj)


def test_decode_accepts_unsorted_and_sorts() -> None:
    assert vclock.decode([[B, 1], [A, 2]]).entries == ((A, 2), (B, 1))


# --- hybrid logical clock ------------------------------------------------------


class FakeClock:
    """Wall clock under the test's control, in seconds like time.time."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_hlc_layout() -> None:
    ts = make_hlc(1234, 5)
    assert hlc_wall_ms(ts) == 1234
    assert hlc_logical(ts) == 5
    with pytest.raises(ValueError):
        make_hlc(1, 1 << 16)


def test_hlc_tracks_wall_clock() -> None:
    clock = FakeClock(1000.0)
    hlc = HLC(clock)
    assert hlc.now() == make_hlc(1_000_000, 0)
    assert hlc.now() == make_hlc(1_000_000, 1)
    clock.t = 1001.0
    assert hlc.now() == make_hlc(1_001_000, 0)


def test_hlc_offset_simulates_skew() -> None:
    hlc = HLC(FakeClock(1000.0), offset_ms=-250)
    assert hlc_wall_ms(hlc.now()) == 999_750


def test_hlc_monotonic_when_wall_clock_goes_back() -> None:
    clock = FakeClock(1000.0)
    hlc = HLC(clock)
    first = hlc.now()
    clock.t = 990.0
    second = hlc.now()
    assert second == first + 1
    assert hlc_wall_ms(second) == 1_000_000


def test_hlc_update_moves_past_remote() -> None:
    hlc = HLC(FakeClock(1000.0))
    remote = make_hlc(1_000_500, 7)
    got = hlc.update(remote)
    assert got == remote + 1
    assert hlc.now() > got
    assert hlc.last() > got


def test_hlc_update_with_older_remote_keeps_local_time() -> None:
    hlc = HLC(FakeClock(1000.0))
    assert hlc.update(make_hlc(5, 0)) == make_hlc(1_000_000, 0)


def test_hlc_update_rejects_bad_and_drifting_remote() -> None:
    hlc = HLC(FakeClock(1000.0), max_drift_ms=500)
    with pytest.raises(ValueError, match="out of range"):
        hlc.update(-1)
    with pytest.raises(ClockDriftError, match="ahead"):
        hlc.update(make_hlc(1_000_501))
    assert hlc.update(make_hlc(1_000_500)) == make_hlc(1_000_500) + 1


def test_hlc_never_runs_further_ahead_than_max_drift() -> None:
    clock = FakeClock(1000.0)
    hlc = HLC(clock, max_drift_ms=500)
    assert hlc.max_drift_ms == 500 and hlc.lead_ms() == 0
    with pytest.raises(ClockDriftError) as refused:
        hlc.update(make_hlc(1_000_000 + 10 * 365 * 86_400_000))
    assert refused.value.ahead_ms == 10 * 365 * 86_400_000
    assert hlc.lead_ms() == 0  # the refused timestamp moved nothing
    hlc.update(make_hlc(1_000_400))
    assert hlc.lead_ms() == 400 and hlc.ahead_ms(make_hlc(1_000_100)) == 100
    clock.t += 1.0  # the wall clock catches up
    assert hlc.lead_ms() == 0 and hlc_wall_ms(hlc.now()) == 1_001_000


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("tick"), st.floats(-5.0, 5.0)),
            st.tuples(st.just("update"), st.integers(0, 2_000_000 << 16)),
        ),
        max_size=60,
    )
)
@settings(deadline=None)
@pytest.mark.property
def test_hlc_strictly_monotonic_under_any_schedule(
    steps: list[tuple[str, float | int]],
) -> None:
    clock = FakeClock(1000.0)
    hlc = HLC(clock)
    last = hlc.now()
    for kind, arg in steps:
        if kind == "tick":
            clock.t = max(0.0, clock.t + float(arg))  # may go backwards
            ts = hlc.now()
        else:
            ts = hlc.update(int(arg))
            assert ts > int(arg)
        assert ts > last
        assert hlc_wall_ms(ts) >= int(clock.t * 1000) or ts == last + 1
        last = ts


def test_hlc_is_thread_safe() -> None:
    hlc = HLC(FakeClock(1000.0))  # frozen wall clock: only the logical part moves
    seen: list[list[int]] = [[] for _ in range(4)]

    def worker(out: list[int]) -> None:
        out.extend(hlc.now() for _ in range(2000))

    threads = [threading.Thread(target=worker, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [ts for out in seen for ts in out]
    assert len(set(flat)) == len(flat)
    for out in seen:
        assert out == sorted(out)
