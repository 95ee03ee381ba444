"""`ringkv remove`: taking a node out of the cluster for good, dead or alive
(5 real nodes, N=3, through the admin CLI in-process)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from cli.main import cli
from coordinator.cluster import ring as ringmod
from tests.cluster import SECRET, Cluster, local_read_many, ring_of, running_cluster, wait_for

pytestmark = pytest.mark.integration


def run(c: Cluster, *args: str, node: int = 0) -> tuple[int, str]:
    secret = c.root / "cluster.secret"
    secret.write_text(SECRET + "\n")
    addr = f"{c.members[node].host}:{c.members[node].peer_port}"
    result = CliRunner().invoke(cli, [*args, "--addr", addr, "--secret-file", str(secret)])
    return result.exit_code, result.output


def remove(c: Cluster, name: str, node: int = 0) -> dict[str, Any]:
    code, out = run(c, "remove", name, "--json", node=node)
    assert code == 0, out
    doc: dict[str, Any] = json.loads(out)
    return doc


def hint_backlog(c: Cluster) -> int:
    return sum(int(c.info(i, "replication")["hint_partitions"])
               for i, m in enumerate(c.members) if m.running)


def rings_agree(c: Cluster, epoch: int) -> bool:
    return all(ring_of(c, i).epoch == epoch for i, m in enumerate(c.members) if m.running)


def assert_new_primaries_hold(c: Cluster, keys: list[bytes]) -> None:
    """Every running primary of every key, on the current ring, stores it."""
    ring = ring_of(c)
    for i, m in enumerate(c.members):
        if not m.running or m.name not in ring.node_ids:
            continue
        mine = [k for k in keys if m.name in ringmod.primaries(ring, ring.partition_of(k))]
        held = local_read_many(c, i, mine)
        missing = [k for k, got in held.items() if [v.value for v in got or ()] != [k[::-1]]]
        assert not missing, f"{m.name} lacks {len(missing)} of its {len(mine)} keys"


def test_remove_a_dead_node_then_a_live_one(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=5, n=3, workers=1) as c:
        keys = [b"rm-%d" % i for i in range(3000)]
        pipe = c.client(0, socket_timeout=60).pipeline(transaction=False)
        for k in keys:
            pipe.set(k, k[::-1])
        assert all(pipe.execute())
        epoch = ring_of(c).epoch

        # A dead node: the replicas that stay stream its partitions to the new ones.
        c.kill(4)
        c.wait_seen(4, "down")
        doc = remove(c, "n5")
        assert doc["removed"] == "n5" and not doc["was_up"] and doc["epoch"] == epoch + 1
        assert doc["members"] == ["n1", "n2", "n3", "n4"] and doc["partitions_changed"] > 0
        wait_for("every node on the ring without n5", lambda: rings_agree(c, epoch + 1), 30)
        assert ring_of(c, 2).removed == {"n5"}
        wait_for("hints to the new replicas drained", lambda: hint_backlog(c) == 0, 60)
        assert_new_primaries_hold(c, keys)
        code, out = run(c, "remove", "n5")
        assert code == 0 and "already removed" in out

        # A live node: it hands its own copies off, and the cluster no longer needs it.
        # Writes go on meanwhile, through every node, n4 included (on a stale
        # ring until gossip brings the new one): n4's drops must not eat them.
        with Writer(c, (0, 1, 2, 3)) as writer:
            code, out = run(c, "remove", "n4", node=1)
            assert code == 0 and "removed n4 (up): ring epoch" in out, out
            wait_for("every node on the ring without n4", lambda: rings_agree(c, epoch + 2), 30)
            wait_for("n4 says it is removed", lambda: remove_state(c, 3) == "removed", 30)
            wait_for("hints drained, n4's too", lambda: hint_backlog(c) == 0, 120)
        assert len(writer.acked) > 50, writer.errors[:3]
        wait_for("hints of the last writes drained", lambda: hint_backlog(c) == 0, 60)
        c.stop_node(3)
        assert_new_primaries_hold(c, keys)
        r = c.client(0, socket_timeout=60)
        pipe = r.pipeline(transaction=False)
        for k in keys + writer.acked:
            pipe.execute_command("GET", k, "R", 3)
        got = pipe.execute()  # R=3 without n4 and n5
        assert got == [k[::-1] for k in keys + writer.acked]

        # Refusals name the cause.
        code, out = run(c, "remove", "n3")
        assert code == 2 and "would leave 2 node(s) for N=3" in out, out
        code, out = run(c, "remove", "n9")
        assert code == 2 and "n9 is not a member" in out, out

        # n5 comes back with its old data and ring: it stays out.
        c.start_node(4)
        wait_for("n5 learns it was removed", lambda: ring_of(c, 4).epoch == epoch + 2, 30)
        assert ring_of(c, 4).removed == {"n4", "n5"}
        assert all(ring_of(c, i).node_ids == ("n1", "n2", "n3") for i in range(3))
        assert c.client(4).get(keys[0]) == keys[0][::-1]  # still a coordinator for clients
        assert remove_state(c, 4) == "removed"


class Writer:
    """SETs of fresh keys (value: the key reversed) in a thread, through the
    given nodes in turn, until the block ends; ``acked`` are those that
    succeeded."""

    def __init__(self, c: Cluster, through: tuple[int, ...]) -> None:
        self.clients = [c.client(i, socket_timeout=10) for i in through]
        self.acked: list[bytes] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        for i in range(100_000):
            if self._stop.is_set():
                return
            key = b"during-rm-%d" % i
            try:
                if self.clients[i % len(self.clients)].set(key, key[::-1]):
                    self.acked.append(key)
            except (redis.RedisError, OSError) as exc:
                self.errors.append(str(exc))
            time.sleep(0.005)


def remove_state(c: Cluster, i: int) -> str:
    """The node's own state as `ringkv status` reports it."""
    code, out = run(c, "status", "--json", node=i)
    assert code == 0, out
    doc = json.loads(out)
    me = next(n for n in doc["nodes"] if n["node"] == c.members[i].name)
    return str(me["state"])


