"""Versions and sibling sets: the pure merge rules of DESIGN §4.

A stored key holds a *sibling set*: the versions no other version supersedes.
Each version carries a vector clock, an HLC timestamp and the writing actor,
a *floor* (below), and a value or ``None`` (tombstone). As in dotted version
vectors (Riak 2.0), the clock is the *context* the writer saw, and ``(hlc,
actor)`` is the version's own write, its *dot*; the pair is also its *id*,
``id(v)``, totally ordered by HLC first and actor second. Shard workers and
the coordinator share these functions, so a replica write, read
reconciliation, read repair, hinted handoff and anti-entropy all agree.

One merge for every write
-------------------------
``x`` *supersedes* ``y`` (:func:`supersedes`) when ``id(x) > id(y)`` and

* ``id(y) < floor(x)``: ``x`` is at least as new as a plain write its writer
  saw (or is one), and that write replaced everything older; or
* ``x``'s context covers ``y``'s context and dot, and ``floor(x) >=
  floor(y)`` (a missing floor counts as less than every id).

A *plain write* (SET/DEL, :func:`plain_version`) has no context and
``floor = its own id``: it supersedes every version with a smaller id, so
the coordinator needs no read first (last writer wins, by HLC). A *context
write* (VSET/VDEL, :func:`new_version_for_context`) carries the context its
client got from VGET (:func:`context_of`): the merged histories of the
siblings read, and the greatest floor among them. It supersedes what the
client saw (its id lies past every dot of its context: the coordinator
mints it after them) and whatever the plain writes the client saw
superseded; two writes with one context stay siblings.

``merge`` and ``merge_sets`` keep the *maximal* versions of everything they
were given: a version goes when another one supersedes it. That is a join
(associative, commutative, idempotent: every order, grouping and
redelivery of the same versions gives the same set), because supersedes is
a strict partial order on *any* versions, well formed or not:

* irreflexive and asymmetric: it needs ``id(x) > id(y)``;
* transitive: let ``x > y`` and ``y > z`` (so ``id(x) > id(y) > id(z)``).
  If ``y`` beat ``z`` by floor, ``id(z) < floor(y)``; then ``x`` beat ``y``
  by floor, giving ``id(z) < id(y) < floor(x)``, or by cover, giving
  ``floor(x) >= floor(y) > id(z)``: ``x`` beats ``z`` by floor. If ``y``
  beat ``z`` by cover and ``x`` beat ``y`` by floor, ``id(z) < id(y) <
  floor(x)``. If both were by cover, ``x``'s context covers ``y``'s, which
  covers ``z``'s dot, and ``floor(x) >= floor(y) >= floor(z)``.

So a set that dropped ``y`` for ``x`` drops anything ``y`` would have
dropped, and keeping only the maximal elements of each partial merge loses
nothing a later merge needs: folding in any order equals the batch
result. The cap is the one exception: past ``cap`` siblings the oldest by
``(hlc, actor)`` are dropped and counted, and forgetting cannot be
order-free.

Why ``floor(x) >= floor(y)`` in the cover rule: a context entry ``{a: n}``
stands for every dot of ``a`` up to ``n``, so a context can cover a plain
write it never saw (a read on a replica that had a later write of the same
coordinator but not yet the plain one, which nothing orders). Without the
condition, that context write would beat the unseen plain write by cover
while the plain write beats older versions by floor that the context write
does not beat: supersedes would not be transitive and merge order would
matter. With it, a plain write ``L`` goes only for a version whose writer
saw ``L`` or a newer plain write (floors only ever come from plain writes:
their own id, or the greatest one a client saw), which is last writer wins.
(A client that forges a floor into a context, within the coordinator's
drift bound, gets its VSET no more than a plain SET at that time would.)

Old data
--------
Versions from before floors decode with no floor, and their rules are the
cover rule alone, as before (plus the id guard: a version that covers one
with a greater id, which old coordinators could mint under clock skew, now
keeps it as a sibling instead of dropping it). Old plain writes absorbed
the clocks of what they replaced, so they still cover it.

Wire form of a sibling set (``encode_siblings``)::

    +------+------------------------------------------------------------+
    | 0x01 | msgpack [[clock, hlc: uint64, actor: bin, value: bin|nil], ...] |
    +------+------------------------------------------------------------+
    | 0x02 | msgpack [[clock, hlc, actor, value, floor], ...]              |
    +------+------------------------------------------------------------+
    format version; records in canonical order; clock as in vclock.encode;
    floor = nil | [hlc: uint64, actor: bin], never above the record's own id

Format 1 is written when no record has a floor, format 2 otherwise, so a
set has exactly one encoding (Merkle digests compare the stored bytes) and
data written before floors keeps its bytes. Canonical order is ``(hlc,
actor, clock, floor, value)``; every function here returns sibling sets in
it, so equal sets are equal tuples and have equal digests.

Client context (``encode_context``, opaque to clients)::

    +------+-------------------------------------+
    | 0x01 | msgpack clock                       |   no floor
    | 0x02 | msgpack [clock, [hlc, actor]]       |   with a floor
    +------+-------------------------------------+
    b"" means the empty context (key never read)
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

import msgpack

from shardserver.protocol import vclock
from shardserver.protocol.errors import VersionFormatError
from shardserver.protocol.hlc import hlc_wall_ms
from shardserver.protocol.vclock import (
    EMPTY,
    MAX_ACTOR_BYTES,
    ActorId,
    VClock,
)

__all__ = [
    "DEFAULT_SIBLING_CAP",
    "EMPTY",
    "EMPTY_CONTEXT",
    "Context",
    "MergeResult",
    "SiblingSet",
    "Version",
    "VersionFormatError",
    "VersionId",
    "as_plain",
    "context_of",
    "decode_context",
    "decode_floor",
    "decode_siblings",
    "digest",
    "encode_context",
    "encode_floor",
    "encode_siblings",
    "gc_tombstones",
    "lww_winner",
    "merge",
    "merge_sets",
    "new_version_for_context",
    "plain_version",
    "supersedes",
    "visible_value",
]

DEFAULT_SIBLING_CAP = 16
#: Sibling-set formats: 1 without floors, 2 with a floor per record.
SIBLINGS_V1 = 1
SIBLINGS_V2 = 2
#: Context formats: 1 a bare clock, 2 a clock and a floor.
CONTEXT_V1 = 1
CONTEXT_V2 = 2
#: Refuse to decode more records than this: far past any cap, so it only
#: trips on garbage, and it bounds the work one bad record can cause.
MAX_DECODED_SIBLINGS = 4096
MAX_HLC = (1 << 64) - 1
DIGEST_BYTES = 8

#: ``(hlc, actor)``: a version's id (its dot), and the form of a floor.
VersionId: TypeAlias = tuple[int, ActorId]


@dataclass(frozen=True, slots=True)
class Version:
    """One write of one key: a value, or a tombstone when ``value`` is None.

    ``floor``: the newest plain write this one accounts for (module
    docstring); its own id for a plain write, None for a context write
    whose client saw no plain write, and for data from before floors.
    """

    clock: VClock
    hlc: int
    actor: ActorId
    value: bytes | None
    floor: VersionId | None = None

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def lww_key(self) -> VersionId:
        """The version's id, its last-writer-wins rank: HLC first, actor
        id breaks ties."""
        return (self.hlc, self.actor)


SiblingSet: TypeAlias = tuple[Version, ...]


@dataclass(frozen=True, slots=True)
class Context:
    """What a VGET hands out and a VSET/VDEL writes over: the histories of
    the siblings read (dots included) and the greatest floor among them."""

    clock: VClock = EMPTY
    floor: VersionId | None = None

    def newest(self) -> int:
        """The greatest HLC among the counters and the floor (0: none)."""
        newest = max((counter for _, counter in self.clock.entries), default=0)
        return newest if self.floor is None else max(newest, self.floor[0])


EMPTY_CONTEXT = Context()


@dataclass(frozen=True, slots=True)
class MergeResult:
    siblings: SiblingSet
    dropped_by_cap: int


_SortKey: TypeAlias = tuple[
    int, bytes, tuple[tuple[ActorId, int], ...], tuple[int, int, bytes], int, bytes
]


def _sort_key(v: Version) -> _SortKey:
    # Total order: two distinct versions never tie, so sorting is canonical.
    return (
        v.hlc,
        v.actor,
        v.clock.entries,
        (0, 0, b"") if v.floor is None else (1, *v.floor),
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


def _floor_at_least(a: VersionId | None, b: VersionId | None) -> bool:
    """``a >= b`` where no floor is below every id."""
    return b is None or (a is not None and a >= b)


def supersedes(x: Version, y: Version) -> bool:
    """``x`` replaces ``y`` wherever they meet (rule and proof that this is
    a strict partial order: module docstring)."""
    xid, yid = x.lww_key(), y.lww_key()
    if xid <= yid:
        return False
    if x.floor is not None and yid < x.floor:
        return True
    return _floor_at_least(x.floor, y.floor) and vclock.descends(x.clock, _full(y))


def merge(siblings: SiblingSet, incoming: Version, cap: int = DEFAULT_SIBLING_CAP) -> MergeResult:
    """Merge ``incoming`` into a sibling set: the maximal versions of both.

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
    """Merge two sibling sets (replica writes, read reconciliation, repair,
    handoff). Either may come off the wire, so neither is trusted to be a
    proper set: every version goes through :func:`merge` (duplicates and
    superseded versions are dropped whichever argument they arrive in)."""
    current: SiblingSet = ()
    dropped = 0
    for v in (*a, *b):
        result = merge(current, v, cap)
        current = result.siblings
        dropped += result.dropped_by_cap
    return MergeResult(current, dropped)


