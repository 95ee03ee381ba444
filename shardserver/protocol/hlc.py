"""Hybrid logical clock (Kulkarni et al., as used by CockroachDB).

A timestamp is one unsigned 64-bit int::

    63                         16 15            0
    +----------------------------+---------------+
    |  wall clock, ms since epoch |  logical      |
    +----------------------------+---------------+

so timestamps order by wall time first and by the logical counter among
events in the same millisecond. ``now()`` never returns the same value twice
and never goes backwards, even when the wall clock does (NTP step, VM
migration); ``update()`` moves the clock past a timestamp seen from a peer so
that causally later events get larger timestamps across nodes.

If more than 65535 events land in one millisecond the logical part carries
into the wall part; the value stays monotonic and merely runs a little ahead
of the wall clock, which the next physical tick absorbs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from shardserver.protocol.errors import ClockDriftError

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_HLC = (1 << 64) - 1


def hlc_wall_ms(ts: int) -> int:
    """Wall-clock milliseconds part of an HLC timestamp."""
    return ts >> LOGICAL_BITS


def hlc_logical(ts: int) -> int:
    """Logical counter part of an HLC timestamp."""
    return ts & LOGICAL_MASK


def make_hlc(wall_ms: int, logical: int = 0) -> int:
    if not 0 <= logical <= LOGICAL_MASK:
        raise ValueError(f"logical part out of range: {logical}")
    if wall_ms < 0:
        raise ValueError(f"wall ms must be non-negative: {wall_ms}")
    return (wall_ms << LOGICAL_BITS) | logical


class HLC:
    """Thread-safe hybrid logical clock of one actor.

    ``clock`` returns seconds like ``time.time``; ``offset_ms`` shifts it, so
    tests can simulate skewed nodes without touching the system clock.
    ``max_drift_ms``, when set, makes ``update`` refuse a remote timestamp
    more than that far ahead of our physical time (as CockroachDB's max
    offset): one peer with a clock in the far future, or one forged
    timestamp, would otherwise drag every later timestamp of the cluster
    with it. Since only ``update`` can move the clock past physical time,
    ``now()`` then never runs more than ``max_drift_ms`` ahead of it (plus
    the logical carry of a very busy millisecond).
    """

    __slots__ = ("_clock", "_last", "_lock", "_max_drift_ms", "_offset_ms")

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        offset_ms: int = 0,
        max_drift_ms: int | None = None,
    ) -> None:
        if max_drift_ms is not None and max_drift_ms < 0:
            raise ValueError(f"max_drift_ms must be non-negative: {max_drift_ms}")
        self._clock = clock
        self._offset_ms = offset_ms
        self._max_drift_ms = max_drift_ms
        self._last = 0
        self._lock = threading.Lock()

    def physical_ms(self) -> int:
        return max(0, int(self._clock() * 1000) + self._offset_ms)

    @property
    def max_drift_ms(self) -> int | None:
        return self._max_drift_ms

    def ahead_ms(self, ts: int) -> int:
        """How far the wall part of ``ts`` lies ahead of our physical time
        (negative: behind)."""
        return hlc_wall_ms(ts) - self.physical_ms()

    def lead_ms(self) -> int:
        """How far our own latest timestamp runs ahead of our physical time
        (0 when it does not): what remote timestamps dragged us by."""
        return max(0, self.ahead_ms(self.last()))

    def now(self) -> int:
        """A timestamp greater than every one this clock returned or saw before."""
        physical = self.physical_ms() << LOGICAL_BITS
        with self._lock:
            ts = max(physical, self._last + 1)
            self._last = ts
            return ts

    def update(self, remote: int) -> int:
        """Receive rule: return a timestamp greater than both ``remote`` and ours."""
        if isinstance(remote, bool) or not isinstance(remote, int) or not 0 <= remote < MAX_HLC:
            raise ValueError(f"remote HLC timestamp out of range: {remote!r}")
        physical_ms = self.physical_ms()
        ahead = hlc_wall_ms(remote) - physical_ms
        if self._max_drift_ms is not None and ahead > self._max_drift_ms:
            raise ClockDriftError(ahead, self._max_drift_ms)
        physical = physical_ms << LOGICAL_BITS
        with self._lock:
            ts = max(physical, self._last + 1, remote + 1)
            self._last = ts
            return ts

    def last(self) -> int:
        """The latest timestamp handed out or observed (0 before the first)."""
        with self._lock:
            return self._last
