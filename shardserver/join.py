"""The merge operator of a shard worker's engine: the join of sibling sets.

Replica writes are blind (``ShardStore.write_many``): each one stores a
merge operand, the encoded one-version set, and the engine joins operands
and values wherever two copies of a key meet (memtable, reads, compactions;
docs/engine.md, "Merge operands") with this operator. ``full_merge`` and
``partial_merge`` are both ``versions.merge_sets`` of the decoded sets,
encoded again: a join (associative, commutative, idempotent up to the
sibling cap; ``shardserver.protocol.versions``), so the result does not
depend on where, in what order or in what groups the copies meet.

Fast path. The general join decodes both sets (clocks included), merges
them and encodes the result: about 45 µs for two one-version sets, more
than the whole blind write. The common case is decided from the raw bytes
instead: when one side is a single *plain* version (empty clock, floor =
its own id, as every SET/DEL is) whose floor lies above the id of every
version on the other side, that version supersedes all of them
(``versions.supersedes``: greater id, and the other's id below its floor),
so the join is that one version, and its bytes are returned unchanged.
``msgpack.unpackb`` (C) gives the ids without building clocks or Version
objects; the winner is checked to be valid and canonical (re-packing its
record gives its bytes), so the fast path returns exactly the bytes the
general path would encode (tests/shardserver/test_join.py proves it with
hypothesis).

Bad input. Operands are validated before they are written
(:func:`check_version`), so only a stored value can be undecodable (damage
the block checksums did not catch). The operator must not raise on it: an
exception in a compaction stops every compaction of the engine. So an
undecodable input is left out of the join when another input decodes (it
is logged and counted; the other replicas still hold the key, and
anti-entropy brings their copy back), and returned unchanged when none
does (nothing is destroyed that a later repair could still read).

The class lives at module level with plain fields: the engine pickles it
into its compaction child process.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack

from shardserver.protocol import versions
from shardserver.protocol.errors import VersionFormatError
from shardserver.protocol.vclock import MAX_ACTOR_BYTES, MAX_CLOCK_ENTRIES, MAX_COUNTER, ActorId
from shardserver.protocol.versions import (
    MAX_HLC,
    SIBLINGS_V1,
    SIBLINGS_V2,
    SiblingSet,
    Version,
    VersionId,
)

log = logging.getLogger("ringkv.join")

#: Recorded in the engine's manifest and tables; a database holding operands
#: opens only with an operator of this name (docs/engine.md).
OPERATOR_NAME = "ringkv.sibling-sets.v1"
#: Undecodable keys logged per process; the counter goes on past it.
_MAX_LOGGED = 100


def check_version(v: Version) -> None:
    """Refuse (VersionFormatError) a version ``decode_siblings`` would not
    read back: it must not reach the engine as an operand, where it would
    only fail later, inside a compaction."""
    if isinstance(v.hlc, bool) or not isinstance(v.hlc, int) or not 0 <= v.hlc <= MAX_HLC:
        raise VersionFormatError(f"hlc must be a uint64, got {v.hlc!r}")
    _check_actor(v.actor, "actor")
    if v.value is not None and not isinstance(v.value, bytes):
        raise VersionFormatError(f"value must be bytes or None, got {type(v.value).__name__}")
    entries = v.clock.entries
    if len(entries) > MAX_CLOCK_ENTRIES:
        raise VersionFormatError(f"clock: {len(entries)} entries > {MAX_CLOCK_ENTRIES}")
    for actor, counter in entries:
        _check_actor(actor, "clock actor")
        if isinstance(counter, bool) or not isinstance(counter, int) \
                or not 1 <= counter <= MAX_COUNTER:
            raise VersionFormatError(f"clock counter {counter!r} out of 1..2**64-1")
    floor = v.floor
    if floor is not None and not (type(floor) is tuple and len(floor) == 2
                                  and type(floor[0]) is int and type(floor[1]) is bytes
                                  and 0 < len(floor[1]) <= MAX_ACTOR_BYTES
                                  and 0 <= floor[0] <= MAX_HLC and floor <= v.lww_key()):
        # Not the common, valid floor: the decoder's check names what is wrong.
        versions.decode_floor(versions.encode_floor(floor), "floor", v.lww_key())


def _check_actor(actor: object, what: str) -> None:
    if not isinstance(actor, bytes) or not 0 < len(actor) <= MAX_ACTOR_BYTES:
        raise VersionFormatError(f"{what} must be 1..{MAX_ACTOR_BYTES} bytes, got {actor!r:.80}")


def operand(v: Version) -> bytes:
    """The engine operand of one replica write: the checked version as a
    one-version set."""
    check_version(v)
    return versions.encode_siblings((v,))


def _records(raw: bytes) -> list[Any] | None:
    """The records of an encoded set, unchecked; None if it is no set."""
    if not raw or raw[0] not in (SIBLINGS_V1, SIBLINGS_V2):
        return None
    try:
        records = msgpack.unpackb(raw[1:], raw=False, strict_map_key=True, timestamp=0)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException):
        return None
    return records if isinstance(records, list) else None


def _ids(records: list[Any], width: int) -> list[VersionId] | None:
    """The records' ids, or None when a record is not shaped like one."""
    ids: list[VersionId] = []
    for rec in records:
        if type(rec) is not list or len(rec) != width:
            return None
        hlc, actor = rec[1], rec[2]
        if type(hlc) is not int or type(actor) is not bytes:
            return None
        ids.append((hlc, ActorId(actor)))
    return ids


