"""Partition drops fenced against writes (shardserver/fence.py, issue 13
point 2): the fence's rules, then a real store raced by writer threads
against conditional drops, every acknowledged write accounted for."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lsm.options import Options
from shardserver.errors import PartitionChangedError, PartitionDroppingError
from shardserver.fence import DropFence, FenceBusy
from shardserver.protocol.hlc import make_hlc
from shardserver.protocol.vclock import ActorId, VClock
from shardserver.protocol.versions import Version
from shardserver.storage import ShardStore, WriteOp

A = ActorId(b"a#0")
NOW_MS = 1_700_000_000_000


def ver(i: int) -> Version:
    hlc = make_hlc(NOW_MS + i)
    return Version(VClock.of({A: hlc}), hlc, A, b"v%d" % i)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShardStore]:
    s = ShardStore.open(str(tmp_path / "db"), range(0, 4),
                        Options(memtable_bytes=64 << 10, fsync="never"))
    try:
        yield s
    finally:
        s.close()


def test_a_write_completed_or_in_flight_since_the_mark_refuses_the_drop() -> None:
    fence = DropFence()
    mark = fence.mark(1)
    with fence.writing({1}), pytest.raises(PartitionChangedError):  # in flight
        fence.dropping(range(1, 2), mark).__enter__()
    with pytest.raises(PartitionChangedError):  # completed since the mark
        fence.dropping(range(1, 2), mark).__enter__()
    assert fence.mark(2) == mark  # other partitions keep theirs
    with fence.dropping(range(1, 2), fence.mark(1)):
        with pytest.raises(PartitionDroppingError):
            fence.writing({0, 1}).__enter__()
        with fence.writing({0}):  # not being dropped
            pass
    with fence.writing({1}):  # the drop ended
        pass


def test_marks_do_not_survive_a_restart() -> None:
    before, after = DropFence(), DropFence()
    assert before.mark(0) != after.mark(0)


def test_an_unconditional_drop_waits_for_writes_in_flight() -> None:
    fence = DropFence()
    order: list[str] = []
    writing = threading.Event()

    def writer() -> None:
        with fence.writing({3}):
            writing.set()
            time.sleep(0.2)
            order.append("write done")

    t = threading.Thread(target=writer)
    t.start()
    assert writing.wait(5)
    with fence.dropping(range(0, 4)):
        order.append("drop starts")
    t.join(5)
    assert order == ["write done", "drop starts"]


def test_store_drop_with_a_mark(store: ShardStore) -> None:
    store.write(1, b"a", ver(1))
    mark = store.write_mark(1)
    store.write(1, b"late", ver(2))
    with pytest.raises(PartitionChangedError):
        store.drop_partition(1, if_mark=mark)
    assert store.read(1, b"late")[0].value == b"v2"
    store.drop_partition(1, if_mark=store.write_mark(1))
    assert store.scan(1).items == []


def test_writes_racing_conditional_drops_lose_nothing(store: ShardStore) -> None:
    """Writers hit partition 1 in bursts; a dropper scans it (the handoff's
    pass: what it delivers), then drops it with the mark read before the
    scan. Every acknowledged write was either delivered by a pass whose drop
    succeeded, or is still stored.

    Every other attempt holds the writers back while it scans and lets them
    go just before its drop (a handoff whose partition's writes moved
    elsewhere), so drops succeed and the partition stays small; the attempts
    in between race writers through the whole pass and wait for one more
    acknowledged write before dropping, which the drop must refuse.
    Without the held attempts, a partition that grew faster than one pass
    could scan it never dropped again and each pass only got slower."""
    stop = threading.Event()
    go = threading.Event()
    go.set()
    acked: list[bytes] = []
    refused = 0
    lock = threading.Lock()

    def writer(w: int) -> None:
        nonlocal refused
        rng = random.Random(w)
        for i in range(1_000_000):
            if stop.is_set():
                return
            if i % 10 == 0:  # bursts, so some drops find a quiet moment
                time.sleep(rng.uniform(0, 0.01))
            if not go.is_set():
                go.wait(1)
                continue
            key = b"w%d-%d" % (w, i)
            try:
                store.write(1, key, ver(i))
            except PartitionDroppingError:
                with lock:
                    refused += 1
                time.sleep(0.001)  # a coordinator tries elsewhere or later
                continue
            with lock:
                acked.append(key)

    delivered: set[bytes] = set()
    drops = conflicts = 0
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120  # a guard only: 100 attempts take seconds
        for attempt in range(100):
            if time.monotonic() > deadline:
                break
            held = attempt % 2 == 1
            if held:
                go.clear()
            mark = store.write_mark(1)
            page = store.scan(1, None, 1000)
            seen = {k for k, _ in page.items}
            while page.next_after is not None:
                page = store.scan(1, page.next_after, 1000)
                seen |= {k for k, _ in page.items}
            go.set()
            if not held:  # let a write land during the pass: this drop must see it
                landed = len(acked) + 1
                until = time.monotonic() + 1
                while len(acked) < landed and time.monotonic() < until:
                    time.sleep(0.001)
            try:
                store.drop_partition(1, if_mark=mark)
            except PartitionChangedError:
                conflicts += 1
                continue
            delivered |= seen
            drops += 1
            time.sleep(0.005)  # as a handoff would: the partition fills again
    finally:
        stop.set()
        go.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads), "a writer did not finish within 30 s"
    left = {k for k, _ in store.scan(1, None, 1_000_000).items}
    lost = [k for k in acked if k not in delivered and k not in left]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost, e.g. {lost[:3]}"
    assert drops >= 20 and conflicts >= 5 and len(acked) >= 500, (drops, conflicts, len(acked))


def test_an_exclusive_write_waits_for_writes_in_flight_and_holds_new_ones_off() -> None:
    fence = DropFence()
    events: list[str] = []
    inside = threading.Event()
    leave = threading.Event()

    def exclusive() -> None:
        with fence.writing({2}, exclusive=True):
            events.append("exclusive")
            inside.set()
            assert leave.wait(5)
        events.append("exclusive done")

    def blocking_writer() -> None:
        with fence.writing({2}):
            events.append("write after")

    with fence.writing({2}):  # in flight when the exclusive write comes
        t = threading.Thread(target=exclusive)
        t.start()
        assert not inside.wait(0.1)
    assert inside.wait(5)
    with pytest.raises(FenceBusy):  # an event loop's write goes to a thread
        fence.writing({2}, block=False).__enter__()
    with fence.writing({1}, block=False):  # other partitions are not held
        pass
    w = threading.Thread(target=blocking_writer)
    w.start()
    leave.set()
    t.join(5)
    w.join(5)
    assert events == ["exclusive", "exclusive done", "write after"]


def test_a_blind_write_during_repair_set_is_not_lost(
    store: ShardStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """repair_set puts (a join cannot drop a corrupt copy); a blind write to
    the key between its read and its put must not vanish under the put."""
    good = ver(1)
    rotten = Version(good.clock, good.hlc, good.actor, b"r0tten")
    store.write_set(1, b"k", (rotten,))
    put_started, finish_put = threading.Event(), threading.Event()
    real_put = store.db.put

    def slow_put(key: bytes, value: bytes) -> None:
        put_started.set()
        assert finish_put.wait(5)
        real_put(key, value)

    monkeypatch.setattr(store.db, "put", slow_put)
    repair = threading.Thread(target=store.repair_set, args=(1, b"k", (good,)))
    repair.start()
    assert put_started.wait(5)
    newer = ver(2)
    assert not store.try_write_many([WriteOp(1, b"k", newer, "merge")])
    writer = threading.Thread(target=store.write, args=(1, b"k", newer, "merge"))
    writer.start()
    writer.join(0.1)
    assert writer.is_alive()  # held off until the repair's put is done
    finish_put.set()
    repair.join(5)
    writer.join(5)
    assert store.read(1, b"k") == (newer,)  # newer's clock covers good
