from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardserver.protocol.merkle import (
    LEAVES,
    MerkleTree,
    bucket_of,
    diff_leaves,
    pack_nodes,
    unpack_nodes,
)

items_st = st.dictionaries(
    st.binary(min_size=1, max_size=12), st.binary(min_size=8, max_size=8), max_size=60
)


def test_identical_replicas_have_equal_roots_and_no_diff() -> None:
    data = {b"k%d" % i: b"%08d" % i for i in range(500)}
    a, b = MerkleTree.build(data.items()), MerkleTree.build(reversed(list(data.items())))
    assert a.root == b.root and diff_leaves(a, b) == []


def test_one_changed_key_shows_as_its_bucket_only() -> None:
    data = {b"k%d" % i: b"%08d" % i for i in range(500)}
    a = MerkleTree.build(data.items())
    data[b"k7"] = b"changed!"
    b = MerkleTree.build(data.items())
    assert diff_leaves(a, b) == [bucket_of(b"k7")]


def test_encode_round_trip_and_bad_length() -> None:
    a = MerkleTree.build([(b"x", b"12345678")])
    assert MerkleTree.decode(a.encode()).levels == a.levels
    with pytest.raises(ValueError, match="merkle leaves"):
        MerkleTree.decode(b"short")


@pytest.mark.property
@settings(max_examples=200)
@given(before=items_st, after=items_st)
def test_incremental_updates_equal_a_rebuild_and_diff_is_exact(
    before: dict[bytes, bytes], after: dict[bytes, bytes]
) -> None:
    tree = MerkleTree.build(before.items())
    for key in set(before) | set(after):
        tree.update(key, before.get(key), after.get(key))
    rebuilt = MerkleTree.build(after.items())
    assert tree.levels == rebuilt.levels
    changed = {bucket_of(k) for k in set(before) | set(after) if before.get(k) != after.get(k)}
    found = diff_leaves(MerkleTree.build(before.items()), rebuilt)
    assert set(found) <= changed  # never a bucket that did not change
    assert all(0 <= i < LEAVES for i in found)
    # A changed bucket is missed only if its changes cancel exactly (same
    # set of (key, digest) pairs), which cannot happen for distinct pairs.
    assert set(found) == changed


def test_patch_leaf_equals_a_build_with_that_leaf() -> None:
    data = {b"k%d" % i: b"%08d" % i for i in range(200)}
    tree = MerkleTree.build(data.items())
    data[b"k3"] = b"changed!"
    want = MerkleTree.build(data.items())
    leaf = bucket_of(b"k3")
    tree.patch_leaf(leaf, want.levels[-1][leaf])
    assert tree.levels == want.levels
    tree.patch_leaf(leaf, want.levels[-1][leaf])  # idempotent
    assert tree.levels == want.levels


def test_nodes_pack_to_16_bytes_each() -> None:
    values = [0, 1, (1 << 128) - 1, 12345 << 70]
    packed = pack_nodes(values)
    assert len(packed) == 16 * len(values)
    assert unpack_nodes(packed) == values
    with pytest.raises(ValueError, match="multiple of 16"):
        unpack_nodes(packed[:-1])
