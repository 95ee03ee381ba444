"""The last minutes of request rate and latency, for the status page: every
``SAMPLE_S`` the request counters' totals are sampled into a ring buffer of
``SAMPLES`` entries; the rate and the p50/p99 of an interval come from the
difference of two samples (histogram buckets subtract)."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass

from coordinator.histogram import Histograms, quantile, total

SAMPLE_S = 10.0
SAMPLES = 37  # six minutes of intervals


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.time()
    cumulative: tuple[int, ...]  # all commands' buckets summed, cumulative


@dataclass(frozen=True, slots=True)
class Interval:
    end: float
    rate: float  # commands per second
    p50: float | None  # seconds
    p99: float | None


class Recent:
    def __init__(self, latency: Histograms[tuple[str, str]]) -> None:
        self._latency = latency
        self._samples: deque[Sample] = deque(maxlen=SAMPLES)
        self._stop = threading.Event()

    def sample(self) -> None:
        self._samples.append(Sample(time.time(), total(self._latency.series())))

    def intervals(self) -> list[Interval]:
        """Oldest first, one per pair of consecutive samples."""
        samples = list(self._samples)
        out = []
        for a, b in itertools.pairwise(samples):
            diff = [y - x for x, y in zip(a.cumulative, b.cumulative, strict=True)]
            dt = max(b.at - a.at, 1e-9)
            out.append(Interval(b.at, diff[-1] / dt, quantile(0.5, diff), quantile(0.99, diff)))
        return out

    def run(self) -> None:
        """Sample every SAMPLE_S until :meth:`stop` (a daemon thread's loop)."""
        self.sample()
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
