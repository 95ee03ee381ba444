"""Zone loss, rehearsed (issue 17, point 5): six real nodes in three zones
with N = 3 lose a whole zone (kill -9 of both its nodes).

While the zone is gone: W=2/R=2 reads and writes keep working (every
partition keeps one replica in each surviving zone), no data starts moving
(the ring's epoch stays, no handoff runs: a down node is not a removed one),
the hint backlog is bounded by the partitions the zone owned however many
writes come in, and the nodes report under-replicated partitions. When the
zone returns it catches up from the hints: every acknowledged write is on
all three of its primaries again."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cluster import ring as ringmod
from tests.cluster import Cluster, local_read_many, ring_of, scrape, wait_for

pytestmark = pytest.mark.integration

ZONES = {"n1": "zone-a", "n2": "zone-a", "n3": "zone-b", "n4": "zone-b",
         "n5": "zone-c", "n6": "zone-c"}
LOST = (0, 1)  # n1 and n2: zone-a
SURVIVORS = (2, 3, 4, 5)


def replication(c: Cluster, i: int) -> dict[str, int]:
    info = c.info(i, "replication")
    return {k: int(v) for k, v in info.items() if isinstance(v, int | str) and str(v).isdigit()}


def write(c: Cluster, via: int, keys: list[bytes], value: bytes) -> None:
    pipe = c.client(via, socket_timeout=60).pipeline(transaction=False)
    for k in keys:
        pipe.execute_command("SET", k, value, "W", 2)
    replies = pipe.execute(raise_on_error=False)
    failed = [(k, r) for k, r in zip(keys, replies, strict=True) if r is not True]
    assert not failed, f"{len(failed)} of {len(keys)} W=2 writes failed, e.g. {failed[:3]}"


def read_back(c: Cluster, via: int, keys: list[bytes], expect: dict[bytes, bytes]) -> None:
    pipe = c.client(via, socket_timeout=60).pipeline(transaction=False)
    for k in keys:
        pipe.execute_command("GET", k, "R", 2)
    got = pipe.execute(raise_on_error=False)
    lost = [k for k, v in zip(keys, got, strict=True) if v != expect[k]]
    assert not lost, f"{len(lost)} of {len(keys)} acknowledged writes not read, e.g. {lost[:3]}"


def test_a_whole_zone_lost_and_back(tmp_path: Path) -> None:
    c = Cluster(tmp_path, nodes=6, n=3, workers=1,
                node_settings={name: {"node": {"zone": zone}} for name, zone in ZONES.items()})
    try:
        c.start()
        ring = wait_for("every node holds the six-node ring",
                        lambda: all(len(ring_of(c, i).node_ids) == 6 for i in range(6))
                        and ring_of(c, 0), 60)
        # Q = 64 is a power of two, so a few windows of 3 cannot span 3 zones
        # (docs/configuration.md, Zones): those partitions keep one replica
        # and stay writable at W=2 through a fallback in another zone.
        shared = ringmod.zone_shared(ring)
        assert len(shared) <= 4, shared
        for p in set(range(ring.q)) - set(shared):
            assert len({ZONES[n] for n in ringmod.primaries(ring, p)}) == 3, p
        in_zone_a = sum(1 for p in range(ring.q)
                        if {"n1", "n2"} & set(ringmod.primaries(ring, p)))
        expect: dict[bytes, bytes] = {}
        before = [b"before-%d" % i for i in range(300)]
        write(c, 2, before, b"v0")
        expect |= dict.fromkeys(before, b"v0")

        wait_for("the ring's own handoffs are done",
                 lambda: not any(replication(c, i)["handoffs_running"] for i in range(6)), 60)
        done = {i: replication(c, i)["handoffs_completed"] for i in SURVIVORS}
        for i in LOST:
            c.kill(i)
        for i in LOST:
            c.wait_seen(i, "down")
        epoch = {i: int(c.info(i, "cluster")["ring_epoch"]) for i in SURVIVORS}

        # W=2/R=2 through every surviving node, in two rounds of writes.
        during = [b"during-%d" % i for i in range(600)]
        for r, via in enumerate(SURVIVORS):
            chunk = during[r::len(SURVIVORS)]
            write(c, via, chunk, b"v1")
            expect |= dict.fromkeys(chunk, b"v1")
        owned = {(p, name) for p in range(ring.q) for name in ringmod.primaries(ring, p)
                 if name in ("n1", "n2")}
        first = sum(replication(c, i)["hint_partitions"] for i in SURVIVORS)
        assert 0 < first <= len(owned), (first, len(owned))
        write(c, 3, before + during, b"v2")  # the same partitions again, three times the writes
        expect |= dict.fromkeys(before + during, b"v2")
        second = sum(replication(c, i)["hint_partitions"] for i in SURVIVORS)
        assert second <= len(owned), f"hint backlog grew past the zone's partitions: {second}"
        for i in SURVIVORS:
            read_back(c, i, before + during, expect)
            info = replication(c, i)
            assert info["handoffs_running"] == 0, info
            assert info["handoffs_completed"] == done[i], "a partition was handed off"

            assert int(c.info(i, "cluster")["ring_epoch"]) == epoch[i], "the ring moved"
            metrics = scrape(c, i)
            assert metrics["ringkv_partitions_under_replicated"] == in_zone_a, metrics
            assert metrics["ringkv_partitions_at_quorum_risk"] >= in_zone_a, metrics

        for i in LOST:
            c.start_node(i, wait=False)
        for i in LOST:
            c.wait_serving(i)
        c.wait_all_up()
        wait_for("the survivors hand the zone's writes back (no hints left)",
                 lambda: not any(replication(c, i)["hint_partitions"] for i in range(6)), 120)
        for i in range(6):
            wait_for(f"n{i + 1} sees no under-replicated partition",
                     lambda i=i: scrape(c, i)["ringkv_partitions_under_replicated"] == 0, 30)
        for i in LOST:
            name = c.members[i].name
            mine = [k for k in expect if name in ringmod.primaries(ring, ring.partition_of(k))]
            held = local_read_many(c, i, mine)
            behind = [k for k, got in held.items() if [v.value for v in got or ()] != [expect[k]]]
            assert not behind, f"{name} lacks {len(behind)} of its {len(mine)} keys"
    finally:
        c.close()
