"""Phi-accrual failure detection (Hayashibara et al.; as in Cassandra and Akka).

Instead of a fixed timeout, each peer's heartbeat inter-arrival times are
kept in a sliding window, and the detector answers "how surprised would we
be that nothing arrived for this long?" as

    phi = -log10(1 - F(elapsed))

where F is the normal distribution fitted to the window (mean, standard
deviation, with floors so a very regular peer is not declared dead after one
late beat). phi = 1 means a 10 % chance of being wrong in calling the peer
down, phi = 8 (our default threshold, DESIGN §9) about 10^-8.

Pure: callers pass the time in; nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

DEFAULT_THRESHOLD = 8.0
PHI_CAP = 1000.0  # phi for "effectively certain"; keeps JSON and logs finite


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    threshold: float = DEFAULT_THRESHOLD
    window: int = 1000
    min_std_dev_s: float = 0.1
    # Extra slack for GC pauses and scheduling hiccups, added to the mean.
    # 3 s, as Akka's cluster default: with 0.5 s a loaded 2-core machine
    # marked healthy peers down (2 s without news of them happens).
    acceptable_pause_s: float = 3.0
    # Assumed interval before enough heartbeats arrived to estimate one.
    first_interval_s: float = 1.0


class PhiAccrualDetector:
    """Liveness of one peer. ``heartbeat(now)`` on every gossip message from
    it; ``phi(now)`` and ``is_available(now)`` to ask."""

    __slots__ = ("_intervals", "_last", "_settings", "_sum", "_sum_sq")

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self._settings = settings or DetectorSettings()
        self._intervals: deque[float] = deque()
        self._sum = 0.0
        self._sum_sq = 0.0
        self._last: float | None = None

    def heartbeat(self, now: float) -> None:
        last = self._last
        self._last = now
        if last is None:
            # Seed with a guess so phi is meaningful from the second beat on.
            first = self._settings.first_interval_s
            self._add(first)
            self._add(first + self._settings.min_std_dev_s)
            return
        interval = now - last
        if interval <= 0:
            return  # duplicate or reordered delivery: no information
        self._add(interval)

    def _add(self, interval: float) -> None:
        self._intervals.append(interval)
        self._sum += interval
        self._sum_sq += interval * interval
        if len(self._intervals) > self._settings.window:
            old = self._intervals.popleft()
            self._sum -= old
            self._sum_sq -= old * old

    def phi(self, now: float) -> float:
        """Suspicion level; 0 before the first heartbeat."""
        if self._last is None:
            return 0.0
        n = len(self._intervals)
        mean = self._sum / n
        variance = max(0.0, self._sum_sq / n - mean * mean)
        std = max(math.sqrt(variance), self._settings.min_std_dev_s)
        mean += self._settings.acceptable_pause_s
        return phi_normal(now - self._last, mean, std)

    def is_available(self, now: float) -> bool:
        return self.phi(now) < self._settings.threshold


def phi_normal(elapsed: float, mean: float, std: float) -> float:
    """-log10 of the probability that a heartbeat comes later than ``elapsed``
    under N(mean, std). Uses the complementary error function directly, which
    stays accurate far into the tail where 1 - cdf would round to 0."""
    z = (elapsed - mean) / (std * math.sqrt(2.0))
    p_later = 0.5 * math.erfc(z)
    if p_later <= 0.0:
        return PHI_CAP
    return min(PHI_CAP, max(0.0, -math.log10(p_later)))
