"""AntiEntropy against in-process replicas: real ShardStores behind a fake
host that sends every request through the wire codec and the worker's
dispatch, so the exchange, the merge and the corruption vote are tested
without processes."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from coordinator.cluster import ring as ringmod
from coordinator.cluster.ring import NodeId, Ring
from coordinator.data.votes import conflicts, vote
from coordinator.repair.anti_entropy import AntiEntropy
from coordinator.repair.reports import RepairReport
from lsm.options import Options
from shardserver.protocol.errors import ShardUnavailable
from shardserver.protocol.hlc import make_hlc
from shardserver.protocol.messages import Reply, Request
from shardserver.protocol.vclock import ActorId, VClock
from shardserver.protocol.versions import SiblingSet, Version, as_plain
from shardserver.storage import ShardStore
from tests.coordinator.stores import call_store, run

Q = 8
NOW_MS = 1_700_000_000_000
W = ActorId(b"writer#1")
NAMES = ("n1", "n2", "n3")


def ver(i: int, value: bytes | None, actor: ActorId = W) -> Version:
    hlc = make_hlc(NOW_MS + i)
    return Version(VClock.of({actor: hlc}), hlc, actor, value)


class Replicas:
    """Three nodes' stores, a shared ring, and which nodes are down."""

    def __init__(self, root: Path) -> None:
        self.ring = ringmod.claim([(n, None) for n in NAMES], Q, 3)
        self.stores = {
            NodeId(n): ShardStore.open(str(root / n), range(Q), Options(fsync="never"))
            for n in NAMES
        }
        self.down: set[str] = set()
        self.failing: set[str] = set()  # answer every call with an exception
        self.calls: list[tuple[str, str]] = []

    def host(self, name: str) -> Host:
        return Host(self, NodeId(name))

    def key_partition(self, key: bytes) -> int:
        return self.ring.partition_of(key)

    def write(self, nodes: tuple[str, ...], key: bytes, version: Version,
              mode: str = "lww") -> None:
        for n in nodes:
            self.stores[NodeId(n)].write(self.key_partition(key), key, version, mode)  # type: ignore[arg-type]

    def read(self, node: str, key: bytes) -> SiblingSet:
        return self.stores[NodeId(node)].read(self.key_partition(key), key)

    def close(self) -> None:
        for s in self.stores.values():
            s.close()


class Host:
    def __init__(self, replicas: Replicas, me: NodeId) -> None:
        self.replicas = replicas
        self.id = me
        self.ring: Ring | None = replicas.ring
        self.timeout_s = 5.0

    def is_up(self, node: NodeId) -> bool:
        return node not in self.replicas.down

    async def call(self, node: NodeId, request: Request, timeout: float) -> Reply:
        r = self.replicas
        r.calls.append((node, type(request).__name__))
        if node in r.down:
            raise ShardUnavailable(node, "down")
        if node in r.failing:
            raise ConnectionResetError(f"{node} hung up")
        return await call_store(r.stores[node], request)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    r = Replicas(tmp_path)
    try:
        yield r
    finally:
        r.close()


def all_keys(r: Replicas) -> set[bytes]:
    keys: set[bytes] = set()
    for store in r.stores.values():
        for p in range(Q):
            keys |= {k for k, _ in store.scan(p, limit=10_000).items}
    return keys


def assert_identical(r: Replicas) -> None:
    for key in all_keys(r):
        copies = [r.read(n, key) for n in NAMES]
        assert copies[0] == copies[1] == copies[2], key


def test_one_repair_makes_every_replica_identical_with_traffic_near_the_difference(
    replicas: Replicas,
) -> None:
    r = replicas
    rng = random.Random(3)
    for i in range(1500):
        r.write(NAMES, b"key%04d" % i, ver(i, b"v%d" % i))
    differ: set[bytes] = set()
    for i in rng.sample(range(1500), 60):
        key = b"key%04d" % i
        subset = tuple(rng.sample(NAMES, rng.choice([1, 2])))
        r.write(subset, key, ver(5000 + i, b"newer%d" % i))
        differ.add(key)
    for j in range(20):  # concurrent siblings on different nodes; new keys on one node
        key = b"key%04d" % j
        r.write(("n2",), key, ver(9000 + j, b"sib-b", ActorId(b"b#1")), "merge")
        r.write(("n3",), key, ver(9000 + j, b"sib-c", ActorId(b"c#1")), "merge")
        r.write(("n3",), b"only-n3-%d" % j, ver(j, b"x"))
        differ |= {key, b"only-n3-%d" % j}
    progress: list[tuple[int, int]] = []
    ae = AntiEntropy(r.host("n1"))
    report = run(ae.repair(progress=lambda done, total: progress.append((done, total))))
    assert report.errors == [] and report.partitions == Q
    assert_identical(r)
    assert len(r.read("n1", b"key0003")) >= 1
    assert report.keys_repaired >= len(differ)
    assert len(differ) <= report.keys_differing <= report.keys_compared <= 4 * len(differ)
    assert report.bytes_sent > 0 and report.bytes_exchanged > 0
    assert progress[-1] == (Q, Q) and len(progress) == Q
    assert ae.total.keys_repaired == report.keys_repaired and ae.last_repair_ms > 0
    # In sync now: the roots match and nothing more is exchanged.
    r.calls.clear()
    again = run(ae.repair())
    assert (again.keys_compared, again.keys_repaired, again.error_count) == (0, 0, 0)
    assert {op for _, op in r.calls} == {"TreeLevel"}
    assert again.bytes_exchanged == again.pairs * 2 * 16


