"""Log lines a client can trigger at will are rate-limited, and the lines
held back are counted in the next one written (coordinator/ratelimit.py)."""

from __future__ import annotations

import logging

import pytest

from coordinator.ratelimit import LimitedLog


def test_a_burst_then_the_rate_and_the_held_back_lines_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limited = LimitedLog(logging.getLogger("test.ratelimit"), rate=2.0, burst=3.0,
                         clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.ratelimit"):
        for i in range(10):
            limited.log(logging.WARNING, "AUTH failed from %s", f"client-{i}")
        assert [r.getMessage() for r in caplog.records] == [
            "AUTH failed from client-0", "AUTH failed from client-1", "AUTH failed from client-2"
        ]
        assert limited.held_back == 7
        now[0] = 0.5  # one token back at 2 a second
        limited.log(logging.WARNING, "AUTH failed from %s", "client-10")
        limited.log(logging.WARNING, "AUTH failed from %s", "client-11")
    assert caplog.records[-1].getMessage() == (
        "AUTH failed from client-10 (and 7 similar lines not logged)")
    assert caplog.records[-1].levelno == logging.WARNING
    assert len(caplog.records) == 4 and limited.held_back == 1
