"""Everything the shadow proxy counts, in one owner.

Every request the primary answers on an observed connection is counted
once in ``requests`` and timed. A request the policy mirrors either goes to
ringkv (``mirrored``) or is dropped before it is sent (``dropped``, by
reason: ringkv unreachable, its socket not draining, ``--max-pending``
reached). A mirrored request ends as exactly one of: matched, mismatched,
shadow error, unsupported (ringkv refused an option) or abandoned (by
reason: no ringkv reply within ``--shadow-timeout``, ringkv's connection
lost, the client's connection closed before the primary answered, still
pending when the proxy stopped). So::

    mirrored == matched + mismatched + shadow_errors + refused + abandoned

A dropped or abandoned write, or one whose replies differ, may leave
ringkv behind the primary for its keys; a later mismatch on such a key is
counted as *stale* (also in ``mismatched``) and its sample says so, since
ringkv may never have applied the write.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from cli.bench.histogram import Histogram
from cli.shadow.compare import Outcome, Verdict, show, text_of
from cli.shadow.policy import Action, Plan

#: Keys of dropped writes remembered to tell stale mismatches; past this
#: many the oldest are forgotten (their later mismatches count as plain).
STALE_KEYS_CAP = 100_000


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One mismatch kept as a sample, both replies cut to a bounded length."""

    command: str
    keys: tuple[str, ...]
    primary: str
    ringkv: str
    stale: bool  # a key of it had a mirrored write dropped before


@dataclass(frozen=True, slots=True)
class Interval:
    """What happened since the previous live line."""

    seconds: float
    requests: int
    mirrored: int
    mismatched: int
    dropped: int
    primary: Histogram
    ringkv: Histogram


class ShadowStats:
    """The counters, the latency histograms (µs from the moment the proxy
    read a request to the moment it read the reply, for each side) and the
    first mismatches."""

    def __init__(self, samples: int, reply_chars: int) -> None:
        self._samples_cap = samples
        self._reply_chars = reply_chars
        self.connections = 0
        self.requests = 0
        self.mirrored = 0
        self.matched = 0
        self.pending = 0  # mirrored, ringkv's reply not in yet
        self.stale = 0
        self.mismatched: collections.Counter[str] = collections.Counter()
        self.shadow_errors: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self.unsupported: collections.Counter[str] = collections.Counter()
        self.not_compared: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.abandoned: collections.Counter[str] = collections.Counter()
        self.unobserved: collections.Counter[str] = collections.Counter()
        self.primary_failures: collections.Counter[str] = collections.Counter()
        self.primary = Histogram()
        self.ringkv = Histogram()
        self.samples: list[Mismatch] = []
        self._stale_keys: dict[bytes, None] = {}  # insertion-ordered set
        self._mark = (0, 0, 0, 0)
        self._interval_primary = Histogram()
        self._interval_ringkv = Histogram()

    # -- what the proxy reports ---------------------------------------------

    def primary_answered(self, us: int) -> None:
        self.requests += 1
        self.primary.record(us)
        self._interval_primary.record(us)

    def ringkv_answered(self, us: int) -> None:
        self.pending -= 1
        self.ringkv.record(us)
        self._interval_ringkv.record(us)

    def served_only(self, plan: Plan) -> None:
        """A request the policy does not mirror (counted by its label)."""
        counter = self.not_compared if plan.action is Action.NOT_COMPARED else self.unsupported
        counter[plan.label] += 1

    def sent(self, plan: Plan) -> None:
        self.mirrored += 1
        self.pending += 1
        if plan.write:
            for key in plan.keys:
                self._stale_keys.pop(key, None)

    def drop(self, plan: Plan, reason: str) -> None:
        self.dropped[reason] += 1
        self._uncertain(plan)

    def abandon(self, plan: Plan, reason: str, *, pending: bool) -> None:
        """A mirrored request ends without a comparison; ``pending``:
        ringkv's reply to it was still outstanding."""
        self.abandoned[reason] += 1
        if pending:
            self.pending -= 1
        self._uncertain(plan)

    def _uncertain(self, plan: Plan) -> None:
        """ringkv may have missed this write: its keys' mismatches are stale
        until a later write of them reaches ringkv."""
        if plan.write:
            for key in plan.keys:
                self._stale_keys[key] = None
            while len(self._stale_keys) > STALE_KEYS_CAP:
                del self._stale_keys[next(iter(self._stale_keys))]

    def judged(self, plan: Plan, verdict: Verdict, primary: object, ringkv: object) -> None:
        """Count ``verdict`` on ``plan``'s replies. A write the two judged
        differently (ringkv refused it, failed it, or answered otherwise)
        makes its keys' later mismatches stale."""
        outcome = verdict.outcome
        if outcome is Outcome.MATCH:
            self.matched += 1
            return
        if outcome is Outcome.SHADOW_ERROR:
            self.shadow_errors[verdict.label] += 1
        elif outcome is Outcome.UNSUPPORTED:
            self.refused[verdict.label] += 1
        else:
            stale = any(k in self._stale_keys for k in verdict.keys)
            self.mismatched[verdict.label] += 1
            self.stale += stale
            if len(self.samples) < self._samples_cap:
                limit = self._reply_chars
                self.samples.append(Mismatch(
                    verdict.label, tuple(text_of(k) for k in verdict.keys),
                    show(primary, limit), show(ringkv, limit), stale))
        self._uncertain(plan)

    def interval(self, seconds: float) -> Interval:
        """The figures since the last call, for the live line."""
        now = (self.requests, self.mirrored, sum(self.mismatched.values()),
               sum(self.dropped.values()))
        requests, mirrored, mismatched, dropped = (
            a - b for a, b in zip(now, self._mark, strict=True))
        self._mark = now
        out = Interval(seconds, requests, mirrored, mismatched, dropped,
                       self._interval_primary, self._interval_ringkv)
        self._interval_primary, self._interval_ringkv = Histogram(), Histogram()
        return out
