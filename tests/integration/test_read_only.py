"""The operator's kill switch (``ringkv readonly``) on a live 3-node cluster:
writes refused with READONLY (operator), reads served, INFO, Prometheus and
``ringkv status`` show it, and it survives a restart until turned off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from cli.admin import AdminClient, Refused
from cli.main import cli
from coordinator.ops import admin_api as api
from tests.cluster import Cluster, running_cluster, scrape, secret_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(Path(tmp_path_factory.mktemp("ro")), nodes=3, n=3) as c:
        yield c


def readonly(c: Cluster, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["readonly", *args, "--addr",
                                      f"127.0.0.1:{c.members[0].peer_port}",
                                      "--secret-file", str(secret_file(c))])
    return result.exit_code, result.output


def status(c: Cluster) -> dict[str, dict]:  # type: ignore[type-arg]
    result = CliRunner().invoke(cli, ["status", "--json", "--addr",
                                      f"127.0.0.1:{c.members[1].peer_port}",
                                      "--secret-file", str(secret_file(c))])
    assert result.exit_code == 0, result.output
    return {n["node"]: n for n in json.loads(result.output)["nodes"]}


def refused(c: Cluster, i: int) -> bool:
    try:
        c.client(i).set("ro-probe", "x")
    except redis.ResponseError as exc:
        assert str(exc).startswith(f"writes are off on n{i + 1} (operator)"), exc
        return True
    return False


def test_the_cluster_switch_refuses_writes_serves_reads_and_survives_a_restart(
        cluster: Cluster) -> None:
    cluster.client(0).set("before", "v")
    code, out = readonly(cluster, "on", "--reason", "migration window")
    assert code == 0, out
    assert out.splitlines() == [f"n{i}: read-only - migration window" for i in (1, 2, 3)]
    for i in range(3):
        with pytest.raises(redis.ReadOnlyError, match=r"writes are off on n\d \(operator\): "
                                                      "migration window"):
            cluster.client(i).set("k", "v")
        with pytest.raises(redis.ReadOnlyError):
            cluster.client(i).delete("before")
        assert cluster.client(i).get("before") == b"v"  # reads keep working
        assert cluster.info(i, "server")["read_only_mode"].startswith(
            f"on: writes are off on n{i + 1} (operator)")
        assert scrape(cluster, i)["ringkv_read_only_mode"] == 1
    assert all(n["read_only_mode"] for n in status(cluster).values())
    assert readonly(cluster, "on", "--reason", "migration window")[1].count("(already)") == 3

    # A restart keeps it: the mode is in the data directory.
    cluster.stop_node(1)
    cluster.start_node(1)
    cluster.wait_all_up()
    assert refused(cluster, 1)

    code, out = readonly(cluster, "off")
    assert code == 0 and out.count("writable") == 3, out
    for i in range(3):
        cluster.client(i).set("after", str(i))
        assert cluster.info(i, "server")["read_only_mode"] == "off"
        assert scrape(cluster, i)["ringkv_read_only_mode"] == 0
    cluster.stop_node(1)  # and off survives too
    cluster.start_node(1)
    cluster.wait_all_up()
    assert not refused(cluster, 1)


def test_one_node_and_a_down_node(cluster: Cluster) -> None:
    code, out = readonly(cluster, "on", "--node", "n3")
    assert code == 0 and out.strip() == "n3: read-only", out
    assert refused(cluster, 2) and not refused(cluster, 0)
    # n3 still stores the replica writes other nodes coordinate.
    cluster.client(0).set("via-n1", "x")
    assert cluster.client(2).get("via-n1") == b"x"
    states = status(cluster)
    assert states["n3"]["read_only_mode"] and not states["n1"]["read_only_mode"]
    readonly(cluster, "off", "--node", "n3")
    cluster.stop_node(2)
    cluster.wait_seen(2, "down")
    try:
        code, out = readonly(cluster, "on")
        assert code == 1 and "n3: NOT switched: down" in out, out
        assert refused(cluster, 0) and refused(cluster, 1)
    finally:
        readonly(cluster, "off")
        cluster.start_node(2)
        cluster.wait_all_up()


def test_a_reason_with_a_line_break_is_refused_by_the_node(cluster: Cluster) -> None:
    """Regression: `readonly on --reason $'x\\r\\nrole:slave'` forged fields in
    INFO server. The CLI refuses it; so does the node (another client)."""
    target = AdminClient(f"127.0.0.1:{cluster.members[0].peer_port}",
                         secret_file(cluster).read_text().strip().encode(), None, False)
    got = target.call_or_refusal(api.ReadOnlyRequest(True, "x\r\npeer_protocol:99\r\nrole:slave"),
                                 api.ReadOnlyReply)
    assert isinstance(got, Refused), got
    assert got.message.startswith("the reason may not hold control characters or line breaks "
                                  "(found '\\r')"), got.message
    server = cluster.info(0, "server")
    assert server["read_only_mode"] == "off" and "role" not in server
    assert not refused(cluster, 0)
    code, out = readonly(cluster, "on", "--reason", "x\nrole:slave")
    assert code == 2 and "the reason may not hold control characters" in out, out
    assert not refused(cluster, 0)
