"""Which keys this coordinator serves most: a heavy-hitters sketch of reads
and writes apart, over a sliding window, in bounded memory (issue 15).

:class:`SpaceSaving` is Metwally, Agrawal and El Abbadi's Space-Saving
algorithm with its "stream summary": at most ``capacity`` counters, each
counter's keys in a bucket of equal counts, so counting one key costs O(1)
whatever the capacity. A key not tracked takes the place of one with the
least count and inherits that count as its error, so for every tracked key
``count - error <= true count <= count``, and every key whose true count
exceeds ``total / capacity`` is tracked.

:class:`HotKeys` keeps two such sketches (reads, writes) per epoch of
``window_s / 2`` and two epochs: the current one and the one before, so a
rate is over the last half-window to whole window, and a key that stops
being asked for leaves the list within one window. The data path counts
every request (:meth:`HotKeys.read`, :meth:`HotKeys.write`); INFO hotkeys,
the metrics and ``ringkv hotkeys`` render :meth:`HotKeys.top`; the hot-key
cache asks :meth:`HotKeys.is_hot`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass


class SpaceSaving:
    """Approximate counts of the most frequent keys, at most ``capacity``
    counters, O(1) per :meth:`add`."""

    __slots__ = ("_buckets", "_min", "capacity", "counts", "errors", "total")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.counts: dict[bytes, int] = {}
        self.errors: dict[bytes, int] = {}  # over-count each key may carry
        self.total = 0
        # count -> the keys with that count (a dict as an ordered set)
        self._buckets: dict[int, dict[bytes, None]] = {}
        self._min = 0  # the least count held (0: none held)

    def add(self, key: bytes) -> None:
        self.total += 1
        counts, buckets = self.counts, self._buckets
        c = counts.get(key)
        if c is not None:
            self._leave(key, c)
        elif len(counts) < self.capacity:
            c = 0
            self.errors[key] = 0
        else:  # replace a key of the least count; the newcomer inherits it
            c = self._min
            victim = next(iter(buckets[c]))
            self._leave(victim, c)
            del counts[victim], self.errors[victim]
            self.errors[key] = c
        c += 1
        counts[key] = c
        bucket = buckets.get(c)
        if bucket is None:
            bucket = buckets[c] = {}
        bucket[key] = None
        # The only bucket that can have emptied is c - 1, whose key moved to c.
        if c == 1 or self._min not in buckets:
            self._min = c

    def _leave(self, key: bytes, c: int) -> None:
        bucket = self._buckets[c]
        del bucket[key]
        if not bucket:
            del self._buckets[c]

    def guaranteed(self, key: bytes) -> int:
        """A lower bound of ``key``'s true count (0 if not tracked)."""
        c = self.counts.get(key)
        return 0 if c is None else c - self.errors[key]

    def __len__(self) -> int:
        return len(self.counts)


@dataclass(frozen=True, slots=True)
class HotKey:
    """One of the most requested keys, with its rates over the window."""

    key: bytes
    reads_per_s: float
    writes_per_s: float


@dataclass(slots=True)
class _Epoch:
    reads: SpaceSaving
    writes: SpaceSaving
    started: float


class HotKeys:
    """Reads and writes counted per key over a sliding window of about
    ``window_s`` (two epochs), ``capacity`` counters per sketch."""

    def __init__(self, capacity: int = 256, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.epoch_s = window_s / 2
        self._clock = clock
        now = clock()
        self._prev = self._new(now - self.epoch_s)
        self._cur = self._new(now)
        self._rotate_at = now + self.epoch_s

    def _new(self, started: float) -> _Epoch:
        return _Epoch(SpaceSaving(self.capacity), SpaceSaving(self.capacity), started)

    def _epoch(self) -> _Epoch:
        now = self._clock()
        if now >= self._rotate_at:
            if now >= self._rotate_at + self.epoch_s:  # idle for a whole epoch or more
                self._prev = self._new(now - self.epoch_s)
            else:
                self._prev = self._cur
            self._cur = self._new(now)
            self._rotate_at = now + self.epoch_s
        return self._cur

    def read(self, key: bytes) -> None:
        self._epoch().reads.add(key)

    def write(self, key: bytes) -> None:
        self._epoch().writes.add(key)

    def _view(self) -> tuple[_Epoch | None, _Epoch | None, float]:
        """(previous epoch, current epoch, seconds they cover) as of now,
        without rotating: :meth:`top` runs on the metrics scrape thread too,
        so it only reads (one reference at a time, atomic under the GIL)."""
        now = self._clock()
        prev, cur, rotate_at = self._prev, self._cur, self._rotate_at
        if now >= rotate_at + self.epoch_s:
            return None, None, 1.0
        if now >= rotate_at:  # due to rotate: the current epoch is the previous one
            return cur, None, max(now - cur.started, 1e-3)
        return prev, cur, max(now - prev.started, 1e-3)

    def read_rate(self, key: bytes) -> float:
        """Reads of ``key`` per second over the window, at least (the
        sketch's guaranteed count)."""
        prev, cur, span = self._view()
        return sum(e.reads.guaranteed(key) for e in (prev, cur) if e is not None) / span

    def is_hot(self, key: bytes, reads_per_s: float) -> bool:
        return self.read_rate(key) >= reads_per_s

    def top(self, k: int) -> list[HotKey]:
        """The ``k`` keys with the most requests (reads and writes) over the
        window, most first; rates are the sketches' estimates (an upper
        bound, within total / capacity of the truth)."""
        prev, cur, span = self._view()
        totals: dict[bytes, list[int]] = {}
        for epoch in (prev, cur):
            if epoch is None:
                continue
            for i, sketch in enumerate((epoch.reads, epoch.writes)):
                for key, count in list(sketch.counts.items()):  # one step: a copy
                    totals.setdefault(key, [0, 0])[i] += count
        ranked = sorted(totals.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))[:k]
        return [HotKey(key, round(r / span, 1), round(w / span, 1)) for key, (r, w) in ranked]


def printable(key: bytes) -> str:
    """``key`` as text for INFO and logs: printable ASCII as is, except
    ``\\``, ``,``, ``=``, ``:`` and spaces, which INFO's lines use, as
    ``\\xNN`` like every other byte."""
    return "".join(_CHARS[b] for b in key)


def _char(b: int) -> str:
    c = chr(b)
    return c if 0x21 <= b < 0x7F and c not in "\\,=:" else f"\\x{b:02x}"


_CHARS = [_char(b) for b in range(256)]


def top_lines(keys: list[HotKey]) -> Iterator[tuple[str, str]]:
    """INFO hotkeys' ``hotkey_<rank>`` lines."""
    for rank, h in enumerate(keys, 1):
        yield (f"hotkey_{rank}",
               f"key={printable(h.key)},reads_per_s={h.reads_per_s:g},"
               f"writes_per_s={h.writes_per_s:g}")