def lww_winner(siblings: SiblingSet) -> Version | None:
    """The version plain GET shows: greatest ``(hlc, actor)``."""
    if not siblings:
        return None
    return max(siblings, key=_sort_key)


def visible_value(siblings: SiblingSet) -> bytes | None:
    """Value plain GET returns; None when the key is absent or deleted."""
    winner = lww_winner(siblings)
    return None if winner is None else winner.value


def context_of(siblings: SiblingSet) -> Context:
    """Context a VGET hands out: every sibling's history, its dot included,
    and the greatest floor among them."""
    floors = [s.floor for s in siblings if s.floor is not None]
    return Context(vclock.merge_all(_full(s) for s in siblings), max(floors, default=None))


def new_version_for_context(
    context: Context, actor: ActorId, hlc: int, value: bytes | None
) -> Version:
    """A write by ``actor`` at ``hlc`` that supersedes what ``context`` saw.

    Its clock is the context's, its floor the context's floor. Its dot must
    lie past every dot the context covers and past the floor, or it would
    not supersede them (supersedes needs the greater id): the coordinator
    moves its HLC past the context before it takes ``hlc``; should ``hlc``
    still not be past them (a wall clock stepped back in between, an actor
    whose HLC went backwards across a restart), it is moved past them here.
    """
    hlc = max(hlc, context.newest() + 1)
    if hlc > MAX_HLC:
        # Only a context at the very end of the counter space gets here; a
        # dot past uint64 could never be encoded (or stored).
        raise VersionFormatError(f"no dot of {actor!r} fits after the context's counters")
    return Version(context.clock, hlc, actor, value, context.floor)


