"""Versions and sibling sets: the pure merge rules of DESIGN §4.

A stored key holds a *sibling set*: the versions no other version supersedes.
Each version carries a vector clock, an HLC timestamp and the writing actor,
and a value or ``None`` (tombstone). As in dotted version vectors (Riak
2.0), the clock is the *context* the writer saw, and ``(actor, hlc)`` is the
version's own *dot*: ``x`` supersedes ``y`` when ``x``'s context covers
``y``'s context and dot (:func:`supersedes`). Counting the writer's own
entry in the clock instead would let a second VSET through the same
coordinator with the same context replace the first, an acknowledged write
lost; with dots both stay as siblings.
Shard workers and the coordinator share these functions, so a replica write,
read reconciliation, read repair, hinted handoff and anti-entropy all agree.

Two kinds of write
------------------
*Context writes* (VSET/VDEL) go through ``merge``: a version another one
supersedes is dropped; concurrent versions are all kept as siblings (past
``cap`` the oldest by ``(hlc, actor)`` are dropped and counted). ``merge``
is a join: folding the same versions in any order, any grouping and with
repeats gives the same set, as long as the cap does not bind (the cap
forgets versions, so it cannot be order-free).

*Plain writes* (SET/DEL) go through ``apply_lww``. The coordinator builds
them without a read (:func:`plain_version`): context ``{actor: hlc - 1}``,
so a coordinator's later plain write supersedes its earlier ones. The
replica rule is:

1. If an existing version supersedes the incoming one (or is it), the write
   is already reflected or causally obsolete: no change. This makes redelivery
   (retries, handoff) idempotent, and a VSET whose context saw the write wins
   over it even if skewed clocks gave the VSET a smaller HLC.
2. Else, if an existing version has a greater ``(hlc, actor)`` and the
   incoming write does not supersede it, the write lost the LWW race here:
   no change. (GET would never have shown it.)
3. Else the incoming write supersedes everything: the set becomes that one
   version, its context merged with the history (context and dot) of every
   version it replaced. Absorbing the
   clocks is what makes the supersession stick: when anti-entropy or read
   repair later ``merge``s in a copy from a replica that still holds a
   replaced version, the stored version dominates it and it stays gone.

So ``lww_winner`` (what GET shows) is always the greatest ``(hlc, actor)`` the
replica accepted, and after a plain write that won, VGET shows exactly that
one version, whose context dominates it (clock counters are HLC values).

Replicas that had diverged before a plain write absorb different clocks, so
anti-entropy may then hold two copies of that one write (same ``(hlc,
actor)`` and value, concurrent clocks) side by side. That is harmless: GET
shows the write, VGET's context covers both copies, and the next write of
either kind replaces them. Collapsing the copies inside ``merge`` would make
the result depend on merge order, which anti-entropy cannot afford.

Wire form of a sibling set (``encode_siblings``)::

    +------+--------------------------------------------------------------+
    | 0x01 | msgpack [[clock, hlc: uint64, actor: bin, value: bin|nil], ...] |
    +------+--------------------------------------------------------------+
    format version; records in canonical order; clock as in vclock.encode

Canonical order is ``(hlc, actor, clock, value)``; every function here returns
sibling sets in it, so equal sets are equal tuples and have equal digests.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, replace
from typing import TypeAlias

import msgpack

from shardserver.protocol import vclock
from shardserver.protocol.hlc import hlc_wall_ms
from shardserver.protocol.vclock import (
    EMPTY,
    MAX_ACTOR_BYTES,
    ActorId,
    VClock,
    VersionFormatError,
)

__all__ = [
    "DEFAULT_SIBLING_CAP",
    "EMPTY",
    "MergeResult",
    "SiblingSet",
    "Version",
    "VersionFormatError",
    "apply_lww",
    "context_of",
    "plain_version",
    "supersedes",
    "decode_siblings",
    "digest",
    "encode_siblings",
    "gc_tombstones",
    "lww_winner",
    "merge",
    "merge_sets",
    "new_version_for_context",
    "visible_value",
]

DEFAULT_SIBLING_CAP = 16
SIBLINGS_FORMAT_VERSION = 1
#: Refuse to decode more records than this: far past any cap, so it only
#: trips on garbage, and it bounds the work one bad record can cause.
MAX_DECODED_SIBLINGS = 4096
MAX_HLC = (1 << 64) - 1
DIGEST_BYTES = 8


@dataclass(frozen=True, slots=True)
class Version:
    """One write of one key: a value, or a tombstone when ``value`` is None."""

    clock: VClock
    hlc: int
    actor: ActorId
    value: bytes | None

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def lww_key(self) -> tuple[int, bytes]:
        """Last-writer-wins order: HLC first, actor id breaks ties."""
        return (self.hlc, self.actor)


SiblingSet: TypeAlias = tuple[Version, ...]


@dataclass(frozen=True, slots=True)
class MergeResult:
    siblings: SiblingSet
    dropped_by_cap: int


def _sort_key(v: Version) -> tuple[int, bytes, tuple[tuple[ActorId, int], ...], int, bytes]:
    # Total order: two distinct versions never tie, so sorting is canonical.
    return (
        v.hlc,
        v.actor,
        v.clock.entries,
        0 if v.value is None else 1,
        b"" if v.value is None else v.value,
    )


def _canonical(versions: list[Version] | SiblingSet) -> SiblingSet:
    return tuple(sorted(versions, key=_sort_key))


def _apply_cap(versions: list[Version] | SiblingSet, cap: int) -> MergeResult:
    if cap < 1:
        raise ValueError(f"sibling cap must be >= 1, got {cap}")
    ordered = _canonical(versions)
    # Canonical order starts with (hlc, actor), so the oldest come first.
    excess = len(ordered) - cap
    if excess > 0:
        return MergeResult(ordered[excess:], excess)
    return MergeResult(ordered, 0)


def _full(v: Version) -> VClock:
    """``v``'s causal history including its own write (its dot)."""
    return vclock.merge(v.clock, VClock.of({v.actor: v.hlc}))


