"""One mirrored request, from the moment it is sent to ringkv until both
replies are in and judged, or it is abandoned (counted once either way)."""

from __future__ import annotations

from cli.shadow.compare import judge
from cli.shadow.policy import Plan
from cli.shadow.stats import ShadowStats

_MISSING = object()  # a reply not in yet (None is nil)


class Pair:
    __slots__ = ("_primary", "_ringkv", "done", "plan", "t0_ns")

    def __init__(self, plan: Plan, t0_ns: int) -> None:
        self.plan = plan
        self.t0_ns = t0_ns  # when the proxy had read the whole request
        self._primary: object = _MISSING
        self._ringkv: object = _MISSING
        self.done = False

    @property
    def ringkv_pending(self) -> bool:
        return self._ringkv is _MISSING

    def primary_in(self, reply: object, stats: ShadowStats) -> None:
        self._primary = reply
        self._settle(stats)

    def ringkv_in(self, reply: object, us: int, stats: ShadowStats) -> None:
        """ringkv's reply, ``us`` after the request was read."""
        if self.done:
            return  # abandoned meanwhile (its client left): counted then
        stats.ringkv_answered(us)
        self._ringkv = reply
        self._settle(stats)

    def abandon(self, reason: str, stats: ShadowStats) -> None:
        """No comparison for this one (its ringkv reply, if pending, no
        longer counts as pending)."""
        if not self.done:
            self.done = True
            stats.abandon(self.plan, reason, pending=self.ringkv_pending)

    def _settle(self, stats: ShadowStats) -> None:
        if self.done or self._primary is _MISSING or self._ringkv is _MISSING:
            return
        self.done = True
        plan = self.plan
        stats.judged(plan, judge(plan.label, plan.keys, self._primary, self._ringkv),
                     self._primary, self._ringkv)
