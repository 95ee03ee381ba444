"""What one generator process counts, and the records it hands back.

A request is *measured* when its intended send time (closed loop: its send
time) falls inside the measurement window, after the warm-up. Every
measured request ends as exactly one of: ok (a reply that is not an error;
GET's nil counts as ok and as a miss), an error reply (by class, the first
word of the message), dropped (its connection was lost), timeout (sent, not
answered by the end of the window plus the grace period) or unsent (its
connection could not take it before the window closed). So::

    scheduled == ok + sum(errors) + dropped + timeouts + unsent
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from cli.bench.histogram import Histogram


@dataclass(frozen=True, slots=True)
class Tick:
    """One second of one process, for the progress line (all requests,
    warm-up included; latency of ok replies that arrived in that second)."""

    second: int
    sent: int
    ok: int
    errors: int
    in_flight: int
    behind: int  # due (intended time passed) but not yet written
    latency: Histogram


@dataclass(frozen=True, slots=True)
class BenchTotals:
    """What became of the measured requests: of one process at the end of
    its run, or of all of them (:meth:`merge`)."""

    scheduled: int
    sent: int
    ok: int
    misses: int
    errors: dict[str, int]
    dropped: int
    timeouts: int
    unsent: int
    disconnects: dict[str, int]
    latency: Histogram  # µs from intended (or send) time to reply, ok replies only
    lag: Histogram  # µs each measured batch was written after its intended time
    cpu_s: float  # the generator's own CPU time

    @staticmethod
    def merge(outcomes: list[BenchTotals]) -> BenchTotals:
        latency, lag = Histogram(), Histogram()
        errors: collections.Counter[str] = collections.Counter()
        disconnects: collections.Counter[str] = collections.Counter()
        for o in outcomes:
            latency.merge(o.latency)
            lag.merge(o.lag)
            errors.update(o.errors)
            disconnects.update(o.disconnects)

        def total(name: str) -> int:
            return sum(getattr(o, name) for o in outcomes)

        return BenchTotals(
            scheduled=total("scheduled"), sent=total("sent"), ok=total("ok"),
            misses=total("misses"), errors=dict(errors), dropped=total("dropped"),
            timeouts=total("timeouts"), unsent=total("unsent"), disconnects=dict(disconnects),
            latency=latency, lag=lag, cpu_s=sum(o.cpu_s for o in outcomes))


@dataclass(slots=True)
class BenchCounters:
    """The counters of one process, updated by its connections as replies
    arrive; :meth:`tick` takes the per-second view, :meth:`result` the end."""

    scheduled: int = 0
    sent: int = 0
    ok: int = 0
    misses: int = 0
    dropped: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    disconnects: collections.Counter[str] = field(default_factory=collections.Counter)
    latency: Histogram = field(default_factory=Histogram)
    lag: Histogram = field(default_factory=Histogram)
    # since the last tick, measured or not
    _tick_sent: int = 0
    _tick_ok: int = 0
    _tick_errors: int = 0
    _tick_latency: Histogram = field(default_factory=Histogram)

    def on_scheduled(self, n: int) -> None:
        self.scheduled += n

    def on_sent(self, n: int, lag_ns: int, measured: bool) -> None:
        self._tick_sent += n
        if measured:
            self.sent += n
            self.lag.record(lag_ns // 1000)  # early (negative) counts as 0

    def on_ok(self, us: int, measured: bool, miss: bool) -> None:
        self._tick_ok += 1
        self._tick_latency.record(us)
        if measured:
            self.ok += 1
            self.latency.record(us)
            if miss:
                self.misses += 1

    def on_error(self, message: str, measured: bool) -> None:
        self._tick_errors += 1
        if measured:
            self.errors[message.split(" ", 1)[0] or "(empty)"] += 1

    def on_disconnect(self, reason: str, measured_in_flight: int) -> None:
        self.disconnects[reason] += 1
        self.dropped += measured_in_flight

    def tick(self, second: int, in_flight: int, behind: int) -> Tick:
        t = Tick(second, self._tick_sent, self._tick_ok, self._tick_errors, in_flight, behind,
                 self._tick_latency)
        self._tick_sent = self._tick_ok = self._tick_errors = 0
        self._tick_latency = Histogram()
        return t

    def result(self, timeouts: int, unsent: int, cpu_s: float) -> BenchTotals:
        return BenchTotals(self.scheduled, self.sent, self.ok, self.misses, dict(self.errors),
                       self.dropped, timeouts, unsent, dict(self.disconnects),
                       self.latency, self.lag, cpu_s)