def supersedes(x: Version, y: Version) -> bool:
    """``x`` replaces ``y``: the context ``x`` was written with covers all of
    ``y``, ``y``'s own write included (dotted version vectors, as Riak 2.0).

    A version's clock is the context its writer saw, not counting its own
    write; its dot is ``(actor, hlc)``. So two VSETs through one coordinator
    with the same context do not supersede each other: neither context saw
    the other's dot, and both stay as siblings (with clocks that include the
    writer's own entry, the later one would have replaced the earlier).
    The second condition keeps the relation strict on malformed input.
    """
    return vclock.descends(x.clock, _full(y)) and not vclock.descends(y.clock, _full(x))


def merge(siblings: SiblingSet, incoming: Version, cap: int = DEFAULT_SIBLING_CAP) -> MergeResult:
    """Merge ``incoming`` into a sibling set (:func:`supersedes`).

    ``siblings`` must be a sibling set (no member supersedes another), as
    every function here returns; that lets one pass over it suffice.
    """
    kept: list[Version] = []
    for s in siblings:
        if s == incoming or supersedes(s, incoming):
            return _apply_cap(siblings, cap)
        if not supersedes(incoming, s):
            kept.append(s)
    kept.append(incoming)
    return _apply_cap(kept, cap)


def merge_sets(a: SiblingSet, b: SiblingSet, cap: int = DEFAULT_SIBLING_CAP) -> MergeResult:
    """Merge two sibling sets (read reconciliation, repair, handoff). Either
    may come off the wire, so neither is trusted to be a proper set: every
    version goes through :func:`merge` (duplicates and dominated versions
    are dropped whichever argument they arrive in)."""
    current: SiblingSet = ()
    dropped = 0
    for v in (*a, *b):
        result = merge(current, v, cap)
        current = result.siblings
        dropped += result.dropped_by_cap
    return MergeResult(current, dropped)


def apply_lww(
    siblings: SiblingSet, incoming: Version, cap: int = DEFAULT_SIBLING_CAP
) -> MergeResult:
    """Apply a plain SET/DEL at a replica (rule in the module docstring).

    The result never grows the set, so ``cap`` only trims an oversized input.
    """
    key = incoming.lww_key()
    for s in siblings:
        if s == incoming or supersedes(s, incoming):
            return _apply_cap(siblings, cap)  # rule 1: already reflected
        if not supersedes(incoming, s) and s.lww_key() > key:
            return _apply_cap(siblings, cap)  # rule 2: lost the LWW race
    clock = vclock.merge_all([incoming.clock, *(_full(s) for s in siblings)])
    return MergeResult((replace(incoming, clock=clock),), 0)


def lww_winner(siblings: SiblingSet) -> Version | None:
    """The version plain GET shows: greatest ``(hlc, actor)``."""
    if not siblings:
        return None
    return max(siblings, key=_sort_key)


def visible_value(siblings: SiblingSet) -> bytes | None:
    """Value plain GET returns; None when the key is absent or deleted."""
    winner = lww_winner(siblings)
    return None if winner is None else winner.value


def context_of(siblings: SiblingSet) -> VClock:
    """Context a VGET hands out: every sibling's history, its dot included."""
    return vclock.merge_all(_full(s) for s in siblings)


