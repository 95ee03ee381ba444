"""Merkle trees kept by ShardStore (shardserver.aae): the root a peer gets
always equals the root of a fresh scan of what every write before the
request left, whatever writes ran during the scans that build and correct
the trees; a tree nobody wrote is not scanned again; identity conflicts;
drops."""

from __future__ import annotations

import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsm.options import Options
from shardserver import aae
from shardserver.protocol.hlc import make_hlc
from shardserver.protocol.merkle import DEPTH, FANOUT, LEAVES, MerkleTree, bucket_of
from shardserver.protocol.vclock import ActorId, VClock
from shardserver.protocol.versions import Version, digest
from shardserver.storage import ShardStore, WriteOp

A = ActorId(b"a#0")
B = ActorId(b"b#0")
DAY_MS = 24 * 3600 * 1000
NOW_MS = 1_700_000_000_000


def ver(actor: ActorId, wall_ms: int, value: bytes | None) -> Version:
    hlc = make_hlc(wall_ms)
    return Version(VClock.of({actor: hlc}), hlc, actor, value)


def open_store(path: str, clock: Callable[[], int] = lambda: NOW_MS) -> ShardStore:
    s = ShardStore.open(path, range(0, 4), Options(memtable_bytes=32 << 10, fsync="never"),
                        tombstone_grace_ms=DAY_MS, clock_ms=clock)
    s.trees.page_keys = 7  # many pages, so writes land between them
    s.trees.pause_ratio = 0.0
    return s


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShardStore]:
    s = open_store(str(tmp_path / "db"))
    try:
        yield s
    finally:
        s.close()


def rebuilt(store: ShardStore, p: int) -> MerkleTree:
    """The tree a fresh scan of the engine gives, with versions.digest."""
    items: list[tuple[bytes, bytes]] = []
    after = None
    while True:
        page = store.scan(p, after, limit=1000)
        items += [(k, digest(s)) for k, s in page.items]
        if page.next_after is None:
            return MerkleTree.build(items)
        after = page.next_after


def kept(store: ShardStore, p: int) -> list[list[int]]:
    """The store's tree of ``p``, every level (building it if needed)."""
    return [store.tree_level(p, d, list(range(FANOUT**d))) for d in range(DEPTH + 1)]


def test_stored_digest_is_versions_digest(store: ShardStore) -> None:
    r = store.write_set(1, b"k", (ver(A, NOW_MS, b"a"), ver(B, NOW_MS, None)))
    raw = store.read_raw(1, b"k")
    assert raw is not None and aae.stored_digest(raw) == digest(r.siblings)


# -- the tree answers for every write before the request -----------------------------

ops_st = st.lists(
    st.tuples(
        st.sampled_from(["lww", "merge", "inline", "set", "root", "levels", "buckets", "drop"]),
        st.integers(0, 1),  # partition
        st.integers(0, 30),  # key
        st.integers(0, 50),  # time
        st.sampled_from([A, B]),
        st.none() | st.binary(max_size=3),
    ),
    max_size=60,
)


@pytest.mark.property
@settings(max_examples=100)
@given(ops_st)
def test_a_root_request_sees_every_write_before_it(ops: list[tuple[Any, ...]]) -> None:
    """Whatever mix of writes (blind, inline, read-then-write), builds,
    deeper-level requests, bucket rescans and drops came before, the root a
    peer gets is the root of a fresh scan; a partition nobody wrote since its
    tree was built is not scanned again."""
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(tmp)
        try:
            for op, p, k, t, actor, value in ops:
                key = b"key%d" % k
                v = ver(actor, NOW_MS + t, value)
                if op in ("lww", "merge"):
                    store.write(p, key, v, op)
                elif op == "inline":
                    if not store.try_write_many([WriteOp(p, key, v)]):
                        store.write(p, key, v)
                elif op == "set":
                    store.write_set(p, key, (v,))
                elif op == "root":
                    assert store.tree_level(p, 0, [0]) == [rebuilt(store, p).root]
                elif op == "levels":
                    store.tree_level(p, DEPTH, [t])
                elif op == "buckets":
                    store.bucket_digests(p, [bucket_of(key), t])
                else:
                    store.drop_partition(p)
            for p in (0, 1):
                assert kept(store, p) == rebuilt(store, p).levels
                builds = store.trees.builds
                assert kept(store, p) == rebuilt(store, p).levels
                assert store.trees.builds == builds  # nothing written: no scan
        finally:
            store.close()


