"""A log-linear latency histogram in whole microseconds, in the manner of
HdrHistogram: two significant digits from 1 µs to 60 s in 2,533 counters,
mergeable, with percentiles that never under-report (values above 60 s
count in the last bucket).

Bucket layout (``SUB`` = 128)::

    index 0 .. 255      one microsecond each (exact below 256 µs)
    index 256 + 128*(e-1) + (m-128)
                        values v with v >> e == m, 128 <= m < 256, e >= 1:
                        [m << e, (m+1) << e), width 2**e

so a bucket is never wider than 1/128 of its lower bound (< 0.8 %). Values
above 60 s go to the last bucket; the exact maximum is kept beside the
counts. A percentile is the highest value of the bucket that holds it,
capped at the maximum seen (HdrHistogram's "highest equivalent value"): it
may be up to 0.8 % above the true value, never below.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

SUB = 128
#: Values at or below this many microseconds are counted exactly (one per
#: bucket); above it a bucket spans 1/SUB of a power of two.
LINEAR = 2 * SUB
HIGHEST_US = 60_000_000
_EMPTY_MIN = 1 << 62


def bucket_of(us: int) -> int:
    """The index of the bucket holding ``us`` (clamped to 0 .. last)."""
    if us < LINEAR:
        return max(us, 0)
    us = min(us, HIGHEST_US)
    shift = us.bit_length() - 8  # us >> shift lies in [128, 256)
    return LINEAR + SUB * (shift - 1) + (us >> shift) - SUB


def bucket_range(index: int) -> tuple[int, int]:
    """The lowest and highest value (µs, inclusive) that land in ``index``."""
    if index < LINEAR:
        return index, index
    shift, m = divmod(index - LINEAR, SUB)
    shift += 1
    m += SUB
    return m << shift, ((m + 1) << shift) - 1


BUCKETS = bucket_of(HIGHEST_US) + 1


class Histogram:
    """Counts of latencies in µs; ``record`` is the hot call."""

    __slots__ = ("_min", "counts", "max_us", "sum_us", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total = 0
        self.sum_us = 0
        self.max_us = 0
        self._min = _EMPTY_MIN

    @property
    def min_us(self) -> int:
        return 0 if self.total == 0 else self._min

    def record(self, us: int) -> None:
        # Called two or three times per request: one index, no lookups
        # of the bucket layout below 256 µs.
        if us < LINEAR:
            us = max(us, 0)
            self.counts[us] += 1
        else:
            self.counts[bucket_of(us)] += 1
        self.total += 1
        self.sum_us += us
        self.max_us = max(self.max_us, us)
        self._min = min(self._min, us)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to this one."""
        if other.total == 0:
            return
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self._min = min(self._min, other._min)
        self.max_us = max(self.max_us, other.max_us)
        self.total += other.total
        self.sum_us += other.sum_us

    def percentile(self, pct: float) -> int:
        """The value at ``pct`` (0..100) in µs: the smallest recorded value
        with at least pct % of all values at or below it, rounded up to its
        bucket's highest value and capped at the maximum. 0 if empty."""
        if not 0.0 <= pct <= 100.0:
            raise ValueError(f"percentile {pct} is not within 0..100")
        if self.total == 0:
            return 0
        rank = max(1, math.ceil(pct / 100.0 * self.total))
        if rank == self.total:
            return self.max_us
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(bucket_range(i)[1], self.max_us)
        return self.max_us

    def mean_us(self) -> float:
        return self.sum_us / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, object]:
        """A JSON-able form: only the non-zero buckets, keyed by index."""
        return {"unit": "us", "sub_buckets": SUB, "total": self.total, "sum": self.sum_us,
                "min": self.min_us, "max": self.max_us,
                "counts": {str(i): n for i, n in enumerate(self.counts) if n}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, object]) -> Histogram:
        """The inverse of :meth:`to_dict`; ValueError on a layout or count
        that does not fit."""
        if doc.get("unit") != "us" or doc.get("sub_buckets") != SUB:
            raise ValueError("histogram layout differs (unit µs, 128 sub-buckets expected)")
        h = cls()
        counts = doc.get("counts")
        if not isinstance(counts, Mapping):
            raise ValueError("histogram has no counts")
        for key, n in counts.items():
            i = int(key)
            if not 0 <= i < BUCKETS or not isinstance(n, int) or n < 0:
                raise ValueError(f"histogram bucket {key}={n!r} out of range")
            h.counts[i] = n
        fields = [doc.get(k) for k in ("total", "sum", "min", "max")]
        ints = [v for v in fields if isinstance(v, int)]
        if len(ints) != len(fields):
            raise ValueError("histogram total, sum, min or max missing")
        h.total, h.sum_us, min_us, h.max_us = ints
        h._min = min_us if h.total else _EMPTY_MIN
        if h.total != sum(h.counts):
            raise ValueError(f"histogram total {h.total} != sum of its counts {sum(h.counts)}")
        return h


def of(values: Iterable[int]) -> Histogram:
    """A histogram of ``values`` (for tests and one-off use)."""
    h = Histogram()
    for v in values:
        h.record(v)
    return h
