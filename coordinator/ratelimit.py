"""Rate limits: a token bucket, and log lines a client cannot turn into a flood.

A client that sends garbage or guesses passwords must show up in the node's
log with its address, but 40,000 wrong passwords a second must not become
40,000 log lines: :class:`LimitedLog` lets a burst through, then a steady
trickle, and says how many lines it held back in the next one it writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._at = burst, clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class LimitedLog:
    """At most ``rate`` lines a second (after a burst of ``burst``) to ``log``."""

    def __init__(self, log: logging.Logger, rate: float = 10.0, burst: float = 20.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._bucket = TokenBucket(rate, burst, clock)
        self.held_back = 0  # lines not written since the last one that was

    def log(self, level: int, message: str, *args: object) -> None:
        if not self._bucket.take():
            self.held_back += 1
            return
        if self.held_back:
            message += " (and %d similar lines not logged)"
            args += (self.held_back,)
            self.held_back = 0
        self._log.log(level, message, *args)
