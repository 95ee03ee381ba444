"""The clock bound on a replica write from another node, as a pure check
shared by the coordinator that relays peer writes (``coordinator.data.clock``)
and the worker that takes them directly (``shardserver.direct``).

A write's newest timestamp is the greatest of its dot, its context counters
and its floor; one further ahead of the receiver's physical clock than
``max_clock_drift_ms`` would win every last-writer-wins race until the
future arrives, so it is refused before anything is stored (nothing was
acknowledged for it yet).
"""

from __future__ import annotations

from shardserver.protocol.hlc import hlc_wall_ms
from shardserver.protocol.versions import Context, Version

__all__ = ["ahead_ms", "refusal"]


def ahead_ms(version: Version, physical_ms: int) -> int:
    """How far the newest timestamp ``version`` carries lies ahead of
    ``physical_ms`` (negative: behind)."""
    if not version.clock.entries and (version.floor is None or version.floor[0] <= version.hlc):
        newest = version.hlc  # a plain write's: nothing newer than its own dot
    else:
        newest = max(version.hlc, Context(version.clock, version.floor).newest())
    return hlc_wall_ms(newest) - physical_ms


def refusal(version: Version, ahead: int, max_drift_ms: int) -> str:
    """The text a refused write is answered with (BAD_REQUEST)."""
    who = version.actor.decode("utf-8", "replace")
    return (f"write by {who!r} carries a timestamp {ahead} ms ahead of this node's "
            f"clock (max_clock_drift_ms = {max_drift_ms})")
