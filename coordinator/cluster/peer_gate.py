"""Who may sit in the peer handshake, and for how long (DESIGN §13).

A connection to the peer port that has not yet proved the cluster secret
costs a socket and a task while it says nothing. Without a bound of its own,
a few hundred idle sockets fill the peer server and lock out real peers and
operators (``ringkv status``). The :class:`HandshakeGate` keeps those
connections in a small pool of their own, apart from the authenticated ones:

- each pending handshake has one deadline for the whole exchange (1 s by
  default, ``PeerServer.handshake_timeout_s``);
- when the pool is full, a new connection is let in and a pending one is
  dropped at once: the oldest of the source address that holds the most
  pending handshakes. A flood from one address then evicts itself, and a
  real peer, which answers the challenge within a round trip, gets through
  even while idle sockets keep arriving.

Dropping moves the victim's deadline to now, so it leaves through the same
"refused" path as a handshake that timed out, with the reason said.

:class:`LogBudget` keeps refusals from flooding the log: a few lines per
second, then one line saying how many were left out.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["HandshakeGate", "LogBudget", "Ticket"]


class Ticket:
    """One connection in the handshake; ``dropped`` says why it was evicted."""

    __slots__ = ("deadline", "dropped", "host")

    def __init__(self, host: str, deadline: asyncio.Timeout) -> None:
        self.host = host
        self.deadline = deadline
        self.dropped: str | None = None


class HandshakeGate:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the handshake pool needs at least 1 slot, got {limit}")
        self.limit = limit
        self.dropped = 0  # handshakes evicted to make room, since start
        self._pending: dict[Ticket, None] = {}  # insertion order: oldest first

    @property
    def pending(self) -> int:
        return len(self._pending)

    def admit(self, host: str, deadline: asyncio.Timeout) -> Ticket:
        """A slot for a new handshake from ``host`` (an IP address), whose
        ``deadline`` the caller has entered; evicts one when the pool is full."""
        if len(self._pending) >= self.limit:
            self._evict()
        ticket = Ticket(host, deadline)
        self._pending[ticket] = None
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The handshake ended (proved, refused, evicted or failed)."""
        self._pending.pop(ticket, None)

    def _evict(self) -> None:
        busiest, _ = Counter(t.host for t in self._pending).most_common(1)[0]
        victim = next(t for t in self._pending if t.host == busiest)
        del self._pending[victim]
        self.dropped += 1
        victim.dropped = (f"{self.limit} peer handshakes pending, most from {busiest}: "
                          "dropped the oldest")
        if not victim.deadline.expired():  # else it is on its way out already
            victim.deadline.reschedule(asyncio.get_running_loop().time())


class LogBudget:
    """At most ``per_window`` lines per ``window_s``; :meth:`take` says
    whether to log one more, and :meth:`left_out` how many were skipped in
    the window that just closed (once, to be logged by the caller)."""

    def __init__(self, per_window: int = 10, window_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._clock = clock
        self._start = -window_s
        self._used = 0
        self._skipped = 0
        self._report = 0

    def take(self) -> bool:
        now = self._clock()
        if now - self._start >= self.window_s:
            self._report += self._skipped
            self._start, self._used, self._skipped = now, 0, 0
        if self._used < self.per_window:
            self._used += 1
            return True
        self._skipped += 1
        return False

    def left_out(self) -> int:
        n, self._report = self._report, 0
        return n
