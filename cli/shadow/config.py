"""The settings of one ``ringkv shadow`` run."""

from __future__ import annotations

from dataclasses import dataclass

from cli.bench.conn import ServerAddr


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    listen: ServerAddr
    primary: ServerAddr
    shadow: ServerAddr  # ringkv
    shadow_password: str | None = None
    #: Mirrored requests awaiting ringkv's reply, over all connections;
    #: past it new mirrors are dropped (and counted), never waited for.
    max_pending: int = 10_000
    #: ringkv's reply later than this abandons that connection's pending
    #: mirrors (counted) and reconnects.
    shadow_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    duration_s: float = 0.0  # 0: until SIGINT/SIGTERM
    requests: int = 0  # stop once the primary answered this many; 0: no limit
    interval_s: float = 1.0  # live line period; 0: none
    samples: int = 20  # mismatches kept with both replies
    reply_chars: int = 200  # a kept reply is cut to this many characters
    #: At the end, how long to wait for ringkv's replies still pending.
    grace_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("max_pending", "samples", "reply_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("shadow_timeout_s", "connect_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0")
        for name in ("duration_s", "interval_s", "grace_s", "requests"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
