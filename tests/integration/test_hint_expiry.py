"""Hint expiry never deletes data (issue 13, point 1): real nodes kept down
past ``max_hint_window_s``, then back; every acknowledged write survives.

Before the fix, an expired hint dropped the fallback's copy with it, and the
window counted from the first hinted write: with two nodes, N=1, W=1 and a
4 s window, 9 of 20 keys written while node b was down were gone for good
once b came back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.cluster import ring as ringmod
from tests.cluster import Cluster, local_read_many, ring_of, wait_for

pytestmark = pytest.mark.integration

WINDOW_S = 4


def replication(c: Cluster, i: int) -> dict[str, Any]:
    return c.info(i, "replication")


def all_expired(c: Cluster) -> bool:
    """Every running node's hints are past the window (and some exist)."""
    held = expired = 0
    for i, m in enumerate(c.members):
        if m.running:
            r = replication(c, i)
            held += int(r["hint_partitions"])
            expired += int(r["hint_partitions_expired"])
    return held > 0 and expired == held


def backlog(c: Cluster) -> int:
    return sum(int(replication(c, i)["hint_partitions"])
               for i, m in enumerate(c.members) if m.running)


def values(got: Any) -> list[bytes]:
    return [v.value for v in got or ()]


def test_expired_hints_keep_their_data_two_nodes_n1_w1(tmp_path: Path) -> None:
    c = Cluster(tmp_path, nodes=2, n=1, workers=1,
                settings={"cluster": {"r": 1, "w": 1},
                          "handoff": {"max_hint_window_s": WINDOW_S}})
    try:
        c.start()
        ring = ring_of(c)
        keys = [b"k-%d" % i for i in range(20)]
        on_b = [k for k in keys if ringmod.primaries(ring, ring.partition_of(k)) == ("n2",)]
        assert on_b, "no key owned by n2"
        c.kill(1)
        c.wait_seen(1, "down")
        r = c.client(0)
        for k in keys:
            assert r.set(k, b"first")
        wait_for("the first hinted writes are 2 s old",
                 lambda: int(replication(c, 0)["hint_oldest_s"]) >= 2, 30)
        # Write every key again: each hinted partition gets a later write.
        again_at = time.time()
        for k in keys:
            assert r.set(k, b"second")
        info = wait_for("the first hinted writes are past the window",
                        lambda: (i := replication(c, 0))["hint_oldest_s"] > WINDOW_S and i, 30)
        if time.time() - again_at <= WINDOW_S:
            # The window counts from the latest hinted write, not the first.
            assert int(info["hint_partitions_expired"]) == 0, info
        wait_for("n1's hints expire", lambda: all_expired(c), 30)
        assert int(replication(c, 0)["hints_expired"]) >= 1
        held = local_read_many(c, 0, on_b)
        assert all(values(got) == [b"second"] for got in held.values()), held

        c.start_node(1)
        c.wait_all_up()
        wait_for("n1 hands its copies to n2", lambda: backlog(c) == 0, 60)
        assert [r.get(k) for k in keys] == [b"second"] * len(keys)
        assert all(values(got) == [b"second"] for got in local_read_many(c, 1, on_b).values())
        wait_for("n1 drops its delivered copies",
                 lambda: not any(local_read_many(c, 0, on_b).values()), 60)
    finally:
        c.close()


def test_two_primaries_down_past_the_window_five_nodes_n3(tmp_path: Path) -> None:
    c = Cluster(tmp_path, nodes=5, n=3, workers=1,
                settings={"handoff": {"max_hint_window_s": WINDOW_S}})
    try:
        c.start()
        ring = ring_of(c)
        p = 0
        names = ringmod.primaries(ring, p)
        down = [i for i, m in enumerate(c.members) if m.name in names[1:]]
        alive = next(i for i, m in enumerate(c.members) if m.name == names[0])
        in_p = [k for k in (b"p-%d" % i for i in range(20_000)) if ring.partition_of(k) == p]
        keys = in_p[:150] + [b"any-%d" % i for i in range(300)]
        for i in down:
            c.kill(i)
        for i in down:
            c.wait_seen(i, "down")
        pipe = c.client(alive, socket_timeout=60).pipeline(transaction=False)
        for k in keys:
            pipe.set(k, k[::-1])
        assert all(pipe.execute())
        wait_for("every hint expires", lambda: all_expired(c), 60)

        for i in down:
            c.start_node(i, wait=False)
        for i in down:
            c.wait_serving(i)
        c.wait_all_up()
        wait_for("every fallback hands its copies back", lambda: backlog(c) == 0, 90)
        r = c.client(alive, socket_timeout=60)
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.execute_command("GET", k, "R", 3)
        got = pipe.execute()
        lost = [k for k, v in zip(keys, got, strict=True) if v != k[::-1]]
        assert not lost, f"{len(lost)} of {len(keys)} acknowledged writes lost, e.g. {lost[:3]}"
        for i in down:
            name = c.members[i].name
            mine = [k for k in keys if name in ringmod.primaries(ring, ring.partition_of(k))]
            held = local_read_many(c, i, mine)
            missing = [k for k, v in held.items() if values(v) != [k[::-1]]]
            assert not missing, f"{name} lacks {len(missing)} of its {len(mine)} keys"
    finally:
        c.close()
