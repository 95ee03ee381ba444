"""Merge operators for tests, at module level so that compactions in a child
process can unpickle them (``tests`` is importable from the repository root,
which the child gets on its path)."""

from __future__ import annotations

ITEM = 8  # bytes per item of a UnionOperator value


def items(value: bytes) -> set[bytes]:
    if len(value) % ITEM:
        raise ValueError(f"union operand of {len(value)} bytes is not a multiple of {ITEM}")
    return {value[i : i + ITEM] for i in range(0, len(value), ITEM)}


def pack(members: set[bytes]) -> bytes:
    return b"".join(sorted(members))


class UnionOperator:
    """Set union of 8-byte items, stored sorted: associative, commutative
    and idempotent, like the shard layer's join of sibling sets."""

    name = "test-union-8"

    def full_merge(self, key: bytes, base: bytes | None, operands: list[bytes]) -> bytes:
        out = set() if base is None else items(base)
        for operand in operands:
            out |= items(operand)
        return pack(out)

    def partial_merge(self, key: bytes, older: bytes, newer: bytes) -> bytes:
        return pack(items(older) | items(newer))


class AppendOperator:
    """``base|op1|op2...`` (``~`` for no base): associative but not
    commutative, so every result shows the order the operands were applied
    in."""

    name = "test-append"

    def full_merge(self, key: bytes, base: bytes | None, operands: list[bytes]) -> bytes:
        return b"|".join([b"~" if base is None else base, *operands])

    def partial_merge(self, key: bytes, older: bytes, newer: bytes) -> bytes:
        return older + b"|" + newer


class OtherAppendOperator(AppendOperator):
    """The same function under another name."""

    name = "test-append-v2"


class PickyOperator(AppendOperator):
    """Refuses the operand ``b"boom"``, as an operator may refuse bad input."""

    name = "test-picky"

    def full_merge(self, key: bytes, base: bytes | None, operands: list[bytes]) -> bytes:
        if b"boom" in operands:
            raise ValueError("operand b'boom' refused")
        return super().full_merge(key, base, operands)

    def partial_merge(self, key: bytes, older: bytes, newer: bytes) -> bytes:
        if b"boom" in (older, newer):
            raise ValueError("operand b'boom' refused")
        return super().partial_merge(key, older, newer)