def test_writes_during_a_build_make_the_next_root_request_scan_again(
    store: ShardStore,
) -> None:
    """Writes land during every page read of the build: the tree it made
    is stale, so the next root request builds again; deeper levels of the
    same exchange come from the tree the root came from."""
    for i in range(60):
        store.write(1, b"k%02d" % i, ver(A, NOW_MS, b"v0"))
    real = store.trees._scan_page
    rng = random.Random(7)
    n = 0

    def busy_page(p: int, after: bytes | None, limit: int) -> Any:
        nonlocal n
        for _ in range(3):
            n += 1
            store.write(1, b"k%02d" % rng.randrange(70), ver(A, NOW_MS + n, b"v%d" % n))
        return real(p, after, limit)

    before = rebuilt(store, 1)
    store.trees._scan_page = busy_page
    root = store.tree_level(1, 0, [0])
    store.trees._scan_page = real
    assert root != [before.root] and n > 0  # it saw the writes before its pages
    builds = store.trees.builds
    store.tree_level(1, DEPTH, list(range(LEAVES)))  # a deeper level: no new scan
    assert store.trees.builds == builds
    assert kept(store, 1) == rebuilt(store, 1).levels  # the root scans again
    assert store.trees.builds == builds + 1


@pytest.mark.parametrize("scan", ["build", "rescan"])
@pytest.mark.parametrize("stage", ["before_engine_write", "after_engine_write"])
@pytest.mark.parametrize("existing", [True, False])
def test_a_write_in_flight_during_a_scan_is_seen_by_the_next_root_request(
    store: ShardStore, monkeypatch: pytest.MonkeyPatch, scan: str, stage: str, existing: bool
) -> None:
    for i in range(30):
        store.write(2, b"k%02d" % i, ver(A, NOW_MS, b"v0"))
    key = b"k05" if existing else b"k05x"
    store.tree_level(2, 0, [0])
    entered, release = threading.Event(), threading.Event()
    real_write = store.db.write

    def slow_write(batch: Any) -> None:
        if stage == "after_engine_write":
            real_write(batch)
        entered.set()
        assert release.wait(10)
        if stage == "before_engine_write":
            real_write(batch)

    monkeypatch.setattr(store.db, "write", slow_write)
    writer = threading.Thread(target=store.write, args=(2, key, ver(B, NOW_MS + 9, b"new")))
    writer.start()
    assert entered.wait(10)
    # The whole scan runs while the write is in flight.
    if scan == "build":
        store.trees.drop([2])
        store.tree_level(2, 0, [0])
    else:
        store.bucket_digests(2, [bucket_of(key)])
    release.set()
    writer.join(10)
    monkeypatch.setattr(store.db, "write", real_write)
    assert store.read(2, key)[0].value == b"new"
    assert kept(store, 2) == rebuilt(store, 2).levels


def test_concurrent_writers_builds_and_rescans(store: ShardStore) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                while not stop.is_set():
                    fn()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
        return run

    rng = random.Random(1)

    def write() -> None:
        p, i = rng.randrange(3), rng.randrange(200)
        value = None if i % 7 == 0 else b"v%d" % rng.randrange(1000)
        v = ver(rng.choice([A, B]), NOW_MS + rng.randrange(99), value)
        if i % 3:
            store.write(p, b"k%03d" % i, v)
        else:
            store.write_set(p, b"k%03d" % i, (v,))

    def build() -> None:
        store.tree_level(rng.randrange(3), 0, [0])

    def rescan() -> None:
        store.bucket_digests(rng.randrange(3), rng.sample(range(LEAVES), 50))

    threads = [threading.Thread(target=guard(f)) for f in (write, write, write, build, rescan)]
    for t in threads:
        t.start()
    stop.wait(1.5)
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert store.trees.builds > 3
    for p in range(3):
        assert kept(store, p) == rebuilt(store, p).levels


