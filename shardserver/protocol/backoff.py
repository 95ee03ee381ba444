"""Exponential backoff: the delay before the next try after failures,
doubling from ``initial_s`` up to ``max_s``, reset by a success.

One helper for the coordinator (peer reconnects, handoff retries) and the
shard server (worker restarts); it lives in ``shardserver.protocol`` because
that is the one package both may import. The engine (``lsm``) may import
neither, so it keeps its own retry delays (``lsm/jobs.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    def __init__(self, initial_s: float, max_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.delay = 0.0  # the last delay handed out; 0 after a success
        self.until = 0.0  # when the next try may go (``clock`` time)
        self.last_error = ""
        self._clock = clock

    def failed(self, error: str = "") -> float:
        """A try failed: the delay before the next one (``initial_s`` after
        a success, then twice the last, at most ``max_s``)."""
        self.delay = min(self.max_s, max(self.initial_s, self.delay * 2))
        self.until = self._clock() + self.delay
        self.last_error = error
        return self.delay

    def hold(self, seconds: float, error: str = "") -> None:
        """Wait ``seconds`` before the next try, whatever the doubling says;
        the next failure doubles from there (capped)."""
        self.delay = seconds
        self.until = self._clock() + seconds
        self.last_error = error

    def succeeded(self) -> None:
        self.delay, self.until = 0.0, 0.0

    reset = succeeded  # news that the next try is worth making now

    def remaining(self) -> float:
        """Seconds until the next try may go (<= 0: now)."""
        return self.until - self._clock()
