"""The terminal picture of ``ringkv status`` and ``ringkv ring`` against a
live 4-node cluster (N=3, so each node holds 3 of every 4 partitions),
through click's CliRunner: the map's shape, a key's preference list on it,
a killed node shown Down, and wrapping on a narrow terminal."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.cli.maps import map_rows
from tests.cluster import SECRET, Cluster, running_cluster, wait_for

pytestmark = pytest.mark.integration

NODES = ["n1", "n2", "n3", "n4"]
Q = 64


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(Path(tmp_path_factory.mktemp("pic")), nodes=4, n=3) as c:
        yield c


def run(cluster: Cluster, *args: str, columns: int = 80) -> str:
    secret = cluster.root / "cluster.secret"
    secret.write_text(SECRET + "\n")
    result = CliRunner().invoke(
        cli, [*args, "--addr", f"127.0.0.1:{cluster.members[0].peer_port}",
              "--secret-file", str(secret)], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def table_row(out: str, node: str) -> list[str]:
    """The first table row of ``node``, split on blanks."""
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [node])


def test_status_maps_every_node_and_partition(cluster: Cluster) -> None:
    out = run(cluster, "status")
    assert "\x1b[" not in out  # not a terminal: no colour codes
    assert out.startswith(f"ring epoch 1: Q={Q}, N=3; 4/4 nodes up as seen by n1")
    for node in NODES:
        # node state phi load(2) primary replica owns hints workers
        assert table_row(out, node)[1] == "Up"
        assert table_row(out, node)[5:8] == ["16", "32", "75.0%"]
    rows = map_rows(out.splitlines())
    assert list(rows) == [*NODES, "under-rep"]
    assert {len(cells) for cells in rows.values()} == {Q}
    for p in range(Q):
        column = [rows[n][p] for n in NODES]
        assert sorted(column) == [".", "P", "r", "r"], (p, column)
    assert rows["under-rep"] == "." * Q


def test_ring_key_marks_its_partition_and_preference_list(cluster: Cluster) -> None:
    placement = json.loads(run(cluster, "ring", "--key", "user:42", "--json"))["key"]
    p, primaries = placement["partition"], placement["primaries"]
    out = run(cluster, "ring", "--key", "user:42")
    assert f"key 'user:42': partition {p}" in out  # the lines it always had
    assert f"  primaries: {', '.join(primaries)}" in out
    for node in NODES:
        assert table_row(out, node)[3:7] == ["16", "32", "75.0%", "25.0%"]
    rows = map_rows(out.splitlines())
    assert rows["key"].index("^") == p and rows["key"].count("^") == 1
    assert rows[primaries[0]][p] == "P"
    assert [rows[n][p] for n in primaries[1:]] == ["r", "r"]
    assert [rows[n][p] for n in NODES if n not in primaries] == ["."]


def test_narrow_terminal_wraps_the_map(cluster: Cluster) -> None:
    out = run(cluster, "ring", columns=40)
    lines = out.splitlines()
    picture = lines[next(i for i, line in enumerate(lines) if line.startswith("P primary")):]
    assert max(map(len, picture)) <= 40
    rulers = [line.split()[1] for line in picture if line.startswith("partitions")]
    assert rulers == ["0", "24", "48"]  # 29 columns after the label: 24 partitions a line
    rows = map_rows(lines)
    assert {len(cells) for cells in rows.values()} == {Q}
    assert rows == map_rows(run(cluster, "ring").splitlines())  # the same map, wrapped


def test_a_killed_node_is_down_with_its_partitions_under_replicated(cluster: Cluster) -> None:
    cluster.kill(3)
    try:
        cluster.wait_seen(3, "down")
        out = run(cluster, "status")
        assert "3/4 nodes up as seen by n1" in out
        row = table_row(out, "n4")
        assert row[1] == "Down" and float(row[2]) >= 8.0 and row[3] == "?"  # phi past threshold
        rows = map_rows(out.splitlines())
        assert set(rows["n4"]) == {"X", "x", "."}
        assert rows["n4"].count("X") == 16 and rows["n4"].count("x") == 32
        assert "X" not in rows["n1"] + rows["n2"] + rows["n3"]
        assert rows["under-rep"] == re.sub("[Xx]", "!", rows["n4"])
        ring = run(cluster, "ring")
        assert table_row(ring, "n4")[1] == "down"
        assert map_rows(ring.splitlines()) == rows
        doc = json.loads(run(cluster, "status", "--json"))
        assert {"node": "n4", "state": "down", "error": None} in doc["nodes"]
    finally:
        cluster.start_node(3)
        cluster.wait_seen(3, "up")
    wait_for("n4 shown up again",
             lambda: table_row(run(cluster, "status"), "n4")[1] == "Up", 30)