# -- drift, drops, conflicts --------------------------------------------------------------


def test_a_rescan_corrects_leaves_compaction_changed_behind_the_tree(tmp_path: Path) -> None:
    now = [NOW_MS]
    store = open_store(str(tmp_path / "db"), clock=lambda: now[0])
    try:
        store.write(1, b"dead", ver(A, NOW_MS, None))
        store.write(1, b"live", ver(A, NOW_MS, b"v"))
        assert [k for k, _ in store.bucket_digests(1, [bucket_of(b"dead")])] == [b"dead"]
        store.tree_level(1, 0, [0])
        now[0] = NOW_MS + DAY_MS + 1
        # Past the grace the set is as good as gone: not offered to peers.
        assert store.bucket_digests(1, [bucket_of(b"dead")]) == []
        store.compact()  # the filter drops it without telling the tree
        assert store.read(1, b"dead") == ()
        assert kept(store, 1) != rebuilt(store, 1).levels
        fixes = store.trees.leaf_fixes
        store.bucket_digests(1, [bucket_of(b"dead")])
        assert store.trees.leaf_fixes == fixes + 1
        assert kept(store, 1) == rebuilt(store, 1).levels
    finally:
        store.close()


def test_drop_and_set_partitions_forget_trees(store: ShardStore) -> None:
    store.write(1, b"k", ver(A, NOW_MS, b"v"))
    store.write(2, b"k", ver(A, NOW_MS, b"v"))
    store.tree_level(1, 0, [0])
    store.tree_level(2, 0, [0])
    assert store.stats()["aae"]["trees"] == 2
    store.drop_partition(1)
    assert store.stats()["aae"]["trees"] == 1
    assert store.tree_level(1, 0, [0]) == [0]  # rebuilt: empty partition
    store.set_partitions({1})
    assert store.stats()["aae"]["trees"] == 1


def test_a_failed_engine_write_makes_the_tree_stale(
    store: ShardStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(1, b"k", ver(A, NOW_MS, b"v"))
    store.tree_level(1, 0, [0])
    builds = store.trees.builds

    def broken(batch: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(store.db, "write", broken)
    with pytest.raises(OSError):
        store.write(1, b"k", ver(A, NOW_MS + 1, b"w"))
    store.tree_level(1, 0, [0])  # its outcome is unknown: scanned again
    assert store.trees.builds == builds + 1


def test_a_build_during_a_drop_does_not_install_its_tree(store: ShardStore) -> None:
    store.write(1, b"k", ver(A, NOW_MS, b"v"))
    real = store.trees._scan_page

    def dropping(p: int, after: bytes | None, limit: int) -> Any:
        page = real(p, after, limit)
        store.trees.drop([p])
        return page

    store.trees._scan_page = dropping
    store.tree_level(1, 0, [0])
    assert store.stats()["aae"]["trees"] == 0


def test_write_set_refuses_a_conflicting_copy_and_repair_set_replaces_it(
    store: ShardStore,
) -> None:
    good = ver(A, NOW_MS, b"good")
    rotten = Version(good.clock, good.hlc, good.actor, b"r0tten")
    other = ver(B, NOW_MS + 1, b"other")  # concurrent with both
    store.write_set(1, b"k", (good,))
    # Read repair or handoff offering the rotten copy must not spread it.
    assert store.write_set(1, b"k", (rotten, other)).siblings == (good, other)
    store.write_set(1, b"bad", (rotten,))
    assert store.repair_set(1, b"bad", (good,)).siblings == (good,)
    counters = store.stats()["store"]
    assert counters["identity_conflicts"] == 2
    assert kept(store, 1) == rebuilt(store, 1).levels
