"""Redis tooling against a real node (issue 16, point 4): the INFO fields
that redis-py's harness, redis-cli and redis_exporter read, CONFIG SET of the
run-time settings and CONFIG RESETSTAT, clear refusals of scripting, and a
value of hundreds of MiB refused while it streams, with the connection kept
and the coordinator's memory flat."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.clients import rss_mib
from tests.cluster import Cluster, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("tooling")), nodes=1, n=1, workers=2)
    try:
        c.start()
        yield c
    finally:
        c.close()


def cli(c: Cluster, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(c.members[0].client_port), *args],
                          capture_output=True, text=True, timeout=30, check=True).stdout


def test_info_has_the_fields_redis_tools_read(cluster: Cluster) -> None:
    r = cluster.client(0)
    server = r.info("server")
    assert server["redis_version"] == "7.0.0"
    assert server["redis_mode"] == "standalone"
    assert server["ringkv_version"]
    assert server["arch_bits"] == 64 and server["os"].startswith("Linux")
    proc = cluster.members[0].proc
    assert proc is not None and server["process_id"] == proc.pid
    assert len(server["run_id"]) == 40
    assert server["tcp_port"] == cluster.members[0].client_port
    assert server["uptime_in_seconds"] >= 0
    assert 10 << 20 < r.info("memory")["used_memory"] < 4 << 30
    assert r.info("cluster")["cluster_enabled"] == 0
    assert r.info("replication")["role"] == "master"
    r.mset({f"ks{i}": "v" for i in range(50)})
    # The keyspace counts what the workers report, polled every 2 s.
    wait_for("db0 shows the keys",
             lambda: r.info("keyspace").get("db0", {}).get("keys", 0) >= 50, 15)
    # redis-cli reads the same text.
    text = cli(cluster, "INFO", "server")
    assert "redis_version:7.0.0" in text and "redis_mode:standalone" in text


def test_config_set_changes_run_time_settings_and_refuses_others(cluster: Cluster) -> None:
    r = cluster.client(0)

    def only_r() -> bool:  # earlier connections' closes are seen by the node
        return int(r.info("clients")["connected_clients"]) == 1

    wait_for("only this test's connection is open", only_r, 30)
    try:
        assert cli(cluster, "CONFIG", "SET", "maxclients", "3") == "OK\n"
        assert r.config_get("max_clients") == {"max_clients": "3"}
        assert r.config_get("maxclients") == {"maxclients": "3"}
        wait_for("redis-cli's connection is closed", only_r, 30)
        held = [cluster.client(0) for _ in range(2)]
        for h in held:
            assert h.ping() is True
        with pytest.raises(redis.ConnectionError, match="max number of clients"):
            cluster.client(0).ping()
    finally:  # the next tests need their connections
        assert r.config_set("max_clients", 10000) is True
    assert cluster.client(0).ping() is True
    for h in held:
        h.close()
    with pytest.raises(redis.ResponseError) as info:
        r.config_set("partitions", 128)
    assert "not changeable at run time" in str(info.value)
    assert "max_clients" in str(info.value)  # it names those that are
    with pytest.raises(redis.ResponseError, match="Unknown option"):
        r.config_set("no_such_thing", 1)
    with pytest.raises(redis.ResponseError, match=r"must be 1\.\.n"):
        r.config_set("w", 2)  # n is 1
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.config_set("max_clients", "many")
    assert r.config_get("w") == {"w": "1"}


def test_config_resetstat_zeroes_info_counters(cluster: Cluster) -> None:
    r = cluster.client(0)
    r.set("a", "b")
    assert r.info("stats")["commands_processed"] > 1
    assert r.config_resetstat() is True
    stats = r.info("stats")
    assert stats["commands_processed"] <= 2 and stats["writes"] == 0


def test_scripting_is_refused_clearly(cluster: Cluster) -> None:
    r = cluster.client(0)
    for command in (("FUNCTION", "LIST"), ("SCRIPT", "FLUSH"), ("EVAL", "return 1", "0")):
        with pytest.raises(redis.ResponseError) as info:
            r.execute_command(*command)  # type: ignore[no-untyped-call]
        assert str(info.value) == (
            f"{command[0]} is not supported: ringkv runs no server-side scripts or functions")
    assert r.ping() is True


def test_value_too_large_keeps_the_connection(cluster: Cluster) -> None:
    r = cluster.client(0)
    with pytest.raises(redis.ResponseError, match=r"value too large \(3145728 > 65536 bytes\)"):
        r.set("big", b"x" * (3 << 20))
    assert r.ping() is True and r.set("small", "ok") is True


def test_a_300_mib_value_streams_into_the_void(cluster: Cluster) -> None:
    """A 300 MiB bulk is dropped as it arrives: the coordinator's resident
    memory stays flat, the reply is "value too large", and the same
    connection answers the next command."""
    size = 300 << 20
    before = rss_mib(cluster)
    peak = before
    chunk = b"v" * (1 << 20)
    with socket.create_connection(("127.0.0.1", cluster.members[0].client_port), 10) as s:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$4\r\nhuge\r\n$%d\r\n" % size)
        started = time.monotonic()
        for i in range(300):
            s.sendall(chunk)
            if i % 25 == 0:
                peak = max(peak, rss_mib(cluster))
        s.sendall(b"\r\n*1\r\n$4\r\nPING\r\n")
        want = b"-ERR value too large (314572800 > 65536 bytes)\r\n+PONG\r\n"
        data = b""
        s.settimeout(10)
        while len(data) < len(want) and (got := s.recv(4096)):
            data += got
        elapsed = time.monotonic() - started
    assert data == want
    peak = max(peak, rss_mib(cluster))
    print(f"300 MiB discarded in {elapsed:.1f} s; RSS {before:.0f} -> peak {peak:.0f} MiB")
    assert peak - before < 48, (before, peak)
    assert cluster.client(0).info("stats")["values_discarded"] >= 1
