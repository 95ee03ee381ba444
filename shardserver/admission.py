"""Admission control of a worker: bounded in-flight requests, per connection
and in total, so a flood is answered with OVERLOADED at once instead of
queueing without bound (memory stays bounded, callers never wait long).

Pure bookkeeping (no I/O), used from the event loop thread only.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_INFLIGHT = 4096
DEFAULT_MAX_INFLIGHT_PER_CONN = 1024


@dataclass(slots=True)
class Admission:
    max_total: int = DEFAULT_MAX_INFLIGHT
    max_per_conn: int = DEFAULT_MAX_INFLIGHT_PER_CONN
    inflight: int = 0
    admitted: int = 0
    rejected: int = 0

    def __post_init__(self) -> None:
        if self.max_total < 1 or self.max_per_conn < 1:
            raise ValueError("in-flight caps must be >= 1")

    def try_admit(self, conn: ConnSlots) -> bool:
        if self.inflight >= self.max_total or conn.inflight >= self.max_per_conn:
            self.rejected += 1
            return False
        self.inflight += 1
        conn.inflight += 1
        self.admitted += 1
        return True

    def release(self, conn: ConnSlots) -> None:
        self.inflight -= 1
        conn.inflight -= 1

    def stats(self) -> dict[str, int]:
        return {
            "inflight": self.inflight,
            "max_inflight": self.max_total,
            "max_inflight_per_conn": self.max_per_conn,
            "admitted": self.admitted,
            "rejected_overloaded": self.rejected,
        }


@dataclass(slots=True)
class ConnSlots:
    inflight: int = 0