def plain_version(actor: ActorId, hlc: int, value: bytes | None) -> Version:
    """A plain SET/DEL: no read, no context, its floor its own id, so it
    supersedes every version with a smaller ``(hlc, actor)`` wherever they
    meet (last writer wins)."""
    if not 0 <= hlc <= MAX_HLC:
        raise VersionFormatError(f"hlc out of range: {hlc}")
    return Version(EMPTY, hlc, actor, value, (hlc, actor))


def as_plain(v: Version) -> Version:
    """``v`` with the floor of a plain write (its own id): what a replica
    write in mode ``"lww"`` means, also from coordinators before floors."""
    ident = v.lww_key()
    return v if v.floor == ident else replace(v, floor=ident)


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


# --- wire forms ----------------------------------------------------------------


def encode_floor(floor: VersionId | None) -> list[Any] | None:
    return None if floor is None else [floor[0], floor[1]]


def decode_floor(obj: object, what: str, own: VersionId | None = None) -> VersionId | None:
    """A floor's wire form: nil or ``[hlc: uint64, actor: bin]``; with
    ``own`` (the version's id), a floor above it is refused: no writer
    makes one."""
    if obj is None:
        return None
    if not isinstance(obj, (list, tuple)) or len(obj) != 2:
        raise VersionFormatError(f"{what}: expected nil or [hlc, actor], got {obj!r}")
    hlc, actor = obj
    if isinstance(hlc, bool) or not isinstance(hlc, int) or not 0 <= hlc <= MAX_HLC:
        raise VersionFormatError(f"{what}: hlc must be a uint64, got {hlc!r}")
    if not isinstance(actor, bytes) or not 0 < len(actor) <= MAX_ACTOR_BYTES:
        raise VersionFormatError(
            f"{what}: actor must be 1..{MAX_ACTOR_BYTES} bytes, got {actor!r}"
        )
    floor = (hlc, ActorId(actor))
    if own is not None and floor > own:
        raise VersionFormatError(f"{what}: floor {floor!r} lies above the version's id {own!r}")
    return floor


