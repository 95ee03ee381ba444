"""Vector clocks over actor ids: the causal half of the version model (DESIGN §4).

An actor is one incarnation of one node. A node whose data directory is new
gets a new incarnation, so a wiped node never reuses counters it handed out
before. Actor ids are bytes so that they sort and compare cheaply; the text
form ``<node id>#<incarnation>`` keeps them readable in dumps and logs::

    actor = utf8(node_id) "#" decimal(incarnation)      e.g. b"node-a#3"

Counters are the writing actor's HLC timestamps, not a dense 1, 2, 3…
sequence (``increment`` takes ``max(old + 1, hlc)``): that way clocks and
last-writer-wins ids (``(hlc, actor)``) rank writes on one scale, and a
context write whose dot is minted past every counter of its context
outranks everything that context covers (``versions.supersedes``).

A clock is kept canonical, sorted by actor with no zero entries, so equal
clocks are equal Python values and hash alike.

Wire form (msgpack), used inside sibling records and client contexts
(``versions.encode_siblings``, ``versions.encode_context``)::

    [[actor: bin, counter: uint], ...]           sorted by actor, counters >= 1
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NewType

import msgpack

from shardserver.protocol.errors import VersionFormatError

ActorId = NewType("ActorId", bytes)

#: Actor ids longer than this are refused on decode; they bound the size of a
#: clock an untrusted peer or client can make us hold.
MAX_ACTOR_BYTES = 255
#: More actors than this in one clock means garbage or a runaway cluster.
MAX_CLOCK_ENTRIES = 4096
#: Counters are HLC timestamps, which fit in 64 bits.
MAX_COUNTER = (1 << 64) - 1

_ACTOR_SEP = b"#"


class Order(enum.Enum):
    """Causal relation of clock ``a`` to clock ``b`` (see ``compare``)."""

    EQUAL = "equal"
    BEFORE = "before"  # a < b: b dominates a
    AFTER = "after"  # a > b: a dominates b
    CONCURRENT = "concurrent"


def make_actor(node_id: str, incarnation: int) -> ActorId:
    """Actor id of ``node_id`` in its ``incarnation`` (a non-negative int)."""
    if not node_id:
        raise ValueError("node id must not be empty")
    if isinstance(incarnation, bool) or not isinstance(incarnation, int) or incarnation < 0:
        raise ValueError(f"incarnation must be a non-negative int, got {incarnation!r}")
    actor = node_id.encode("utf-8") + _ACTOR_SEP + str(incarnation).encode("ascii")
    if len(actor) > MAX_ACTOR_BYTES:
        raise ValueError(f"actor id too long ({len(actor)} > {MAX_ACTOR_BYTES} bytes)")
    return ActorId(actor)


def parse_actor(actor: bytes) -> tuple[str, int]:
    """Inverse of ``make_actor``; raises ``VersionFormatError`` on anything else."""
    if not isinstance(actor, bytes) or not 0 < len(actor) <= MAX_ACTOR_BYTES:
        raise VersionFormatError(f"actor id must be 1..{MAX_ACTOR_BYTES} bytes: {actor!r}")
    # rpartition: the node id may itself contain '#', the incarnation cannot.
    node, sep, inc = actor.rpartition(_ACTOR_SEP)
    if not sep or not node:
        raise VersionFormatError(f"actor id has no '<node>#<incarnation>' form: {actor!r}")
    # Only the canonical decimal spelling, so one actor has exactly one id.
    if not inc.isdigit() or not inc.isascii() or (len(inc) > 1 and inc[0:1] == b"0"):
        raise VersionFormatError(f"actor id has a bad incarnation: {actor!r}")
    try:
        node_id = node.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VersionFormatError(f"actor id node part is not UTF-8: {actor!r}") from exc
    return node_id, int(inc)


@dataclass(frozen=True, slots=True)
class VClock:
    """Immutable vector clock: sorted ``(actor, counter)`` pairs, counters >= 1."""

    entries: tuple[tuple[ActorId, int], ...] = ()

    def __post_init__(self) -> None:
        # Cheap guard so a hand-built non-canonical clock cannot break equality.
        prev: bytes | None = None
        for actor, counter in self.entries:
            if prev is not None and actor <= prev:
                raise ValueError("VClock entries must be sorted by actor without duplicates")
            if counter < 1:
                raise ValueError(f"VClock counter must be >= 1, got {counter} for {actor!r}")
            prev = actor

    @classmethod
    def of(cls, mapping: Mapping[ActorId, int]) -> VClock:
        """Clock from a mapping; zero counters are dropped."""
        return cls(tuple(sorted((a, c) for a, c in mapping.items() if c != 0)))

    def get(self, actor: bytes) -> int:
        for a, c in self.entries:
            if a == actor:
                return c
        return 0

    def as_dict(self) -> dict[ActorId, int]:
        return dict(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)


EMPTY = VClock()


def compare(a: VClock, b: VClock) -> Order:
    """Causal relation of ``a`` to ``b`` in one walk over both sorted lists."""
    ea, eb = a.entries, b.entries
    i = j = 0
    a_bigger = b_bigger = False
    while i < len(ea) and j < len(eb):
        aa, ca = ea[i]
        ab, cb = eb[j]
        if aa == ab:
            if ca > cb:
                a_bigger = True
            elif cb > ca:
                b_bigger = True
            i += 1
            j += 1
        elif aa < ab:
            a_bigger = True  # b lacks this actor, i.e. has 0 < ca
            i += 1
        else:
            b_bigger = True
            j += 1
        if a_bigger and b_bigger:
            return Order.CONCURRENT
    a_bigger = a_bigger or i < len(ea)
    b_bigger = b_bigger or j < len(eb)
    if a_bigger and b_bigger:
        return Order.CONCURRENT
    if a_bigger:
        return Order.AFTER
    if b_bigger:
        return Order.BEFORE
    return Order.EQUAL


def descends(a: VClock, b: VClock) -> bool:
    """``a >= b`` pointwise: ``a`` has seen everything ``b`` has."""
    return compare(a, b) in (Order.AFTER, Order.EQUAL)


def dominates(a: VClock, b: VClock) -> bool:
    """``a`` descends ``b`` and differs from it."""
    return compare(a, b) is Order.AFTER


def concurrent(a: VClock, b: VClock) -> bool:
    """Neither clock descends the other."""
    return compare(a, b) is Order.CONCURRENT


def merge(a: VClock, b: VClock) -> VClock:
    """Pointwise maximum (the least clock that descends both)."""
    if not b.entries or a is b:
        return a
    if not a.entries:
        return b
    out = dict(a.entries)
    for actor, counter in b.entries:
        if counter > out.get(actor, 0):
            out[actor] = counter
    return VClock(tuple(sorted(out.items())))


def merge_all(clocks: Iterable[VClock]) -> VClock:
    out: dict[ActorId, int] = {}
    for clock in clocks:
        for actor, counter in clock.entries:
            if counter > out.get(actor, 0):
                out[actor] = counter
    return VClock(tuple(sorted(out.items())))


def increment(clock: VClock, actor: ActorId, counter: int) -> VClock:
    """Record a new event of ``actor`` whose HLC is ``counter``.

    The entry becomes ``max(old + 1, counter)``: HLC values make the counters
    comparable with plain LWW writes, and ``old + 1`` keeps the result strictly
    after ``clock`` even if the actor's HLC went backwards (restart with a
    slow wall clock).
    """
    if counter < 0 or counter > MAX_COUNTER:
        raise ValueError(f"counter out of range: {counter}")
    new = max(clock.get(actor) + 1, counter)
    if new > MAX_COUNTER:
        raise ValueError(f"counter overflow for actor {actor!r}")
    out = dict(clock.entries)
    out[actor] = new
    return VClock(tuple(sorted(out.items())))


# --- wire form ---------------------------------------------------------------


def encode(clock: VClock) -> list[list[bytes | int]]:
    """msgpack-able form: ``[[actor, counter], ...]`` sorted by actor."""
    return [[actor, counter] for actor, counter in clock.entries]


def decode(obj: object, what: str = "clock") -> VClock:
    """Validate and build a clock from its wire form (``encode``'s output).

    Unsorted input is accepted and sorted; duplicates, zero or negative
    counters, non-bytes actors and oversized clocks are refused.
    """
    if not isinstance(obj, (list, tuple)):
        raise VersionFormatError(f"{what}: expected a list of pairs, got {type(obj).__name__}")
    if not obj:
        return EMPTY  # every plain SET/DEL's clock
    if len(obj) > MAX_CLOCK_ENTRIES:
        raise VersionFormatError(f"{what}: {len(obj)} entries > {MAX_CLOCK_ENTRIES}")
    out: dict[ActorId, int] = {}
    for i, pair in enumerate(obj):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise VersionFormatError(f"{what}[{i}]: expected [actor, counter], got {pair!r}")
        actor, counter = pair
        if not isinstance(actor, bytes) or not 0 < len(actor) <= MAX_ACTOR_BYTES:
            raise VersionFormatError(
                f"{what}[{i}]: actor must be 1..{MAX_ACTOR_BYTES} bytes, got {actor!r}"
            )
        if isinstance(counter, bool) or not isinstance(counter, int):
            raise VersionFormatError(f"{what}[{i}]: counter must be an int, got {counter!r}")
        if not 1 <= counter <= MAX_COUNTER:
            raise VersionFormatError(f"{what}[{i}]: counter {counter} out of 1..2**64-1")
        if actor in out:
            raise VersionFormatError(f"{what}[{i}]: duplicate actor {actor!r}")
        out[ActorId(actor)] = counter
    return VClock(tuple(sorted(out.items())))


def unpack_msgpack(data: bytes, what: str) -> object:
    """``msgpack.unpackb`` that turns every decoder failure into VersionFormatError.

    msgpack signals malformed input with several unrelated exception types;
    callers must see one kind, and never a crash, for untrusted bytes.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, timestamp=0)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise VersionFormatError(f"{what}: malformed msgpack ({exc})") from exc
