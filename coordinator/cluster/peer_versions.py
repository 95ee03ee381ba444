"""Which peer protocol two nodes speak: each says the range it knows, the
highest version both know wins (pure; ``peer`` and ``peer_server`` carry it).

=====  ======================================================================
  3    the handshake proves the secret both ways, then every frame is sealed
       (``shardserver.protocol.session``); the first version negotiation runs over
  4    gossip endpoints carry the node's peer protocol and software release
       (``endpoints.encode``); sent only to peers that negotiated 4
  5    ``hello``'s answer says how many workers the node runs, and a
       connection may end its talk with the node by ``attach {"worker": k}``:
       the node hands it to worker k, which serves the peer's replica reads
       and writes itself from then on (``data.direct``, ``shardserver.direct``)
=====  ======================================================================

The negotiation runs inside the sealed session, as its first request
(``hello``), so a man in the middle can neither read a range differently to
each side nor force a lower version: it cannot alter a sealed frame. And 3 is
the floor for good: 2 had no seal, and a node that fell back to it would let
such a relay inject frames. A peer that answers ``hello`` with "unknown op"
is a release from before the negotiation, which speaks exactly 3.

``[cluster] max_peer_protocol`` holds a node back at an older maximum
(for a rolling upgrade in two steps, and for tests of a mixed cluster).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

from coordinator.config import ConfigError

#: The oldest and newest peer protocol this build speaks.
PEER_PROTOCOL_MIN = 3
PEER_PROTOCOL_MAX = 5
#: The first version with direct-to-worker connections (``attach``).
DIRECT = 5


def _release() -> str:
    try:
        return importlib.metadata.version("ringkv")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


#: This build's software version, as gossip and INFO show it.
RELEASE = _release()


class PeerVersionError(ConnectionError):
    """The two nodes share no peer protocol version; names both ranges."""


@dataclass(frozen=True, slots=True)
class VersionRange:
    lo: int
    hi: int

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}..{self.hi}"

    def to_wire(self) -> list[int]:
        return [self.lo, self.hi]

    @classmethod
    def from_wire(cls, raw: object) -> VersionRange:
        if (not isinstance(raw, list) or len(raw) != 2
                or not all(type(v) is int and 0 < v < 1 << 16 for v in raw) or raw[0] > raw[1]):
            raise PeerVersionError(f"a peer protocol range is [lo, hi] with lo <= hi, "
                                   f"got {raw!r:.40}")
        return cls(raw[0], raw[1])


#: What a release from before the negotiation speaks.
LEGACY = VersionRange(3, 3)


def local_range(max_peer_protocol: int = 0) -> VersionRange:
    """The range this node offers: up to the configured maximum (0: the newest)."""
    hi = max_peer_protocol or PEER_PROTOCOL_MAX
    if not PEER_PROTOCOL_MIN <= hi <= PEER_PROTOCOL_MAX:
        raise ConfigError(f"max_peer_protocol must be {PEER_PROTOCOL_MIN}..{PEER_PROTOCOL_MAX} "
                          f"(0: {PEER_PROTOCOL_MAX}, the newest this build speaks), got {hi}")
    return VersionRange(PEER_PROTOCOL_MIN, hi)


def negotiate(ours: VersionRange, theirs: VersionRange, *, who: str = "the peer") -> int:
    """The highest version in both ranges; PeerVersionError naming both when none."""
    best = min(ours.hi, theirs.hi)
    if best < max(ours.lo, theirs.lo):
        raise PeerVersionError(f"no common peer protocol: {who} speaks {theirs}, we speak "
                               f"{ours}; upgrade the older node (or lower max_peer_protocol "
                               "on the newer one)")
    return best


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of one connection's ``hello``: the version both use, and
    what the other side said of itself."""

    version: int
    theirs: VersionRange
    node: str
    release: str  # "" when the peer predates the negotiation
    workers: int = 0  # its worker count (protocol 5 on; 0: not told)
