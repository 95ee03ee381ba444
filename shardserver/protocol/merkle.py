"""Merkle trees for anti-entropy (DESIGN §8), pure.

One tree per partition. Keys fall into a fixed number of leaf buckets by key
hash, so two replicas' trees line up bucket for bucket no matter what keys
they hold. A leaf is the XOR of ``H(key, version digest)`` over the keys in
its bucket, and every inner node is the XOR of its children. XOR makes
updates incremental and order-free: a write changes one leaf by
``H(key, old) ^ H(key, new)`` and each ancestor by the same amount, with no
rescan. ``H`` is a 128-bit keyed blake2b, so accidental cancellation is out
of reach.

Shape: ``FANOUT`` children per node, ``DEPTH`` levels below the root;
level 0 is the root, level ``DEPTH`` the leaves. Two replicas compare level
by level, descending only into nodes that differ (:func:`differing`); in the
end only the keys of differing leaves are exchanged, so repair traffic is
proportional to the difference, not to the partition.

Lives in shardserver.protocol because both sides need it: workers maintain
the trees, coordinators run the exchange.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

FANOUT = 32
DEPTH = 2
LEAVES = FANOUT**DEPTH  # 1024
#: Node values are 128-bit; on the wire each is 16 bytes, big-endian.
NODE_BYTES = 16
_H = struct.Struct("<QQ")
_PERSON = b"ringkv-aae-v1"


def bucket_of(key: bytes) -> int:
    h = hashlib.blake2b(key, digest_size=8, person=b"ringkv-bucket").digest()
    return int(int.from_bytes(h, "big") % LEAVES)


def entry_hash(key: bytes, version_digest: bytes) -> int:
    h = hashlib.blake2b(digest_size=16, person=_PERSON)
    h.update(len(key).to_bytes(4, "big"))
    h.update(key)
    h.update(version_digest)
    return int.from_bytes(h.digest(), "big")


class MerkleTree:
    """Leaves plus cached inner levels, all kept current on every update."""

    __slots__ = ("levels",)

    def __init__(self) -> None:
        # levels[d] has FANOUT**d nodes; levels[DEPTH] are the leaves.
        self.levels: list[list[int]] = [[0] * (FANOUT**d) for d in range(DEPTH + 1)]

    @classmethod
    def build(cls, items: Iterable[tuple[bytes, bytes]]) -> MerkleTree:
        """From ``(key, version digest)`` pairs, e.g. a throttled scan."""
        tree = cls()
        leaves = tree.levels[DEPTH]
        for key, digest in items:
            leaves[bucket_of(key)] ^= entry_hash(key, digest)
        tree._recompute()
        return tree

    def _recompute(self) -> None:
        for d in range(DEPTH - 1, -1, -1):
            below = self.levels[d + 1]
            self.levels[d] = [_xor(below[i * FANOUT : (i + 1) * FANOUT]) for i in range(FANOUT**d)]

    def update(self, key: bytes, old_digest: bytes | None, new_digest: bytes | None) -> None:
        """Account for a key whose version changed (``None``: absent)."""
        delta = 0
        if old_digest is not None:
            delta ^= entry_hash(key, old_digest)
        if new_digest is not None:
            delta ^= entry_hash(key, new_digest)
        if not delta:
            return
        index = bucket_of(key)
        for d in range(DEPTH, -1, -1):
            self.levels[d][index] ^= delta
            index //= FANOUT

    def patch_leaf(self, index: int, value: int) -> None:
        """Set leaf ``index`` to ``value`` and its ancestors to match (a leaf
        found wrong by a rescan of its bucket)."""
        delta = self.levels[DEPTH][index] ^ value
        if not delta:
            return
        for d in range(DEPTH, -1, -1):
            self.levels[d][index] ^= delta
            index //= FANOUT

    @property
    def root(self) -> int:
        return self.levels[0][0]

    def nodes(self, depth: int, indices: Sequence[int]) -> list[int]:
        """Values of the given nodes at ``depth`` (what a peer asks for)."""
        level = self.levels[depth]
        return [level[i] for i in indices]

    def encode(self) -> bytes:
        return b"".join(_H.pack(v >> 64, v & (2**64 - 1)) for v in self.levels[DEPTH])

    @classmethod
    def decode(cls, data: bytes) -> MerkleTree:
        if len(data) != LEAVES * _H.size:
            raise ValueError(f"merkle leaves need {LEAVES * _H.size} bytes, got {len(data)}")
        tree = cls()
        tree.levels[DEPTH] = [(hi << 64) | lo for hi, lo in _H.iter_unpack(data)]
        tree._recompute()
        return tree


def pack_nodes(values: Iterable[int]) -> bytes:
    """Node values as the wire carries them (msgpack ints stop at 64 bits)."""
    return b"".join(v.to_bytes(NODE_BYTES, "big") for v in values)


def unpack_nodes(data: bytes) -> list[int]:
    if len(data) % NODE_BYTES:
        raise ValueError(f"merkle nodes need a multiple of {NODE_BYTES} bytes, got {len(data)}")
    return [
        int.from_bytes(data[i : i + NODE_BYTES], "big") for i in range(0, len(data), NODE_BYTES)
    ]


def _xor(values: Iterable[int]) -> int:
    out = 0
    for v in values:
        out ^= v
    return out


def children(indices: Iterable[int]) -> list[int]:
    return [i * FANOUT + c for i in indices for c in range(FANOUT)]


def differing(local: Sequence[int], remote: Sequence[int], indices: Sequence[int]) -> list[int]:
    """Indices whose local and remote node values differ."""
    return [i for i, a, b in zip(indices, local, remote, strict=True) if a != b]


def diff_leaves(a: MerkleTree, b: MerkleTree) -> list[int]:
    """Leaf buckets that differ, found the way two replicas would: level by
    level, asking only for children of nodes that differ."""
    frontier = [0]
    for depth in range(DEPTH + 1):
        frontier = differing(a.nodes(depth, frontier), b.nodes(depth, frontier), frontier)
        if not frontier or depth == DEPTH:
            return frontier
        frontier = children(frontier)
    return frontier
