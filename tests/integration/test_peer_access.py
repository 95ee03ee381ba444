"""Who may use a node's peer port, against real node processes: a node
will not start without a cluster secret unless told to, a stranger without
the secret gets no admin command, drop, write or gossip through, a peer with
the secret cannot drop partitions on a node whose enable_flush is off, and
hundreds of idle sockets do not lock out ``ringkv status``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from coordinator.cluster.peer import PeerAuthError, open_peer, peer_client
from shardserver.protocol import codec
from shardserver.protocol import messages as m
from shardserver.protocol.hlc import HLC
from shardserver.protocol.vclock import make_actor
from shardserver.protocol.versions import plain_version
from tests.cluster import (
    ROOT,
    SECRET,
    Cluster,
    free_ports,
    local_read,
    local_read_many,
    ring_of,
    wait_for,
)
from tests.processes import stop

pytestmark = pytest.mark.integration

KEYS = [b"access-%d" % i for i in range(50)]


# --- starting without a secret -----------------------------------------------------


def _bare_config(tmp_path: Path) -> tuple[Path, int]:
    client, peer = free_ports(2)
    path = tmp_path / "alone.toml"
    path.write_text(f"""[node]
id = "alone"
data_dir = "{tmp_path / 'alone'}"
[network]
client_port = {client}
peer_port = {peer}
[cluster]
n = 1
r = 1
w = 1
[storage]
workers = 1
""")
    return path, client


def test_serve_without_a_secret_refuses_to_start_saying_why(tmp_path: Path) -> None:
    config, _ = _bare_config(tmp_path)
    done = subprocess.run([sys.executable, "-m", "cli", "serve", "--config", str(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "node alone has no cluster secret" in done.stderr
    assert "Set [cluster] secret" in done.stderr and "--insecure-no-secret" in done.stderr
    assert not (tmp_path / "alone").exists()  # refused before touching anything


def test_insecure_no_secret_starts_and_warns_on_every_start(tmp_path: Path) -> None:
    import redis

    config, client = _bare_config(tmp_path)
    log = tmp_path / "alone.log"
    for start in (1, 2):
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--config", str(config),
                 "--insecure-no-secret"],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            r = redis.Redis(port=client, socket_timeout=5)
            wait_for(f"insecure node answers PING (start {start})",
                     lambda r=r, p=proc: p.poll() is None and r.ping(), 60)
            r.close()
        finally:
            stop(proc, 20)
        assert proc.returncode == 0, log.read_text()
        assert log.read_text().count("INSECURE: running without a cluster secret") == start


# --- a 2-node cluster: n2 does not allow FLUSHALL ----------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("access")), nodes=2, n=2, workers=1)
    n2 = c.members[1].config
    n2.write_text(n2.read_text().replace("enable_flush = true", "enable_flush = false"))
    try:
        c.start()
        pipe = c.client(0).pipeline(transaction=False)
        for k in KEYS:
            pipe.execute_command("SET", k, k[::-1], "W", 2)
        assert all(pipe.execute())
        yield c
    finally:
        c.close()


def _peer(c: Cluster, i: int) -> tuple[str, int]:
    return c.members[i].host, c.members[i].peer_port


def _all_keys_on(c: Cluster, i: int) -> bool:
    held = local_read_many(c, i, KEYS)
    return all([v.value for v in got or ()] == [k[::-1]] for k, got in held.items())


async def _send_instead_of_answer(host: str, port: int, requests: list[m.Request]) -> bytes:
    """Skip the handshake: send shard request frames as the answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        body = codec.encode_requests(enumerate(requests, 1))
        writer.write(codec.HEADER.pack(len(body)) + body)
        return await asyncio.wait_for(reader.read(), 10)  # to EOF: the node hangs up
    finally:
        writer.close()


def test_a_stranger_without_the_secret_gets_nothing_through(cluster: Cluster) -> None:
    host, port = _peer(cluster, 1)
    epoch = ring_of(cluster, 1).epoch
    planted = plain_version(make_actor("stranger", 1), HLC().now(), b"forged")
    requests: list[m.Request] = [
        m.Admin({"cmd": "remove", "remove": "n1"}),
        m.DropPartition(0, 64),
        m.Gossip({"forged": True}),
        m.ReplicaWrite(ring_of(cluster, 1).partition_of(b"planted"), b"planted", planted, "lww"),
    ]

    async def body() -> None:
        for secret in (b"", b"guess"):
            with pytest.raises(PeerAuthError, match="does not know the cluster secret"):
                await open_peer(host, port, "stranger", secret)
        rest = await _send_instead_of_answer(host, port, requests)
        assert b"refused" in rest and b"handshake frame: malformed" in rest

    asyncio.run(body())
    assert _all_keys_on(cluster, 1), "a partition of n2 was dropped"
    assert local_read(cluster, 1, b"planted") in (None, ())
    assert ring_of(cluster, 1).epoch == epoch and ring_of(cluster, 0).epoch == epoch
    assert cluster.up_count(0) == 2 and cluster.up_count(1) == 2
    log = cluster.members[1].log.read_text()
    assert "refused peer 127.0.0.1:" in log and "'stranger'" in log


def test_a_peer_with_the_secret_cannot_drop_where_flush_is_off(cluster: Cluster) -> None:
    host, port = _peer(cluster, 1)

    async def drop() -> m.Reply:
        async with peer_client(f"{host}:{port}", "operator", SECRET.encode(),
                               timeout_s=10) as c:
            return await c.call(m.DropPartition(0, 64), timeout=30)

    reply = asyncio.run(drop())
    assert reply.status is m.Status.BAD_REQUEST
    assert "n2 refuses to drop partitions for a peer" in reply.message
    assert "enable_flush = false" in reply.message
    assert _all_keys_on(cluster, 1)
    log = cluster.members[1].log.read_text()
    assert "admin request from peer operator at 127.0.0.1:" in log
    assert "DropPartition(partition=0, count=64" in log and "BAD_REQUEST n2 refuses" in log


def test_256_idle_peer_sockets_do_not_lock_out_ringkv_status(cluster: Cluster) -> None:
    host, port = _peer(cluster, 0)
    secret = cluster.root / "cluster.secret"
    secret.write_text(SECRET + "\n")

    async def body() -> None:
        idle = []
        try:
            for _ in range(300):
                idle.append((await asyncio.open_connection(host, port))[1])
            started = time.monotonic()
            result = await asyncio.to_thread(CliRunner().invoke, cli, [
                "status", "--json", "--addr", f"{host}:{port}", "--secret-file", str(secret)])
            took = time.monotonic() - started
            assert result.exit_code == 0, result.output
            doc: dict[str, Any] = json.loads(result.output)
            assert [n["state"] for n in doc["nodes"]] == ["up", "up"]
            assert took < 10, f"ringkv status took {took:.1f}s"
        finally:
            for w in idle:
                w.close()

    asyncio.run(body())


def test_flushall_fails_naming_the_node_that_refuses(cluster: Cluster) -> None:
    """Last in this module: n1 allows FLUSHALL and drops its own copies."""
    import redis

    with pytest.raises(redis.ResponseError, match="n2 refuses to drop partitions"):
        cluster.client(0).flushall()
    assert _all_keys_on(cluster, 1)