def test_a_removal_and_a_join_at_once_both_take_effect(tmp_path: Path) -> None:
    """n4 is removed through n1 while n5 joins (its first gossip reaches the
    others at about the same time). Both changes make the next epoch; gossip
    keeps one ring, and whoever knew of the removal applies it again, so
    every node ends on one ring with n5 and without n4."""
    c = Cluster(tmp_path, nodes=5, n=3, workers=1)
    # n1..n4 form the ring without waiting for n5, which joins later.
    seeds = ", ".join(f'"{m.host}:{m.peer_port}"' for m in c.members[:4])
    for m in c.members[:4]:
        lines = m.config.read_text().splitlines()
        m.config.write_text("\n".join(f"seeds = [{seeds}]" if line.startswith("seeds = ")
                                      else line for line in lines) + "\n")
    try:
        for i in range(4):
            c.start_node(i, wait=False)
        for i in range(4):
            c.wait_serving(i)
        c.wait_all_up()
        wait_for("a ring of n1..n4 everywhere", lambda: all(
            ring_of(c, i).node_ids == ("n1", "n2", "n3", "n4") for i in range(4)), 30)
        c.start_node(4, wait=False)
        doc = remove(c, "n4")
        assert doc["removed"] == "n4"

        def settled() -> bool:
            if not (c.members[4].data_dir / "ring.msgpack").exists():
                return False  # n5 has not heard of a ring yet
            rings = [ring_of(c, i) for i in range(5)]
            return all(r.node_ids == ("n1", "n2", "n3", "n5") and r.removed == {"n4"}
                       and r == rings[0] for r in rings)

        wait_for("every node on one ring with n5 and without n4", settled, 60)
        r = c.client(4)
        assert r.set("after-both", "yes") and c.client(0).get("after-both") == b"yes"
    finally:
        c.close()
