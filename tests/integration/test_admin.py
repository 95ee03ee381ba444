"""Admin commands against a live 3-node cluster, through click's CliRunner
(in-process CLI, real nodes), and the Prometheus endpoint under load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from cli.main import cli
from tests.cluster import SECRET, Cluster, scrape, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("adm")), nodes=3, n=3)
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def secret_file(cluster: Cluster) -> str:
    path = cluster.root / "cluster.secret"
    path.write_text(SECRET + "\n")
    return str(path)


def run(cluster: Cluster, secret_file: str, *args: str, node: int = 0) -> tuple[int, str]:
    addr = f"127.0.0.1:{cluster.members[node].peer_port}"
    result = CliRunner().invoke(cli, [*args, "--addr", addr, "--secret-file", secret_file])
    return result.exit_code, result.output


def run_json(cluster: Cluster, secret_file: str, *args: str) -> dict:  # type: ignore[type-arg]
    code, out = run(cluster, secret_file, *args, "--json")
    assert code == 0, out
    doc: dict = json.loads(out)  # type: ignore[type-arg]
    return doc


def test_status_and_ring(cluster: Cluster, secret_file: str) -> None:
    doc = run_json(cluster, secret_file, "status")
    assert [n["node"] for n in doc["nodes"]] == ["n1", "n2", "n3"]
    assert all(n["state"] == "up" and n["partitions_primary"] == 64 for n in doc["nodes"])
    code, out = run(cluster, secret_file, "status")
    assert code == 0 and "n2" in out and "as seen by n1" in out
    ring = run_json(cluster, secret_file, "ring", "--key", "user:42")
    assert ring["q"] == 64 and sorted(ring["key"]["primaries"]) == ["n1", "n2", "n3"]
    code, out = run(cluster, secret_file, "ring", "--key", "user:42")
    assert code == 0 and "partition" in out and "primaries" in out


def test_compact_flush_hints_transfers(cluster: Cluster, secret_file: str) -> None:
    for batch in range(3):  # several flushes: several L0 files per worker
        cluster.client(0).mset({f"c{batch}-{i}": "x" * 100 for i in range(700)})
        code, out = run(cluster, secret_file, "flush", "--node", "n2")
        assert code == 0 and "n2: flushed 2 workers" in out
    doc = run_json(cluster, secret_file, "compact", "--node", "n2")
    assert doc["before"]["l0_files"] >= 4, doc["before"]
    assert doc["node"] == "n2" and doc["after"]["l0_files"] == 0
    assert doc["after"]["levels_over_target"] == 0 and doc["after"]["bytes"] > 0
    code, out = run(cluster, secret_file, "compact", "--partition", "3")
    assert code == 0 and "compacted n1 partition 3" in out
    assert run_json(cluster, secret_file, "hints")["backlog"] == {}
    assert run_json(cluster, secret_file, "transfers", "--node", "n3")["running"] == []


def test_compact_all_compacts_every_node_from_one_command(cluster: Cluster,
                                                         secret_file: str) -> None:
    for batch in range(2):  # two flushes: two L0 files per worker on every node
        cluster.client(0).mset({f"a{batch}-{i}": "y" * 100 for i in range(500)})
        for node in ("n1", "n2", "n3"):
            code, out = run(cluster, secret_file, "flush", "--node", node)
            assert code == 0, out
    doc = run_json(cluster, secret_file, "compact", "--all")
    assert doc["errors"] == {} and sorted(doc["nodes"]) == ["n1", "n2", "n3"]
    for node, report in doc["nodes"].items():
        assert report["node"] == node and report["steps"] == 2, report
        assert report["before"]["l0_files"] >= 2 and report["after"]["l0_files"] == 0, report
    code, out = run(cluster, secret_file, "compact", "--all")
    assert code == 0 and [line.split()[1] for line in out.splitlines()
                          if line.startswith("compacted")] == ["n1", "n2", "n3"]
    code, out = run(cluster, secret_file, "compact", "--all", "--node", "n2")
    assert code == 2 and out.strip() == "error: --all and --node exclude each other"


def test_errors_are_one_line_and_non_zero(cluster: Cluster, secret_file: str,
                                          tmp_path: Path) -> None:
    code, out = run(cluster, secret_file, "compact", "--partition", "99")
    assert code == 2 and out.strip() == "error: partition must be 0..63, got 99"
    code, out = run(cluster, secret_file, "hints", "--node", "nope")
    assert code == 2 and out.strip() == "error: no node 'nope' in the ring"
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-it")
    code, out = run(cluster, str(wrong), "status")
    assert code == 1 and "does not know the cluster secret" in out and "Traceback" not in out
    result = CliRunner().invoke(cli, ["status", "--addr", "127.0.0.1:1", "--secret-file",
                                      secret_file])
    assert result.exit_code == 1 and result.output.startswith("error: cannot reach the node")


def test_metrics_move_with_the_load(cluster: Cluster, secret_file: str) -> None:
    before = scrape(cluster, 0)
    r = cluster.client(0)
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(f"m{i}", "v" * 200)
        pipe.get(f"m{i}")
    pipe.execute()
    after = scrape(cluster, 0)
    sets = 'ringkv_requests_total{command="SET",consistency="W=2 PW=0",outcome="ok"}'
    gets = 'ringkv_request_seconds_count{command="GET",consistency="R=2 PR=0"}'
    assert after[sets] - before.get(sets, 0) == 3000
    assert after[gets] - before.get(gets, 0) == 3000
    assert after['ringkv_node_up{node="n2"}'] == 1.0

    # SSTable counts per level follow a flush (the scrape reads stats kept
    # fresh every 2 s).
    def l0(i: int) -> float:
        return scrape(cluster, i).get('ringkv_sstables{level="0"}', 0.0)

    start_l0 = l0(0)
    assert run(cluster, secret_file, "flush")[0] == 0
    wait_for("L0 count rises after a flush", lambda: l0(0) > start_l0, 10)

    # The hint backlog follows a node going down and coming back.
    backlog = 'ringkv_hint_backlog_partitions{target="n3"}'
    cluster.stop_node(2)
    try:
        cluster.wait_seen(2, "down")
        r.mset({f"h{i}": "x" for i in range(300)})
        assert scrape(cluster, 0).get(backlog, 0) > 0
    finally:
        cluster.start_node(2)
        cluster.wait_seen(2, "up")
    wait_for("hint backlog drained", lambda: scrape(cluster, 0).get(backlog, 0) == 0, 30)


def test_repair_and_drain(cluster: Cluster, secret_file: str) -> None:
    doc = run_json(cluster, secret_file, "repair", "--node", "n2", "--partition", "5")
    assert doc["node"] == "n2" and doc["partitions"] == 1 and doc["error_count"] == 0
    code, out = run(cluster, secret_file, "repair")
    assert code == 0 and out.startswith("repaired n1: 64 partitions"), out
    code, out = run(cluster, secret_file, "drain", "--node", "n3")
    assert code == 0 and "n3: draining" in out
    with pytest.raises(redis.ResponseError, match="node n3 is draining"):
        cluster.client(2).set("d", "x")
    # The others route around it: W=2 from n1 and n2.
    wait_for("n1 routes around n3", lambda: cluster.client(0).set("d", "x"), 10)
    assert cluster.client(2).get("d") == b"x"  # reads still served by n3
    # Undone (`drain --off`, asked of n3 itself: the others see it down).
    code, out = run(cluster, secret_file, "drain", "--off", node=2)
    assert code == 0 and out.strip() == "n3: undrained: takes writes, peers route to it again"
    cluster.client(2).set("d", "y")
    wait_for("n1 routes to n3 again", lambda: next(
        n for n in run_json(cluster, secret_file, "status")["nodes"] if n["node"] == "n1"
    )["peers"]["n3"]["state"] == "up", 15)