def _pack(fmt: int, body: object) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return bytes([fmt]) + packed


def encode_siblings(siblings: SiblingSet) -> bytes:
    ordered = _canonical(siblings)
    if all(v.floor is None for v in ordered):
        return _pack(SIBLINGS_V1, [[vclock.encode(v.clock), v.hlc, v.actor, v.value]
                                   for v in ordered])
    return _pack(SIBLINGS_V2, [[vclock.encode(v.clock), v.hlc, v.actor, v.value,
                                encode_floor(v.floor)] for v in ordered])


def _decode_record(i: int, rec: object, fmt: int) -> Version:
    fields = 4 if fmt == SIBLINGS_V1 else 5
    if not isinstance(rec, (list, tuple)) or len(rec) != fields:
        shape = "[clock, hlc, actor, value]" if fields == 4 else "[clock, hlc, actor, value, floor]"
        raise VersionFormatError(f"sibling {i}: expected {shape}")
    raw_clock, hlc, actor, value = rec[:4]
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
    own = (hlc, ActorId(actor))
    floor = None if fields == 4 else decode_floor(rec[4], f"sibling {i} floor", own)
    return Version(clock, hlc, own[1], value, floor)


def decode_siblings(data: bytes) -> SiblingSet:
    """Inverse of ``encode_siblings`` (either format); raises
    VersionFormatError on bad input."""
    if not data:
        raise VersionFormatError("siblings: empty record")
    fmt = data[0]
    if fmt not in (SIBLINGS_V1, SIBLINGS_V2):
        raise VersionFormatError(
            f"siblings: unknown format version {fmt} (expected {SIBLINGS_V1} or {SIBLINGS_V2})"
        )
    records = vclock.unpack_msgpack(data[1:], "siblings")
    if not isinstance(records, list):
        raise VersionFormatError(f"siblings: expected a list, got {type(records).__name__}")
    if len(records) > MAX_DECODED_SIBLINGS:
        raise VersionFormatError(f"siblings: {len(records)} records > {MAX_DECODED_SIBLINGS}")
    versions = _canonical([_decode_record(i, rec, fmt) for i, rec in enumerate(records)])
    for prev, cur in itertools.pairwise(versions):
        if prev == cur:
            raise VersionFormatError(f"siblings: duplicate version at hlc {cur.hlc}")
    return versions


def digest(siblings: SiblingSet) -> bytes:
    """8-byte fingerprint of the canonical encoding, for Merkle anti-entropy."""
    return hashlib.blake2b(encode_siblings(siblings), digest_size=DIGEST_BYTES).digest()


def encode_context(context: Context) -> bytes:
    """Opaque context handed to context-aware clients (VGET → VSET/VDEL)."""
    clock = vclock.encode(context.clock)
    if context.floor is None:
        return _pack(CONTEXT_V1, clock)
    return _pack(CONTEXT_V2, [clock, encode_floor(context.floor)])


def decode_context(data: bytes) -> Context:
    """Inverse of ``encode_context`` (either format); ``b""`` is the empty
    context. Checks the form only; the coordinator checks the rest
    (``coordinator.reconcile.decode_context``)."""
    if not data:
        return EMPTY_CONTEXT
    fmt = data[0]
    if fmt not in (CONTEXT_V1, CONTEXT_V2):
        raise VersionFormatError(
            f"context: unknown format version {fmt} (expected {CONTEXT_V1} or {CONTEXT_V2})"
        )
    body = vclock.unpack_msgpack(data[1:], "context")
    if fmt == CONTEXT_V1:
        return Context(vclock.decode(body, "context"))
    if not isinstance(body, list) or len(body) != 2:
        raise VersionFormatError("context: expected [clock, floor]")
    return Context(vclock.decode(body[0], "context"), decode_floor(body[1], "context floor"))
