"""The versions of one key, delivered in every order through every path of
real ShardStores (issue 19.2): one result, one last-writer-wins winner.

A history of plain and context writes (``tests/property/version_history.py``:
three coordinators with skewed clocks, contexts read from partial replicas)
is delivered to three ShardStores on the fault-injecting in-memory file
system, each version to some of them, in an order drawn per store, each
through a path drawn per delivery:

* a blind write (``write_many``: a merge operand in the memtable, joined
  there with what the key holds, or left above a table's value), alone, in
  a batch with others of the same key, or inline (``try_write_many``);
* ``write_set`` (read repair, handoff, anti-entropy: read, then an operand);
* ``repair_set`` (the put that replaces a corrupt copy, exclusive);

between flushes (operands in level-0 tables, resolved by reads across
levels), compactions (resolved there, the compaction filter seeing the
resolved set) and reopens (operands replayed from the WAL). Stores also
exchange the key as the repair paths do: hinted handoff (scan, write_set),
read repair (reconcile, write_set to the stale) and anti-entropy (Merkle
roots and bucket digests, read both, merge, write_set to each side lacking).

After every step each store holds the join of what reached it (checked
through ``read`` and through ``read_cached`` where cached); in the end every
store holds the join of the whole history (the pure merge's result,
``tests/property/test_version_histories.py``), byte for byte, with the same
winner and the same Merkle root, and that root is a fresh scan's.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.data import reconcile
from lsm import NOT_CACHED
from lsm.faultfs import FaultFileSystem
from lsm.options import Options
from shardserver.aae import stored_digest
from shardserver.protocol.merkle import MerkleTree, bucket_of
from shardserver.protocol.versions import SiblingSet, Version, lww_winner, merge_sets
from shardserver.storage import ShardStore, WriteOp
from tests.property.version_history import BIG_CAP, NOW_MS, REPLICAS, History, fold, histories

pytestmark = pytest.mark.property

P = 2
KEY = b"the-key"
PATHS = ["blind", "blind", "batch", "inline", "set", "repair"]

step_st = st.one_of(
    st.tuples(st.just("deliver"), st.integers(0, REPLICAS - 1), st.sampled_from(PATHS)),
    st.tuples(st.sampled_from(["flush", "compact", "reopen"]), st.integers(0, REPLICAS - 1)),
    st.tuples(st.sampled_from(["handoff", "read_repair", "aae"]),
              st.integers(0, REPLICAS - 1), st.integers(0, REPLICAS - 1)),
)


class Replica:
    """One ShardStore and the join of every version that reached it."""

    def __init__(self, fs: FaultFileSystem, name: str) -> None:
        self.fs, self.path = fs, f"/{name}"
        self.store = self._open()
        self.model: SiblingSet = ()
        self.inbox: list[Version] = []
        self.batch: list[Version] = []

    def _open(self) -> ShardStore:
        options = Options(
            fs=self.fs, fsync="never", memtable_bytes=4096, block_bytes=256,
            target_file_bytes=2048, level1_bytes=4096, level_fanout=2,
            l0_compaction_trigger=2, l0_slowdown_trigger=4, l0_stop_trigger=8, num_levels=4,
            block_cache_bytes=1 << 14,
        )
        # The history's wall clock: its tombstones are within their grace.
        return ShardStore.open(self.path, range(0, 4), options, sibling_cap=BIG_CAP,
                               clock_ms=lambda: NOW_MS)

    def reopen(self) -> None:
        self.store.close()
        self.store = self._open()

    def read(self) -> SiblingSet:
        return self.store.read(P, KEY)

    def took(self, siblings: SiblingSet) -> None:
        self.model = merge_sets(self.model, siblings, BIG_CAP).siblings

    def deliver(self, v: Version, path: str, plain: bool) -> None:
        op = WriteOp(P, KEY, v, "lww" if plain else "merge")
        if path == "batch":
            self.batch.append(v)  # written with the next delivery that is not one
            return
        self.write_batch(plain)
        if path == "blind":
            self.store.write_many([op])
        elif path == "inline":
            if not self.store.try_write_many([op]):
                self.store.write_many([op])
        elif path == "set":
            self.store.write_set(P, KEY, (v,))
        else:
            self.store.repair_set(P, KEY, (v,))
        self.took((v,))

    def write_batch(self, plain: bool) -> None:
        if self.batch:
            # "merge" for all: a plain write's floor already is its id.
            self.store.write_many([WriteOp(P, KEY, b, "merge") for b in self.batch])
            self.took(tuple(self.batch))
            self.batch = []

    def check(self) -> None:
        assert self.read() == self.model
        cached = self.store.read_cached(P, KEY)
        if cached is not NOT_CACHED:
            assert cached == self.store.read_raw(P, KEY)


def handoff(src: Replica, dst: Replica) -> None:
    items, _ = src.store.scan_raw(P)
    for key, _raw in items:
        siblings = src.store.read(P, key)
        dst.store.write_set(P, key, siblings)
        dst.took(siblings)


def read_repair(a: Replica, b: Replica) -> None:
    result = reconcile.reconcile({"a": a.read() or None, "b": b.read() or None}, BIG_CAP)
    for name in result.stale:
        side = a if name == "a" else b
        side.store.write_set(P, KEY, result.merged)
        side.took(result.merged)


def anti_entropy(a: Replica, b: Replica) -> None:
    """As ``coordinator.repair.anti_entropy`` does it for one key."""
    if a.store.tree_level(P, 0, [0]) == b.store.tree_level(P, 0, [0]):
        assert a.store.read_raw(P, KEY) == b.store.read_raw(P, KEY)
        return
    bucket = [bucket_of(KEY)]
    if a.store.bucket_digests(P, bucket) == b.store.bucket_digests(P, bucket):
        return
    ours, theirs = a.read(), b.read()
    merged = merge_sets(ours, theirs, BIG_CAP).siblings
    for side, stored in ((a, ours), (b, theirs)):
        if stored != merged:
            side.store.write_set(P, KEY, merged)
            side.took(merged)


def scanned_root(store: ShardStore) -> int:
    items, _ = store.scan_raw(P)
    return MerkleTree.build((k, stored_digest(raw)) for k, raw in items).root


@given(histories(), st.data())
@settings(deadline=None, max_examples=300)
def test_every_order_and_path_through_the_store_gives_one_result(
    h: History, data: st.DataObject
) -> None:
    expected = fold(h.versions)
    fs = FaultFileSystem(seed=3)
    replicas = [Replica(fs, f"r{i}") for i in range(REPLICAS)]
    try:
        for v in h.versions:
            targets = data.draw(st.sets(st.integers(0, REPLICAS - 1), min_size=1))
            for r in targets:
                replicas[r].inbox.append(v)
        for r in replicas:
            r.inbox = data.draw(st.permutations(r.inbox))
        steps = data.draw(st.lists(step_st, max_size=60))
        # Then whatever is left arrives, through drawn paths.
        steps += [("deliver", i, data.draw(st.sampled_from(PATHS)))
                  for i, r in enumerate(replicas) for _ in r.inbox]
        for step in steps:
            match step:
                case ("deliver", int(i), str(path)):
                    r = replicas[i]
                    if r.inbox:
                        v = r.inbox.pop(0)
                        r.deliver(v, path, v in h.plain)
                case ("flush", int(i)):
                    replicas[i].store.flush()
                case ("compact", int(i)):
                    replicas[i].store.compact(P)
                case ("reopen", int(i)):
                    replicas[i].write_batch(False)
                    replicas[i].reopen()
                case (str(how), int(a), int(b)) if a != b:
                    for r in (replicas[a], replicas[b]):
                        r.write_batch(False)
                    {"handoff": handoff, "read_repair": read_repair,
                     "aae": anti_entropy}[how](replicas[a], replicas[b])
            for r in replicas:
                if not r.batch:
                    r.check()
        for r in replicas:
            r.write_batch(False)
        for a, b in ((0, 1), (1, 2), (0, 1)):  # one round of anti-entropy
            anti_entropy(replicas[a], replicas[b])
        winner = lww_winner(expected)
        raws = set()
        for r in replicas:
            r.check()
            assert r.model == r.read() == expected
            assert lww_winner(r.read()) == winner
            raws.add(r.store.read_raw(P, KEY))
            assert r.store.tree_level(P, 0, [0]) == [scanned_root(r.store)]
        assert len(raws) == 1  # the same bytes everywhere: the same digests
        roots = {r.store.tree_level(P, 0, [0])[0] for r in replicas}
        assert len(roots) == 1
    finally:
        for r in replicas:
            r.store.close()
