"""A merge operator over the shard layer's sibling sets, for benchmarks.

The join the shard layer will hand the engine (issue 19): each operand is an
encoded sibling set, and operands combine with ``versions.merge_sets``,
which is associative, commutative and idempotent (while the cap does not
bind). A module of its own, so that compactions in a child process can
unpickle it (the benchmark puts this directory on the child's path).
"""

from __future__ import annotations

from shardserver.protocol.versions import decode_siblings, encode_siblings, merge_sets


class SiblingSetMerge:
    name = "bench-sibling-sets"

    def full_merge(self, key: bytes, base: bytes | None, operands: list[bytes]) -> bytes:
        current = () if base is None else decode_siblings(base)
        for operand in operands:
            current = merge_sets(current, decode_siblings(operand)).siblings
        return encode_siblings(current)

    def partial_merge(self, key: bytes, older: bytes, newer: bytes) -> bytes:
        return encode_siblings(merge_sets(decode_siblings(older), decode_siblings(newer)).siblings)
