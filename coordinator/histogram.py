"""Latency histograms kept in plain Python: a list of bucket counts and a
sum per key, bumped with one bisect on the hot path and read at scrape time
(``ops.metrics``), where they become Prometheus histograms. prometheus-client's
Histogram takes a lock and a label lookup per call, about as much as the rest
of a command's bookkeeping."""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

#: Upper bounds in seconds, as Prometheus's ``le`` (then +Inf).
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Series(Generic[K]):
    key: K
    cumulative: tuple[int, ...]  # per bucket of BUCKETS, then +Inf
    sum: float
    created: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]


class Histograms(Generic[K]):
    """One histogram per key."""

    __slots__ = ("_counts", "_created", "_sums")

    def __init__(self) -> None:
        self._counts: dict[K, list[int]] = {}
        self._sums: dict[K, float] = {}
        self._created: dict[K, float] = {}

    def observe(self, key: K, seconds: float) -> None:
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0] * (len(BUCKETS) + 1)
            self._sums[key] = 0.0
            self._created[key] = time.time()
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self._sums[key] += seconds

    def series(self) -> list[Series[K]]:
        """Every key's histogram now. Safe from another thread: each table
        is copied in one step (atomic under the GIL) before it is read."""
        sums, created = dict(self._sums), dict(self._created)
        return [Series(key, tuple(itertools.accumulate(list(counts))), sums.get(key, 0.0),
                       created.get(key, 0.0))
                for key, counts in list(self._counts.items())]


def total(series: list[Series[K]]) -> tuple[int, ...]:
    """The cumulative bucket counts of every series summed (all commands)."""
    out = [0] * (len(BUCKETS) + 1)
    for s in series:
        for i, c in enumerate(s.cumulative):
            out[i] += c
    return tuple(out)


def quantile(q: float, cumulative: tuple[int, ...] | list[int]) -> float | None:
    """The ``q`` quantile of a histogram's cumulative bucket counts, linearly
    interpolated inside its bucket as Prometheus's histogram_quantile does
    (None without observations; the largest finite bound past it)."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    i = bisect.bisect_left(cumulative, rank)
    if i >= len(BUCKETS):
        return BUCKETS[-1]
    low = BUCKETS[i - 1] if i else 0.0
    below = cumulative[i - 1] if i else 0
    inside = cumulative[i] - below
    return low + (BUCKETS[i] - low) * ((rank - below) / inside if inside else 1.0)
