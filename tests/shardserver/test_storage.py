"""ShardStore: plain and context writes (one merge), scans, partition
isolation, and deletion through compaction (tombstone grace, dropped
partitions)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from lsm.options import Decision, Options
from shardserver.layout import ShardCompactionFilter, storage_key
from shardserver.protocol.hlc import make_hlc
from shardserver.protocol.vclock import ActorId, VClock
from shardserver.protocol.versions import Version, as_plain, encode_siblings, plain_version
from shardserver.storage import BadRequestError, PartitionNotServedError, ShardStore, WriteOp

A = ActorId(b"a#0")
B = ActorId(b"b#0")
DAY_MS = 24 * 3600 * 1000
NOW_MS = 1_700_000_000_000


def ver(actor: ActorId, wall_ms: int, value: bytes | None, clock: dict[ActorId, int] | None = None
        ) -> Version:
    hlc = make_hlc(wall_ms)
    return Version(VClock.of(clock if clock is not None else {actor: hlc}), hlc, actor, value)


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW_MS)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[ShardStore]:
    s = ShardStore.open(
        # Every compaction in a child (as big ones are): the filter travels pickled.
        str(tmp_path / "db"), range(0, 8),
        Options(memtable_bytes=64 << 10, fsync="never", compaction_child_min_entries=0),
        tombstone_grace_ms=DAY_MS, clock_ms=clock,
    )
    try:
        yield s
    finally:
        s.close()


def test_lww_write_replaces_older_and_ignores_stale(store: ShardStore) -> None:
    old, new = ver(A, NOW_MS, b"old"), ver(B, NOW_MS + 5, b"new")
    store.write(1, b"k", old)
    store.write(1, b"k", new)
    assert [v.value for v in store.read(1, b"k")] == [b"new"]
    store.write(1, b"k", old)  # redelivery of an older write: no change
    assert store.read(1, b"k") == (as_plain(new),)
    store.flush()
    store.write(1, b"k", old)  # now an operand above the table's value
    assert store.read(1, b"k") == (as_plain(new),)


def test_plain_and_context_writes_merge_alike_in_any_order(store: ShardStore) -> None:
    """One merge for both modes: the stored set does not depend on the order
    writes arrive in, and a plain write is stored exactly as it was sent."""
    vset = ver(A, NOW_MS + 1, b"vset", {})
    plain = plain_version(B, make_hlc(NOW_MS + 2), b"plain")
    late = ver(A, NOW_MS + 3, b"late", {})
    for key, order in ((b"k1", [vset, plain, late]), (b"k2", [late, plain, vset])):
        for v in order:
            store.write(5, key, v, "lww" if v is plain else "merge")
    assert store.read(5, b"k1") == store.read(5, b"k2") == (plain, late)


def test_merge_keeps_concurrent_siblings_and_replaces_dominated(store: ShardStore) -> None:
    a, b = ver(A, NOW_MS, b"a"), ver(B, NOW_MS + 1, b"b")
    store.write(2, b"k", a, "merge")
    store.write(2, b"k", b, "merge")
    assert {v.value for v in store.read(2, b"k")} == {b"a", b"b"}
    both = ver(A, NOW_MS + 2, b"c", {A: a.hlc + 10, B: b.hlc})
    store.write(2, b"k", both, "merge")
    assert store.read(2, b"k") == (both,)


def test_write_set_and_write_many_in_one_batch(store: ShardStore) -> None:
    a, b = ver(A, NOW_MS, b"a"), ver(B, NOW_MS + 1, b"b")
    assert store.write_set(3, b"k", (a, b)).siblings == (a, b)
    store.write_many(
        [WriteOp(3, b"x", a, "merge"), WriteOp(3, b"x", b, "merge"), WriteOp(4, b"x", a)]
    )
    assert store.read(3, b"x") == (a, b)
    assert store.read(4, b"x") == (as_plain(a),)  # mode "lww": a plain write


def test_partitions_are_isolated(store: ShardStore) -> None:
    store.write(1, b"k", ver(A, NOW_MS, b"one"))
    store.write(2, b"k", ver(A, NOW_MS, b"two"))
    assert store.read(1, b"k")[0].value == b"one"
    assert store.read(2, b"k")[0].value == b"two"
    assert store.read(3, b"k") == ()
    assert [k for k, _ in store.scan(1).items] == [b"k"]


def test_rejects_foreign_partitions_and_bad_keys(store: ShardStore) -> None:
    with pytest.raises(PartitionNotServedError):
        store.read(8, b"k")
    with pytest.raises(PartitionNotServedError):
        store.write(-1, b"k", ver(A, NOW_MS, b"v"))
    with pytest.raises(BadRequestError):
        store.write(1, b"", ver(A, NOW_MS, b"v"))
    with pytest.raises(BadRequestError):
        store.read(1, b"x" * 1025)


def test_scan_pages_through_a_partition_in_order(store: ShardStore) -> None:
    keys = sorted(f"key{i:03d}".encode() for i in range(25))
    for k in reversed(keys):
        store.write(5, k, ver(A, NOW_MS, k))
    store.write(4, b"zzz", ver(A, NOW_MS, b"other"))
    store.write(6, b"aaa", ver(A, NOW_MS, b"other"))
    store.flush()
    seen: list[bytes] = []
    after: bytes | None = None
    for _ in range(10):
        page = store.scan(5, after, limit=10)
        seen += [k for k, _ in page.items]
        assert all(s[0].value == k for k, s in page.items)
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == keys


def test_scan_after_a_key_that_is_a_prefix(store: ShardStore) -> None:
    for k in (b"a", b"a\x00", b"ab"):
        store.write(1, k, ver(A, NOW_MS, k))
    page = store.scan(1, b"a", limit=10)
    assert [k for k, _ in page.items] == [b"a\x00", b"ab"]


def test_filter_decisions_and_pickling() -> None:
    f = ShardCompactionFilter(frozenset({1}), DAY_MS, NOW_MS + 2 * DAY_MS)
    assert pickle.loads(pickle.dumps(f)) == f
    live = encode_siblings((ver(A, NOW_MS, b"v"),))
    dead = encode_siblings((ver(A, NOW_MS, None),))
    fresh_dead = encode_siblings((ver(A, NOW_MS + 2 * DAY_MS - 1, None),))
    assert f(storage_key(1, b"k"), live)[0] == Decision.KEEP
    assert f(storage_key(2, b"k"), live)[0] == Decision.DROP
    assert f(storage_key(1, b"k"), dead)[0] == Decision.DROP
    assert f(storage_key(1, b"k"), fresh_dead)[0] == Decision.KEEP
    assert f(storage_key(1, b"k"), b"\x01\xc0garbage")[0] == Decision.KEEP
    assert f(b"\x00", b"meta")[0] == Decision.KEEP
    keep_all = ShardCompactionFilter(None, DAY_MS, NOW_MS)
    assert keep_all(storage_key(7, b"k"), live)[0] == Decision.KEEP


def test_compaction_drops_old_tombstones_only_after_grace(
    store: ShardStore, clock: Clock
) -> None:
    store.write(1, b"gone", ver(A, NOW_MS, None))
    store.write(1, b"mixed", ver(A, NOW_MS, b"live"), "merge")
    store.write(1, b"mixed", ver(B, NOW_MS, None), "merge")
    store.write(1, b"kept", ver(A, NOW_MS, b"v"))
    store.compact()
    assert store.read(1, b"gone") != ()  # within grace: the tombstone stays
    clock.now = NOW_MS + DAY_MS + 1
    store.compact()  # a real compaction, in the child process: the filter is pickled
    assert store.read(1, b"gone") == ()
    assert len(store.read(1, b"mixed")) == 2  # a live sibling keeps the whole set
    assert store.read(1, b"kept")[0].value == b"v"
    # The data sat at the bottom level: only the bottommost rewrite lets the
    # filter see it, and the filter (not a delete) removed it.
    assert store.stats()["engine"]["counters"]["compaction_filtered"] >= 1


def test_filter_drops_old_tombstones_in_a_real_compaction(
    store: ShardStore, clock: Clock
) -> None:
    store.write(1, b"gone", ver(A, NOW_MS, None))
    store.write(1, b"kept", ver(A, NOW_MS, b"v"))
    store.flush()  # a level-0 file: compact_range rewrites it through the filter
    clock.now = NOW_MS + DAY_MS + 1
    store.compact()
    assert store.read(1, b"gone") == ()
    assert store.read(1, b"kept")[0].value == b"v"
    assert store.db.stats()["counters"]["compaction_filtered"] == 1


def test_drop_partition_removes_it_through_compaction(store: ShardStore) -> None:
    for p in (1, 2, 3):
        for i in range(50):
            store.write(p, b"k%d" % i, ver(A, NOW_MS, b"v"))
    store.flush()
    store.drop_partition(2)
    assert store.scan(2, limit=100).items == []
    assert len(store.scan(1, limit=100).items) == 50
    assert len(store.scan(3, limit=100).items) == 50
    assert store.held() == frozenset(range(8)) - {2}
    # A later write re-claims the partition: it is not dropped by the next compaction.
    store.write(2, b"again", ver(A, NOW_MS, b"v"))
    store.compact()
    assert store.read(2, b"again")[0].value == b"v"
    assert store.held() == frozenset(range(8))


def test_set_partitions_drops_foreign_data_at_next_compaction(store: ShardStore) -> None:
    for p in (4, 5):
        store.write(p, b"k", ver(A, NOW_MS, b"v"))
    store.set_partitions({4})
    assert store.read(5, b"k") != ()  # lazily: nothing happens before a compaction
    store.compact()
    assert store.read(5, b"k") == ()
    assert store.read(4, b"k") != ()
    assert store.stats()["held"] == [4]