def new_version_for_context(
    context: VClock, actor: ActorId, hlc: int, value: bytes | None
) -> Version:
    """A write by ``actor`` at ``hlc`` that supersedes exactly ``context``.

    Its clock is the context itself; its dot ``(actor, hlc)`` must lie
    beyond what the context saw of ``actor`` (an actor whose HLC went
    backwards across a restart is moved past it).
    """
    hlc = max(hlc, context.get(actor) + 1)
    if hlc > MAX_HLC:
        # Only a context at the very end of the counter space gets here; a
        # dot past uint64 could never be encoded (or stored).
        raise VersionFormatError(f"no dot of {actor!r} fits after the context's counter")
    return Version(clock=context, hlc=hlc, actor=actor, value=value)


def plain_version(actor: ActorId, hlc: int, value: bytes | None) -> Version:
    """A plain SET/DEL (no read, no context). Its context claims only the
    writer's own earlier writes (``{actor: hlc - 1}``): last-writer-wins
    means a later plain write of one coordinator replaces its earlier ones
    wherever they meet (read repair, anti-entropy), while a VSET, whose
    context is what its client saw, never claims the writer's other writes.
    """
    context = VClock.of({actor: hlc - 1}) if hlc > 1 else vclock.EMPTY
    return new_version_for_context(context, actor, hlc, value)


def gc_tombstones(siblings: SiblingSet, now_ms: int, grace_ms: int) -> SiblingSet:
    """``()`` if every sibling is a tombstone at least ``grace_ms`` old, else unchanged.

    A live value among them keeps the whole set: dropping only the tombstones
    would resurrect what they deleted on replicas that merge with us.
    """
    if siblings and all(
        s.value is None and now_ms - hlc_wall_ms(s.hlc) >= grace_ms for s in siblings
    ):
        return ()
    return siblings


# --- wire form ---------------------------------------------------------------


def encode_siblings(siblings: SiblingSet) -> bytes:
    records = [[vclock.encode(v.clock), v.hlc, v.actor, v.value] for v in _canonical(siblings)]
    body: bytes = msgpack.packb(records, use_bin_type=True)
    return bytes([SIBLINGS_FORMAT_VERSION]) + body


def _decode_record(i: int, rec: object) -> Version:
    if not isinstance(rec, (list, tuple)) or len(rec) != 4:
        raise VersionFormatError(f"sibling {i}: expected [clock, hlc, actor, value]")
    raw_clock, hlc, actor, value = rec
    clock = vclock.decode(raw_clock, f"sibling {i} clock")
    if isinstance(hlc, bool) or not isinstance(hlc, int) or not 0 <= hlc <= MAX_HLC:
        raise VersionFormatError(f"sibling {i}: hlc must be a uint64, got {hlc!r}")
    if not isinstance(actor, bytes) or not 0 < len(actor) <= MAX_ACTOR_BYTES:
        raise VersionFormatError(
            f"sibling {i}: actor must be 1..{MAX_ACTOR_BYTES} bytes, got {actor!r}"
        )
    if value is not None and not isinstance(value, bytes):
        raise VersionFormatError(
            f"sibling {i}: value must be bytes or nil, got {type(value).__name__}"
        )
    return Version(clock=clock, hlc=hlc, actor=ActorId(actor), value=value)


def decode_siblings(data: bytes) -> SiblingSet:
    """Inverse of ``encode_siblings``; raises VersionFormatError on bad input."""
    if not data:
        raise VersionFormatError("siblings: empty record")
    if data[0] != SIBLINGS_FORMAT_VERSION:
        raise VersionFormatError(
            f"siblings: unknown format version {data[0]} (expected {SIBLINGS_FORMAT_VERSION})"
        )
    records = vclock.unpack_msgpack(data[1:], "siblings")
    if not isinstance(records, list):
        raise VersionFormatError(f"siblings: expected a list, got {type(records).__name__}")
    if len(records) > MAX_DECODED_SIBLINGS:
        raise VersionFormatError(f"siblings: {len(records)} records > {MAX_DECODED_SIBLINGS}")
    versions = _canonical([_decode_record(i, rec) for i, rec in enumerate(records)])
    for prev, cur in itertools.pairwise(versions):
        if prev == cur:
            raise VersionFormatError(f"siblings: duplicate version at hlc {cur.hlc}")
    return versions


def digest(siblings: SiblingSet) -> bytes:
    """8-byte fingerprint of the canonical encoding, for Merkle anti-entropy."""
    return hashlib.blake2b(encode_siblings(siblings), digest_size=DIGEST_BYTES).digest()
