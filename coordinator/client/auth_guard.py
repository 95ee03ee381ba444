"""Failed AUTHs counted per source address, across connections.

The per-connection slow-down (``session.AUTH_DELAY_*``) does nothing against
a client that opens a new connection per guess, or many at once. So every
failure also adds 1 to its address's score, which leaks ``LEAK_PER_S`` a
second (``THRESHOLD`` failures within about ``THRESHOLD / LEAK_PER_S``
seconds flag the address). While an address is flagged, each AUTH from it
(through ``AUTH`` or ``HELLO ... AUTH``, right or wrong, on any connection)
is checked only at the address's next free slot, and slots are
``slot_gap_s`` apart (20 ms, doubling with each failure past the
threshold, at most 1 s): however many connections it opens, the address
learns at most one answer per slot. An AUTH whose slot would be more than
``MAX_WAIT_S`` away is not checked at all: it is refused at once (not as a
wrong password, and not counted). A correct AUTH clears the address.

Scores are capped (``MAX_SCORE``), so an address is forgiven within a
minute or so of its last failure, and at most ``MAX_TRACKED`` addresses are
kept: past that, the ones whose score has leaked away go first, then the
oldest.
"""

from __future__ import annotations

from dataclasses import dataclass

THRESHOLD = 10.0
LEAK_PER_S = 1.0
MAX_SCORE = 60.0
SLOT_GAP_BASE_S = 0.02
SLOT_GAP_MAX_S = 1.0
MAX_WAIT_S = 5.0
MAX_TRACKED = 4096


@dataclass(slots=True)
class _Address:
    score: float
    at: float  # when score was last brought up to date
    next_slot: float = 0.0


class AuthGuard:
    def __init__(self) -> None:
        self._addresses: dict[str, _Address] = {}

    def _score(self, entry: _Address, now: float) -> float:
        entry.score = max(0.0, entry.score - (now - entry.at) * LEAK_PER_S)
        entry.at = now
        return entry.score

    def wait_s(self, host: str, now: float) -> float | None:
        """How long an AUTH from ``host`` must wait before it is checked (0:
        at once; a wait reserves the address's next slot), or None when it is
        to be refused unchecked."""
        entry = self._addresses.get(host)
        if entry is None or self._score(entry, now) < THRESHOLD:
            return 0.0
        slot = max(now, entry.next_slot)
        if slot - now > MAX_WAIT_S:
            return None
        gap = min(SLOT_GAP_MAX_S, SLOT_GAP_BASE_S * 2 ** (entry.score - THRESHOLD))
        entry.next_slot = slot + gap
        return slot - now

    def failed(self, host: str, now: float) -> None:
        entry = self._addresses.get(host)
        if entry is None:
            if len(self._addresses) >= MAX_TRACKED:
                self._evict(now)
            self._addresses[host] = _Address(1.0, now)
            return
        entry.score = min(MAX_SCORE, self._score(entry, now) + 1.0)

    def succeeded(self, host: str) -> None:
        self._addresses.pop(host, None)

    def flagged(self, host: str, now: float) -> bool:
        entry = self._addresses.get(host)
        return entry is not None and self._score(entry, now) >= THRESHOLD

    def __len__(self) -> int:
        return len(self._addresses)

    def _evict(self, now: float) -> None:
        addresses = self._addresses
        for host in [h for h, e in addresses.items() if self._score(e, now) == 0.0]:
            del addresses[host]
        while len(addresses) >= MAX_TRACKED:
            del addresses[next(iter(addresses))]  # the oldest entry
