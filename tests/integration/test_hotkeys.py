"""Hot keys on a live 3-node cluster: the sketch in INFO hotkeys, the
metrics and ``ringkv hotkeys``; concurrent GETs coalesced; the hot-key
cache's staleness bound against a write through another node."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.cluster import SECRET, Cluster, scrape

pytestmark = pytest.mark.integration

CACHE_MS = 400


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("hot")), nodes=3, n=3,
                node_settings={"n1": {"hotkeys": {"cache_ms": CACHE_MS,
                                                  "hot_reads_per_s": 5.0}}})
    try:
        c.start()
        yield c
    finally:
        c.close()


def test_the_hot_key_tops_info_metrics_and_the_cli(cluster: Cluster) -> None:
    r = cluster.client(1)
    r.set("cold", "x")
    r.set("hot:1", "v")
    for _ in range(300):
        r.get("hot:1")
    r.get("cold")
    info = cluster.info(1, "hotkeys")
    first = info["hotkey_1"]
    assert first["key"] == r"hot\x3a1"  # ':' is escaped in INFO lines
    assert first["reads_per_s"] > 0 and first["writes_per_s"] > 0
    assert any(v["key"] == "cold" for v in info.values())
    metrics = scrape(cluster, 1)
    assert metrics['ringkv_hot_key_requests_per_second{key="hot\\\\x3a1",op="read",rank="1"}'] > 0

    secret = cluster.root / "cluster.secret"
    secret.write_text(SECRET + "\n")
    addr = f"127.0.0.1:{cluster.members[0].peer_port}"
    base = ["--addr", addr, "--secret-file", str(secret)]
    result = CliRunner().invoke(cli, ["hotkeys", "--json", *base])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [n["node"] for n in doc["nodes"]] == ["n1", "n2", "n3"]
    n2 = next(n for n in doc["nodes"] if n["node"] == "n2")
    assert n2["keys"][0]["key"] == "hot:1"
    result = CliRunner().invoke(cli, ["hotkeys", "--node", "n2", "--top", "1", *base])
    assert result.exit_code == 0, result.output
    assert "hot\\x3a1" in result.output and "cold" not in result.output


def test_concurrent_gets_of_one_key_are_coalesced(cluster: Cluster) -> None:
    cluster.client(2).set("shared", "v")
    before = int(cluster.info(2, "stats")["coalesced_reads"])
    errors: list[BaseException] = []

    def reader() -> None:
        client = cluster.client(2)
        try:
            for _ in range(150):
                assert client.get("shared") == b"v"
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert int(cluster.info(2, "stats")["coalesced_reads"]) > before


def test_a_write_through_another_node_is_seen_within_cache_ms(cluster: Cluster) -> None:
    """n1 caches hot keys for CACHE_MS; a SET acknowledged by n2 must be in
    every GET sent to n1 from CACHE_MS after the acknowledgement on."""
    here, there = cluster.client(0), cluster.client(1)
    stale_within, stale_after = 0, []
    for round_ in range(5):  # the GETs of each round keep the key hot (and cached)
        value = f"v{round_}".encode()
        there.set("cached", value)
        acked = time.monotonic()
        while (sent := time.monotonic()) < acked + CACHE_MS / 1000 + 0.3:
            if here.get("cached") != value:
                if sent > acked + CACHE_MS / 1000:
                    stale_after.append(round(sent - acked, 3))
                stale_within += 1
    assert stale_after == []
    stats = cluster.info(0, "stats")
    assert int(stats["cache_hits"]) > 0 and int(stats["cache_misses"]) > 0
    assert stale_within > 0  # the cache did answer old values inside the bound
