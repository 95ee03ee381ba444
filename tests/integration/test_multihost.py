"""Three nodes on three hosts: each in its own network namespace with its own
address on a bridge (tests/netns.py), the same ports on every host, as on
real machines. Form the ring, write, pull one host's cable, keep writing,
plug it back, and check that every acknowledged write is on every host
(issue 18, done point 3). Needs root; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from coordinator.cluster import ring as ringmod
from tests import netns
from tests.cluster import ROOT, Cluster, local_read_many, ring_of, wait_for

pytestmark = pytest.mark.integration

#: client, peer and metrics port: the same on every host.
PORTS = (7379, 17379, 8379)
BATCH = 500


@pytest.fixture
def hosts() -> Iterator[netns.Hosts]:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(why)
    with netns.hosts(4) as h:
        yield h


def on_hosts(hosts: netns.Hosts, root: Path, nodes: int) -> Cluster:
    """Node i on host i + 1; the first three hosts are the seeds."""
    return Cluster(
        root, nodes=nodes, n=3,
        addresses=tuple(hosts.address(k) for k in range(1, nodes + 1)), ports=PORTS,
        run_in=lambda i: hosts.run_in(i + 1),
        settings={"cluster": {"request_timeout_ms": 3000},
                  "network": {"seeds": [f"{hosts.address(k)}:{PORTS[1]}" for k in (1, 2, 3)]}},
        # n2 listens on every address of its host and says which one is its.
        node_settings={"n2": {"network": {"bind": "0.0.0.0", "advertise": hosts.address(2)}}},
    )


@pytest.fixture
def cluster(hosts: netns.Hosts, tmp_path: Path) -> Iterator[Cluster]:
    c = on_hosts(hosts, tmp_path, 3)
    try:
        c.start(timeout=120)
        yield c
    finally:
        c.close()


def write(client: redis.Redis, keys: list[bytes]) -> list[bytes]:
    """SET each key to its reverse with W=2; the keys acknowledged."""
    acked = []
    for key in keys:
        if client.execute_command("SET", key, key[::-1], "W", "2") is True:  # type: ignore[no-untyped-call]
            acked.append(key)
    return acked


def hint_backlog(c: Cluster, nodes: tuple[int, ...] = (0, 1, 2)) -> int:
    return sum(int(c.info(i, "replication")["hint_partitions"]) for i in nodes)


def addr_seen(c: Cluster, i: int, other: int) -> str:
    raw = c.info(i, "cluster")[f"node_{c.members[other].name}"]
    return str(raw["addr"])


def run_on(hosts: netns.Hosts, k: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``python args`` of this tree on host ``k``, as an operator there would."""
    return subprocess.run([*hosts.run_in(k), sys.executable, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_three_hosts_lose_nothing_when_one_is_unplugged(
        hosts: netns.Hosts, cluster: Cluster) -> None:
    c = cluster
    # The ring formed over the bridge, and every node knows the others by
    # their own host's address.
    assert [n.node_id for n in ring_of(c).nodes] == ["n1", "n2", "n3"]
    for i in range(3):
        for other in range(3):
            assert addr_seen(c, i, other) == f"{hosts.address(other + 1)}:{PORTS[0]}"

    client = c.client(0, socket_timeout=30)
    before = write(client, [b"before-%d" % j for j in range(BATCH)])
    assert len(before) == BATCH

    hosts.unplug(3)
    # Until n1 and n2 notice, they still send to n3: acks from the two of them.
    unnoticed = write(client, [b"unnoticed-%d" % j for j in range(BATCH)])
    assert len(unnoticed) == BATCH
    c.wait_seen(2, "down", timeout=60)
    during = write(client, [b"during-%d" % j for j in range(BATCH)])
    assert len(during) == BATCH
    with pytest.raises(redis.ResponseError, match=r"^NOQUORUM"):
        client.execute_command("SET", b"needs-three", b"v", "W", "3")  # type: ignore[no-untyped-call]
    # n3 itself cannot reach a quorum: it is cut off, not just hidden from us.
    cut_off = run_on(hosts, 3, "-c", (
        "import redis, sys\n"
        f"r = redis.Redis(host={hosts.address(3)!r}, port={PORTS[0]}, socket_timeout=30)\n"
        "try:\n"
        "    r.execute_command('SET', 'lonely', 'v', 'W', '2')\n"
        "except redis.ResponseError as exc:\n"
        "    print(exc); sys.exit(0)\n"
        "sys.exit('acknowledged with the others unreachable')\n"))
    assert cut_off.returncode == 0 and cut_off.stdout.startswith("NOQUORUM"), cut_off
    assert hint_backlog(c, (0, 1)) > 0

    hosts.plug(3)
    c.wait_seen(2, "up", timeout=60)
    for i in (0, 1):
        c.wait_seen(i, "up", timeout=60)
    wait_for("hints handed back to n3", lambda: hint_backlog(c) == 0, 120)
    # What was written while n1 and n2 knew n3 was down came back with the hints.
    missing = [k for k, got in local_read_many(c, 2, during).items()
               if [v.value for v in got] != [k[::-1]]]
    assert not missing, f"{len(missing)} hinted keys missing on n3, e.g. {missing[:3]}"

    # What only n1 and n2 took before they noticed: repair, as an operator
    # on host 2 runs it (its config binds 0.0.0.0), forwarded to n3.
    repaired = run_on(hosts, 2, "-m", "cli", "repair", "--config", str(c.members[1].config),
                      "--node", "n3", "--json")
    assert repaired.returncode == 0, repaired.stderr
    report = json.loads(repaired.stdout)
    assert report["pairs_skipped"] == 0 and report["error_count"] == 0, report

    acked = before + unnoticed + during
    for i, m in enumerate(c.members):
        held = local_read_many(c, i, acked)
        missing = [k for k, got in held.items() if [v.value for v in got] != [k[::-1]]]
        assert not missing, f"{len(missing)} acked keys missing on {m.name}, e.g. {missing[:3]}"
    pipe = c.client(2, socket_timeout=30).pipeline(transaction=False)
    for key in acked:
        pipe.execute_command("GET", key, "R", "3")
    assert pipe.execute() == [k[::-1] for k in acked]



def test_a_fourth_host_joins_and_gets_its_partitions(hosts: netns.Hosts, tmp_path: Path) -> None:
    c = on_hosts(hosts, tmp_path, 4)
    try:
        for i in range(3):
            c.start_node(i, wait=False)
        for i in range(3):
            c.wait_serving(i, 120)
        c.wait_all_up(120)
        keys = write(c.client(0, socket_timeout=30), [b"k-%d" % j for j in range(2 * BATCH)])
        assert len(keys) == 2 * BATCH
        formed = ring_of(c).epoch

        c.start_node(3, timeout=120)
        c.wait_all_up(60)

        def joined() -> bool:
            rings = [ring_of(c, i) for i in range(4)]
            return all(r.epoch > formed and len(r.nodes) == 4 and r == rings[0] for r in rings)

        wait_for("every node has the ring with n4", joined, 60)
        wait_for("partitions handed to n4", lambda: hint_backlog(c, (0, 1, 2, 3)) == 0, 120)
        ring = ring_of(c)
        mine = [k for k in keys if "n4" in ringmod.primaries(ring, ring.partition_of(k))]
        assert len(mine) > BATCH  # N=3 of 4 nodes: about 3/4 of the keys
        held = local_read_many(c, 3, mine)
        missing = [k for k, got in held.items() if [v.value for v in got] != [k[::-1]]]
        assert not missing, f"{len(missing)} keys missing on n4, e.g. {missing[:3]}"
    finally:
        c.close()


def test_what_a_dead_run_left_behind_is_removed() -> None:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(why)
    dead = next(p for p in range(4_000_000, 4_100_000) if not Path(f"/proc/{p}").exists())
    left = netns.Hosts(1, "10.231.251", f"{dead:06x}")
    left.build()
    sleeper = subprocess.Popen([*left.run_in(1), "sleep", "600"])
    try:
        with netns.hosts(1) as fresh:
            assert fresh.namespace(1) != left.namespace(1)
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                    check=True).stdout
            assert left.namespace(1) not in listed
            links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                                   check=True).stdout
            assert left.bridge not in links and left.veth(1) not in links
            assert sleeper.wait(10) == -9  # killed with its namespace
    finally:
        left.destroy()
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(10)
