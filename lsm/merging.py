"""Merge operands: what a run of them resolves to, wherever entries meet.

A MERGE entry holds an operand for ``Options.merge_operator`` (RocksDB's
merge operator). The value of a key is found by walking its entries newest
first: collect the merge operands until a VALUE or a DELETE (the *base*) or
the end, then ``full_merge(key, base, operands)`` with the operands oldest
first and ``base`` ``None`` for a DELETE or when nothing is below. So a plain
``put`` or ``delete`` hides every operand before it, and an operand applies
to whatever was there.

Where entries meet:

* memtable: a MERGE added on top of the key's entry is combined at once
  (:func:`combine`), so a memtable still holds one entry per key;
* point reads (:func:`finish`) and scans (``lsm.iterators.merge_resolving``
  with ``bottom=True``): every older entry is at hand, so the result is
  always a value (or ``None``);
* compactions: a run that reaches a base, or any run when the output is the
  bottom of its key range, becomes a VALUE; a run that reaches neither stays
  a MERGE, its operands combined with ``partial_merge`` (:func:`fold`).

The resolved entry keeps the sequence number of the newest operand. The
functions here are pure; callers pass the operator in.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from lsm.errors import InvalidArgumentError
from lsm.keys import KIND_MERGE, KIND_VALUE, Entry, Hit

if TYPE_CHECKING:
    from lsm.options import MergeOperator


class NotCached(enum.Enum):
    """Type of :data:`NOT_CACHED`."""

    NOT_CACHED = "NOT_CACHED"

    def __repr__(self) -> str:
        return "lsm.NOT_CACHED"


#: ``DB.get_cached``'s answer when the key cannot be resolved without reading
#: a file (a table not yet open, or a data block not in the block cache).
NOT_CACHED = NotCached.NOT_CACHED


def need(op: MergeOperator | None) -> MergeOperator:
    """The operator, or a clear error when a merge operand meets none
    (``DB.open`` refuses a database holding operands without one, so this
    guards writes and hand-made memtables)."""
    if op is None:
        raise InvalidArgumentError("a merge operand needs Options.merge_operator, which is not set")
    return op


def combine(op: MergeOperator | None, key: bytes, old: Hit, new: Hit) -> Hit:
    """The one memtable entry for ``key`` after ``new`` is added on top of
    ``old``, where ``new`` is a MERGE or is older than ``old`` (a plain newer
    VALUE or DELETE simply replaces ``old``).

    The engine applies entries in sequence order; an older entry arriving
    late is handled for a single step (the operands in ``old`` apply on top
    of it), which is exact as long as ``old`` holds nothing older than it.
    """
    oseq, okind, ovalue = old
    seq, kind, value = new
    if oseq < seq:  # a newer operand on top of the entry
        if okind == KIND_MERGE:
            return seq, KIND_MERGE, need(op).partial_merge(key, ovalue, value)
        base = ovalue if okind == KIND_VALUE else None
        return seq, KIND_VALUE, need(op).full_merge(key, base, [value])
    if okind != KIND_MERGE:
        return old  # the newer VALUE or DELETE hides the late entry
    if kind == KIND_MERGE:
        return oseq, KIND_MERGE, need(op).partial_merge(key, value, ovalue)
    base = value if kind == KIND_VALUE else None
    return oseq, KIND_VALUE, need(op).full_merge(key, base, [ovalue])


def finish(op: MergeOperator | None, key: bytes, base: Hit | None,
           operands: list[bytes]) -> bytes | None:
    """The value of ``key`` from a point read: ``operands`` are the merge
    operands met newest first (reversed in place), ``base`` the VALUE or
    DELETE that ended the walk, or ``None`` when it reached the end."""
    value = base[2] if base is not None and base[1] == KIND_VALUE else None
    if not operands:
        return value
    operands.reverse()
    return need(op).full_merge(key, value, operands)


def fold(op: MergeOperator | None, head: Entry, operands: list[bytes], base: Entry | None,
         bottom: bool) -> Entry:
    """One entry for a key whose newest entries are merge operands.

    ``head`` is the newest entry (a MERGE), ``operands`` every operand of the
    run newest first (``head``'s included; reversed in place), ``base`` the
    VALUE or DELETE that ended the run, if any. ``bottom``: nothing older
    than these entries exists, so a run without a base resolves too.
    """
    key, seq = head[0], head[1]
    operands.reverse()
    if base is not None:
        old = base[3] if base[2] == KIND_VALUE else None
        return key, seq, KIND_VALUE, need(op).full_merge(key, old, operands)
    if bottom:
        return key, seq, KIND_VALUE, need(op).full_merge(key, None, operands)
    if len(operands) == 1:
        return head
    partial = need(op).partial_merge
    acc = operands[0]
    for operand in operands[1:]:
        acc = partial(key, acc, operand)
    return key, seq, KIND_MERGE, acc
