"""Replica traffic straight to a peer's worker (peer protocol 5), against
real node processes: reads and writes take the direct connections once
they are up; a direct connection serves nothing but replica reads and
writes and keeps the relay's checks (hinted writes, other ops, the clock
bound); nobody without the secret, and no process but the node's
coordinator, gets a connection to a worker; a node held at protocol 4
keeps the relay; kill -9 of a worker with direct connections open loses
no acknowledged write."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from coordinator.cluster.peer import AttachRefused, PeerAuthError, open_peer, peer_client
from coordinator.cluster.ring import partition_of
from shardserver.protocol import messages as m
from shardserver.protocol.attach import AttachError, SessionState, attach_path, hand_over
from shardserver.protocol.client import ShardClient
from shardserver.protocol.hlc import HLC
from shardserver.protocol.pool import partition_ranges
from shardserver.protocol.vclock import make_actor
from shardserver.protocol.versions import plain_version
from tests.cluster import SECRET, Cluster, local_read, wait_for

pytestmark = pytest.mark.integration

Q = 64


def worker_socket(c: Cluster, i: int, w: int) -> str:
    return str(c.members[i].data_dir / "run" / f"worker-{w}.sock")


def ping_worker(c: Cluster, i: int, w: int) -> dict[str, Any]:
    async def ping() -> dict[str, Any]:
        async with ShardClient(worker_socket(c, i, w), timeout_s=10) as client:
            return await client.ping()

    return asyncio.run(ping())


def direct_requests(c: Cluster, i: int) -> int:
    return sum(int(ping_worker(c, i, w)["direct"]["requests"]) for w in range(c.workers))


def server_info(c: Cluster, i: int) -> dict[str, Any]:
    return c.info(i, "server")


def warm(r: redis.Redis) -> bool:
    """Writes to partitions of every worker: the first go through the relay
    and start the direct connects."""
    return bool(r.mset({f"warm:{j}": "x" for j in range(32)}))


def worker_of(key: bytes, workers: int) -> int:
    p = partition_of(key, Q)
    return next(w for w, r in enumerate(partition_ranges(Q, workers)) if p in r)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("direct")), nodes=3, n=3, workers=2)
    try:
        c.start()
        yield c
    finally:
        c.close()


def test_replica_reads_and_writes_go_straight_to_the_workers(cluster: Cluster) -> None:
    c = cluster
    n1 = c.client(0)
    # The first requests take the relay and start the direct connects.
    wait_for("n1 holds a direct connection to every worker of n2 and n3",
             lambda: warm(n1) and server_info(c, 0)["direct_worker_connections"] == 4,
             30)
    before = [direct_requests(c, i) for i in (1, 2)]
    for i in range(200):
        assert n1.execute_command("SET", f"d:{i}", f"v{i}", "W", 3) is True
    for i in range(200):
        assert n1.execute_command("GET", f"d:{i}", "R", 3) == f"v{i}".encode()
    after = [direct_requests(c, i) for i in (1, 2)]
    # Each node got a write and a read per key, all on direct connections.
    assert all(a - b >= 400 for a, b in zip(after, before, strict=True)), (before, after)
    assert server_info(c, 1)["peer_connections_handed"] >= 2
    assert local_read(c, 2, b"d:7")[0].value == b"v7"


def test_a_direct_connection_keeps_the_relays_checks(cluster: Cluster) -> None:
    c = cluster
    host, port = c.members[1].host, c.members[1].peer_port
    key = b"direct-check"
    p, w = partition_of(key, Q), worker_of(key, c.workers)
    actor = make_actor("n9", 1)
    fine = plain_version(actor, HLC().now(), b"fine")
    ahead = plain_version(actor, HLC(offset_ms=600_000).now(), b"from the future")

    async def body() -> list[m.Reply]:
        async with peer_client(f"{host}:{port}", "n9", SECRET.encode(), timeout_s=10,
                               expect="n2", worker=w) as direct:
            return [await direct.call(r, 10) for r in (
                m.ReplicaWrite(p, key, fine, "lww"),
                m.ReplicaWrite(p, key, fine, "lww", hint_for="n3"),
                m.ReplicaWrite(p, key, ahead, "lww"),
                m.DropPartition(p),
                m.ScanPartition(p, None, 10),
                m.Admin({"cmd": "status"}),
                m.ReplicaRead(p, key),
            )]

    ok, hinted, future, drop, scan, admin, read = asyncio.run(body())
    assert ok.ok and read.ok
    assert hinted.status is m.Status.BAD_REQUEST and "hint" in hinted.message
    assert future.status is m.Status.BAD_REQUEST
    assert "ms ahead of this node's clock (max_clock_drift_ms = 60000)" in future.message
    for refused in (drop, scan, admin):
        assert refused.status is m.Status.BAD_REQUEST
        assert "not served on a direct peer connection" in refused.message
    assert [v.value for v in local_read(c, 1, key)] == [b"fine"]
    assert ping_worker(c, 1, w)["direct"]["writes_refused"] >= 1
    wait_for("n2's INFO clock counts its worker's refusal",
             lambda: int(c.info(1, "clock")["peer_writes_refused"]) >= 1, 15)


def test_no_worker_without_the_secret_nor_from_another_process(cluster: Cluster) -> None:
    c = cluster
    host, port = c.members[1].host, c.members[1].peer_port

    async def body() -> None:
        with pytest.raises(PeerAuthError, match="does not know the cluster secret"):
            await open_peer(host, port, "stranger", b"guess", 10, worker=0)
        with pytest.raises(AttachRefused, match="no worker 7"):
            await open_peer(host, port, "n9", SECRET.encode(), 10, worker=7)
        # The attach socket takes hand-overs from the node's coordinator only:
        # this process may reach it (same user) but is not the workers' parent.
        listener = socket.create_server(("127.0.0.1", 0))
        with listener, socket.create_connection(listener.getsockname()) as ours:
            state = SessionState("forger", 0, 1, b"k" * 32, 0, b"k" * 32, 0, 60_000, 0)
            path = attach_path(worker_socket(c, 1, 0))
            with pytest.raises(AttachError, match=r"closed the hand-over|Broken pipe|reset"):
                await hand_over(path, ours.fileno(), state, 10)
            peer, _ = listener.accept()
            with peer:
                peer.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    peer.recv(100)  # the worker never wrote to the socket

    asyncio.run(body())
    assert "hand-over from pid" in c.members[1].log.read_text()


def test_a_node_at_protocol_4_keeps_the_relay(tmp_path: Path) -> None:
    c = Cluster(tmp_path, nodes=3, n=3, workers=2,
                node_settings={"n3": {"cluster": {"max_peer_protocol": 4}}})
    try:
        c.start()
        clients = [c.client(i) for i in range(3)]
        wait_for("n1 attaches to n2's workers",
                 lambda: warm(clients[0]) and
                 server_info(c, 0)["direct_worker_connections"] == 2, 30)
        for i in range(60):
            assert clients[i % 3].execute_command("SET", f"mix:{i}", f"v{i}", "W", 3) is True
        for i in range(60):
            got = clients[(i + 1) % 3].execute_command("GET", f"mix:{i}", "R", 3)
            assert got == f"v{i}".encode()
        assert server_info(c, 0)["direct_worker_connections"] == 2  # n2's, never n3's
        assert server_info(c, 1)["direct_worker_connections"] == 2  # n1's
        assert server_info(c, 2)["direct_worker_connections"] == 0  # n3 speaks 4
        assert server_info(c, 2)["peer_connections_handed"] == 0
        assert direct_requests(c, 2) == 0
        assert direct_requests(c, 0) > 0 and direct_requests(c, 1) > 0
    finally:
        c.close()


def test_kill_9_of_a_worker_with_direct_connections_loses_no_acknowledged_write(
    tmp_path: Path,
) -> None:
    c = Cluster(tmp_path, nodes=3, n=3, workers=2)
    acked: dict[str, str] = {}
    failed = 0
    stop = threading.Event()

    def writer(node: int) -> None:
        nonlocal failed
        r = c.client(node, socket_timeout=10)
        seq = 0
        while not stop.is_set():
            key, value = f"k9:{node}:{seq}", f"v{seq}"
            seq += 1
            try:
                if r.execute_command("SET", key, value, "W", 2) is True:
                    acked[key] = value
            except redis.ResponseError:
                failed += 1

    try:
        c.start()
        wait_for("n1 and n3 attach to both workers of n2",
                 lambda: warm(c.client(0)) and warm(c.client(2)) and
                 server_info(c, 0)["direct_worker_connections"] == 4 and
                 server_info(c, 2)["direct_worker_connections"] == 4, 30)
        threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 2)]
        for t in threads:
            t.start()
        try:
            wait_for("writes flow", lambda: len(acked) >= 200, 30)
            victim = int(ping_worker(c, 1, 0)["pid"])
            adopted = ping_worker(c, 1, 0)["direct"]["adopted"]
            assert adopted >= 2
            os.kill(victim, signal.SIGKILL)
            count = len(acked)
            wait_for("n2's worker 0 restarted",
                     lambda: ping_worker(c, 1, 0)["pid"] != victim
                     and ping_worker(c, 1, 0)["ready"], 60)
            wait_for("n1 and n3 attach to the new worker again",
                     lambda: ping_worker(c, 1, 0)["direct"]["connections"] == 2, 30)
            wait_for("writes go on", lambda: len(acked) >= count + 200, 30)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        reader = c.client(1)
        pipe = reader.pipeline(transaction=False)
        keys = sorted(acked)
        for key in keys:
            pipe.execute_command("GET", key, "R", 2)
        lost = [k for k, got in zip(keys, pipe.execute(), strict=True)
                if got != acked[k].encode()]
        assert not lost, f"{len(lost)} of {len(keys)} acknowledged writes lost: {lost[:5]}"
        assert len(keys) >= 400
    finally:
        stop.set()
        c.close()