def _plain(records: list[Any], width: int) -> VersionId | None:
    """The id of the set's one version if it is a valid plain write."""
    if len(records) != 1 or width != 5:
        return None
    rec = records[0]
    if type(rec) is not list or len(rec) != 5:
        return None
    clock, hlc, actor, value, floor = rec
    if (
        clock == [] and type(hlc) is int and 0 <= hlc <= MAX_HLC
        and type(actor) is bytes and 0 < len(actor) <= MAX_ACTOR_BYTES
        and (value is None or type(value) is bytes) and floor == [hlc, actor]
    ):
        return hlc, ActorId(actor)
    return None


def fast_join(a: bytes, b: bytes) -> bytes | None:
    """The join of two canonically encoded sets when one side is a plain
    write that supersedes everything on the other; None when the general
    path must decide."""
    ra, rb = _records(a), _records(b)
    if ra is None or rb is None:
        return None
    wa, wb = (4 if a[0] == SIBLINGS_V1 else 5), (4 if b[0] == SIBLINGS_V1 else 5)
    pa, pb = _plain(ra, wa), _plain(rb, wb)
    if pa is not None and pb is not None:  # the usual case: two plain writes
        if pa != pb:
            return a if pa > pb else b
        return a if a == b else None  # one id, two values: the general path keeps both
    if pa is not None:
        ids = _ids(rb, wb)
        if ids is not None and all(i < pa for i in ids):
            return a
    elif pb is not None:
        ids = _ids(ra, wa)
        if ids is not None and all(i < pb for i in ids):
            return b
    return None


@dataclass(slots=True)
class SiblingSetJoin:
    """``lsm.options.MergeOperator`` over encoded sibling sets."""

    cap: int = versions.DEFAULT_SIBLING_CAP
    name: str = field(default=OPERATOR_NAME, init=False)
    #: In this process only (compactions in a child process count there).
    counters: Counter[str] = field(default_factory=Counter, compare=False)

    def full_merge(self, key: bytes, base: bytes | None, operands: list[bytes]) -> bytes:
        return self.join(key, operands if base is None else [base, *operands])

    def partial_merge(self, key: bytes, older: bytes, newer: bytes) -> bytes:
        return self.join(key, [older, newer])

    def join(self, key: bytes, sets: list[bytes]) -> bytes:
        """The join of encoded sets (at least one), encoded."""
        acc = sets[0]
        for i in range(1, len(sets)):
            fast = fast_join(acc, sets[i])
            if fast is None:
                return self._general(key, [acc, *sets[i:]])
            acc = fast
        self.counters["join_fast"] += len(sets) - 1
        return acc

    def _general(self, key: bytes, sets: list[bytes]) -> bytes:
        self.counters["join_full"] += 1
        decoded: list[SiblingSet] = []
        for raw in sets:
            try:
                decoded.append(versions.decode_siblings(raw))
            except VersionFormatError as exc:
                self._undecodable(key, exc)
        if not decoded:
            return sets[-1]
        merged: SiblingSet = decoded[0]
        for s in decoded[1:]:
            merged = versions.merge_sets(merged, s, self.cap).siblings
        return versions.encode_siblings(merged)

    def _undecodable(self, key: bytes, exc: VersionFormatError) -> None:
        self.counters["join_undecodable"] += 1
        if self.counters["join_undecodable"] <= _MAX_LOGGED:
            log.error("key %r: an undecodable stored sibling set is left out of a merge "
                      "(anti-entropy restores the key from its replicas): %s", key[:64], exc)