def test_a_rotten_copy_is_outvoted_and_replaced(replicas: Replicas) -> None:
    r = replicas
    good = as_plain(ver(1, b"good"))  # stored as written in mode "lww"
    rotten = replace(good, value=b"r0tten")
    for i in range(100):
        r.write(NAMES, b"k%d" % i, ver(i, b"v"))
    r.write(("n1", "n3"), b"victim", good)
    r.write(("n2",), b"victim", rotten)
    # The rotten replica repairs itself: the two others outvote it.
    report = run(AntiEntropy(r.host("n2")).repair([r.key_partition(b"victim")]))
    assert report.corrupt_fixed == 1 and report.errors == []
    assert [r.read(n, b"victim") for n in NAMES] == [(good,)] * 3
    assert_identical(r)


def test_without_a_majority_a_rotten_copy_is_reported_and_not_spread(
    replicas: Replicas,
) -> None:
    r = replicas
    good = as_plain(ver(1, b"good"))  # stored as written in mode "lww"
    rotten = replace(good, value=b"r0tten")
    r.write(("n1",), b"victim", good)
    r.write(("n2",), b"victim", rotten)
    r.down.add("n3")
    report = run(AntiEntropy(r.host("n1")).repair([r.key_partition(b"victim")]))
    assert report.corrupt_fixed == 0 and report.pairs_skipped == 1
    assert any("no majority" in e for e in report.errors)
    assert r.read("n1", b"victim") == (good,) and r.read("n2", b"victim") == (rotten,)


def test_down_and_failing_peers_are_reported_never_raised(
    replicas: Replicas,
) -> None:
    r = replicas
    r.write(("n1",), b"k", ver(1, b"v"))
    r.down.add("n3")
    r.failing.add("n2")
    report = run(AntiEntropy(r.host("n1")).repair())
    assert report.pairs_skipped == Q  # n3 in every partition
    assert report.error_count == Q and "n2 unreachable: n2 hung up" in report.errors[0]
    r.failing.clear()
    r.stores[NodeId("n2")].trees._scan_page = _broken_scan  # the worker fails the call
    report = run(AntiEntropy(r.host("n1")).repair())
    assert report.error_count == Q and "INTERNAL" in report.errors[0]
    bad = run(AntiEntropy(r.host("n1")).repair([Q, -1]))
    assert bad.error_count == 2 and "out of range" in bad.errors[0]


def _broken_scan(p: int, after: bytes | None, limit: int) -> Any:
    raise ValueError("scan failed")


def test_a_node_repairs_only_partitions_it_is_a_primary_of(tmp_path: Path) -> None:
    r = Replicas(tmp_path)
    try:
        r.ring = ringmod.claim([(n, None) for n in (*NAMES, "n4")], Q, 3)
        ae = AntiEntropy(r.host("n1"))
        mine = ae.primary_partitions()
        assert 0 < len(mine) < Q
        other = next(p for p in range(Q) if p not in mine)
        report = run(ae.repair([other]))
        assert report.errors == [f"n1 is not a primary of partition {other}"]
    finally:
        r.close()


def test_background_task_repairs_round_robin_and_survives_errors(
    replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    r = replicas
    for i in range(200):
        r.write(("n2",), b"k%d" % i, ver(i, b"v"))
    ae = AntiEntropy(r.host("n1"), interval_s=0.001)
    calls = 0

    async def body() -> None:
        nonlocal calls
        real = ae.repair_partition

        async def flaky(p: int) -> RepairReport:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise RuntimeError("a bug in one round")
            return await real(p)

        ae.repair_partition = flaky  # type: ignore[method-assign, assignment]
        task = asyncio.create_task(ae.run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while ae.rounds < 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, logger="ringkv.aae"):
        run(body())
    assert ae.rounds >= 2
    assert "background repair failed" in caplog.text
    assert_identical(r)


def test_vote_andconflicts() -> None:
    good = ver(1, b"good")
    bad = Version(good.clock, good.hlc, good.actor, b"bad")
    dead = Version(good.clock, good.hlc, good.actor, None)
    ident = (good.hlc, good.actor)
    assert conflicts([(good,), (good,)]) == set()
    assert conflicts([(good,), (bad,)]) == {ident}
    assert vote({ident}, [(good,), (bad,), (good,)]) == ({ident: b"good"}, [])
    assert vote({ident}, [(good,), (bad,)]) == ({}, [ident])
    assert vote({ident}, [(good,), (dead,), (dead,), ()]) == ({ident: None}, [])
    report = RepairReport(keys_compared=2)
    for i in range(30):
        report.error(f"e{i}")
    report.add(RepairReport(keys_compared=1, errors=["x"], error_count=1))
    assert report.keys_compared == 3 and report.error_count == 31
    assert report.errors == [f"e{i}" for i in range(1, 20)] + ["x"]  # the latest
    assert report.as_dict()["error_count"] == 31
