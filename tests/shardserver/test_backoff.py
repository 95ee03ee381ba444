"""The one exponential backoff (shardserver/protocol/backoff.py)."""

from __future__ import annotations

from shardserver.protocol.backoff import Backoff


def test_doubles_from_initial_to_max_and_resets() -> None:
    now = [100.0]
    b = Backoff(0.5, 4.0, clock=lambda: now[0])
    assert b.remaining() <= 0
    assert [b.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.remaining() == 4.0
    now[0] += 1.5
    assert b.remaining() == 2.5
    b.succeeded()
    assert b.remaining() <= 0 and b.failed("again") == 0.5 and b.last_error == "again"


def test_hold_waits_its_own_time_and_the_next_failure_is_capped() -> None:
    b = Backoff(0.5, 30.0, clock=lambda: 0.0)
    b.hold(300.0)
    assert b.remaining() == 300.0
    assert b.failed() == 30.0
