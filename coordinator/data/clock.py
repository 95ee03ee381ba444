"""The node's hybrid logical clock and the bound on what may move it.

Every timestamp that enters a node from outside passes here, and none more
than ``max_clock_drift_ms`` ahead of this node's clock is taken in (as
CockroachDB's max offset; DESIGN §4 makes clock counters HLC values, so a
timestamp from the future would win every last-writer-wins race until the
future arrives, and drag every clock that adopts it):

==================  ==========================================  ==============
where it enters     what                                        past the bound
==================  ==========================================  ==============
client (VSET/VDEL)  the context's tag (``contexts.py``: only    refused: ``ERR
                    what a node of this cluster issued for the  invalid context``
                    key), then every counter of it, its floor
replica answers     the newest HLC of what a read merged        not adopted
peer writes         a ``ReplicaWrite``'s dot, context, floor    refused
                                                                (BAD_REQUEST)
gossip              a node's generation (its start time, ms)    entry ignored
hint records        ``since_ms`` read back from disk            reset to now
==================  ==========================================  ==============

Stored data from a replica (read answers, read repair, handoff,
anti-entropy) is never refused: it may be an acknowledged write. Its
timestamps just never move our clock. Each refusal is counted
(:class:`ClockStats`, shown in INFO ``clock`` and Prometheus) and logged at
most once per ``_LOG_EVERY_S`` per kind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.cluster.endpoints import Endpoint
from coordinator.data import reconcile
from coordinator.data.contexts import ContextSeal
from coordinator.errors import CommandError
from shardserver.protocol import drift
from shardserver.protocol.errors import ClockDriftError
from shardserver.protocol.hlc import HLC
from shardserver.protocol.versions import Context, Version

log = logging.getLogger("ringkv.clock")

_LOG_EVERY_S = 10.0


@dataclass(slots=True)
class ClockStats:
    contexts_refused: int = 0  # VSET/VDEL contexts not issued here, malformed or from the future
    peer_timestamps_ignored: int = 0  # replica answers newer than the bound: not adopted
    peer_writes_refused: int = 0  # ReplicaWrites from peers past the bound
    gossip_refused: int = 0  # gossip entries with a generation past the bound
    hints_reset: int = 0  # hint records whose since_ms lay in the future
    #: The furthest ahead of this node's clock any timestamp refused or
    #: ignored was (contexts included); the bound is ``max_clock_drift_ms``.
    max_ahead_ms: int = 0


class Clock:
    """Owns the node's HLC; every outside timestamp goes through its checks."""

    def __init__(
        self, max_drift_ms: int, offset_ms: int = 0,
        wall: Callable[[], float] = time.time, *, secret: bytes = b"",
    ) -> None:
        self.max_drift_ms = max_drift_ms
        self._seal = ContextSeal(secret)
        self.hlc = HLC(wall, offset_ms=offset_ms, max_drift_ms=max_drift_ms)
        self.stats = ClockStats()
        self._wall = wall
        self._logged: dict[str, float] = {}

    def now(self) -> int:
        """The HLC of a new write."""
        return self.hlc.now()

    def lead_ms(self) -> int:
        """How far our HLC runs ahead of our wall clock (0 when it does not)."""
        return self.hlc.lead_ms()

    def saw(self, ts: int, source: str = "a replica") -> None:
        """A timestamp read from a replica: adopted (HLC receive rule)
        unless it lies past the bound, then counted and ignored."""
        try:
            self.hlc.update(ts)
        except ClockDriftError as exc:
            self.stats.peer_timestamps_ignored += 1
            self._note("peer", exc.ahead_ms, f"not adopting a timestamp from {source}")
        except ValueError:  # outside uint64: the codec lets none through
            self.stats.peer_timestamps_ignored += 1

    def issue(self, key: bytes, context: bytes) -> bytes:
        """``context`` (an encoded VGET context of ``key``) as handed to the
        client: sealed, so that only it comes back (``contexts.py``)."""
        return self._seal.seal(key, context)

    def context(self, key: bytes, token: bytes) -> Context:
        """A client's VSET/VDEL context for ``key``: its seal opened
        (``contexts.py``), then checked (``reconcile.decode_context``);
        refusals are counted and raise ``CommandError``. An accepted one is
        adopted: our next timestamp comes after every counter and the floor
        of what its client saw, so a write minted from it outranks all of it
        (``versions.new_version_for_context``, which also mints past them
        should the adoption not happen: a wall clock stepped back meanwhile)."""
        try:
            raw = self._seal.open(key, token)
            ctx = reconcile.decode_context(raw, self.hlc.physical_ms(), self.max_drift_ms)
        except reconcile.ContextAheadError as exc:
            self.stats.contexts_refused += 1
            self._note("context", exc.ahead_ms, "refusing a client context")
            raise
        except CommandError:
            self.stats.contexts_refused += 1
            raise
        newest = ctx.newest()
        if newest:
            self.saw(newest, "a client context")
        return ctx

    def refuse_write(self, version: Version) -> str | None:
        """Why a replica write from a peer coordinator is refused, or None:
        its dot, a context counter or its floor lies past the bound (the
        peer's clock runs ahead, or was dragged). Only new writes are refused this way;
        nothing was acknowledged for them yet."""
        ahead = drift.ahead_ms(version, self.hlc.physical_ms())
        if ahead <= self.max_drift_ms:
            return None
        self.stats.peer_writes_refused += 1
        why = drift.refusal(version, ahead, self.max_drift_ms)
        self._note("write", ahead, why)
        return why

    def endpoint_ok(self, ep: Endpoint) -> bool:
        """Gossip about ``ep.node``: False (counted) when its generation, the
        node's start time by its own wall clock, lies past the bound. Taken
        in, it would outrank every later restart of that node, which would
        then stay down for as long as the generation is ahead."""
        ahead = ep.generation - int(self._wall() * 1000)
        if ahead <= self.max_drift_ms:
            return True
        self.stats.gossip_refused += 1
        self._note("gossip", ahead, f"ignoring gossip about {ep.node}: generation "
                   f"{ep.generation} is {ahead} ms ahead of this node's clock")
        return False

    def hint_since(self, since_ms: int) -> int:
        """``since_ms`` of a hint record read back from disk; one in the
        future (the wall clock was ahead when it was written) restarts from
        now, or the hint would never age."""
        now_ms = int(self._wall() * 1000)
        ahead = since_ms - now_ms
        if ahead <= self.max_drift_ms:
            return since_ms
        self.stats.hints_reset += 1
        self._note("hint", ahead, "a hint record started in the future; its age restarts now")
        return now_ms

    def _note(self, kind: str, ahead_ms: int, message: str) -> None:
        self.stats.max_ahead_ms = max(self.stats.max_ahead_ms, ahead_ms)
        now = time.monotonic()
        if now - self._logged.get(kind, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._logged[kind] = now
            log.warning("clock drift: %s (%d ms ahead, max_clock_drift_ms = %d)",
                        message, ahead_ms, self.max_drift_ms)
