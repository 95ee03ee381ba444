from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.cluster.failure_detector import (
    PHI_CAP,
    DetectorSettings,
    PhiAccrualDetector,
    phi_normal,
)


def _steady(
    interval: float, beats: int, settings_: DetectorSettings | None = None
) -> PhiAccrualDetector:
    d = PhiAccrualDetector(settings_)
    for i in range(beats):
        d.heartbeat(i * interval)
    return d


def test_unknown_peer_is_not_suspected() -> None:
    d = PhiAccrualDetector()
    assert d.phi(123.0) == 0.0 and d.is_available(123.0)


def test_regular_peer_is_up_on_time_and_down_after_a_long_silence() -> None:
    d = _steady(1.0, 60)
    last = 59.0
    assert d.phi(last + 1.0) < 1.0
    assert d.is_available(last + 2.0)
    assert not d.is_available(last + 10.0)
    assert d.phi(last + 10.0) >= 8.0


def test_phi_grows_with_silence() -> None:
    d = _steady(1.0, 30)
    values = [d.phi(29.0 + t / 2) for t in range(0, 30)]
    assert values == sorted(values)


def test_jittery_peer_gets_more_slack_than_a_regular_one() -> None:
    regular = _steady(1.0, 100)
    jittery = PhiAccrualDetector()
    t = 0.0
    for i in range(100):
        t += 0.4 if i % 2 else 1.6  # same mean, large variance
        jittery.heartbeat(t)
    # past the mean plus the acceptable pause (1 + 3 s): the regular one is
    # surely down, the jittery one only suspect
    assert jittery.phi(t + 4.5) < regular.phi(99.0 + 4.5)


def test_window_forgets_old_intervals() -> None:
    d = _steady(10.0, 20, DetectorSettings(window=20))
    t = 190.0
    for _ in range(40):  # now beating every second
        t += 1.0
        d.heartbeat(t)
    assert not d.is_available(t + 8.0)


def test_duplicate_heartbeats_carry_no_information() -> None:
    d = _steady(1.0, 20)
    before = d.phi(25.0)
    d.heartbeat(19.0)
    assert d.phi(25.0) == pytest.approx(before)


def test_phi_normal_tail_is_finite_and_capped() -> None:
    assert phi_normal(1e9, 1.0, 0.1) == PHI_CAP
    assert phi_normal(0.0, 1.0, 0.1) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.property
@settings(max_examples=200)
@given(
    intervals=st.lists(st.floats(min_value=0.01, max_value=5.0), min_size=2, max_size=50),
    silence=st.floats(min_value=0.0, max_value=100.0),
)
def test_phi_is_finite_nonnegative_and_monotonic(intervals: list[float], silence: float) -> None:
    d = PhiAccrualDetector()
    t = 0.0
    for dt in intervals:
        t += dt
        d.heartbeat(t)
    a, b = d.phi(t + silence), d.phi(t + silence + 1.0)
    assert 0.0 <= a <= b <= PHI_CAP
