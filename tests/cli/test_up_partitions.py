"""`ringkv up --partitions Q`: the cluster's ring has Q partitions, a bad Q
is refused before any node starts, and a data directory made with one Q
refuses to start with another (real processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from cli.main import cli
from tests.cli.test_up_files import ctrl_c, kill_group, start_up
from tests.cluster import port_block

pytestmark = pytest.mark.integration


def test_up_refuses_a_partition_count_that_is_not_a_power_of_two(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["up", "--data", str(tmp_path / "data"),
                                      "--port", str(port_block(3)), "--partitions", "1000"])
    assert result.exit_code == 1
    assert "partitions must be a power of two" in result.output and "1000" in result.output


def test_up_with_256_partitions_serves_and_the_count_is_fixed_once_created(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    port = port_block(2)
    proc = start_up(data, port, "--partitions", "256")
    try:
        r = redis.Redis(port=port, socket_timeout=10)
        keys = [b"q-%d" % i for i in range(300)]
        for k in keys:
            assert r.set(k, k[::-1]) is True
        assert redis.Redis(port=port + 1, socket_timeout=10).mget(keys) == [k[::-1] for k in keys]
        result = CliRunner().invoke(cli, ["ring", "--key", "q-1", "--json",
                                          "--addr", f"127.0.0.1:{port + 10000}",
                                          "--secret-file", str(data / "cluster.secret")])
        assert result.exit_code == 0, result.output
        ring = json.loads(result.output)
        assert ring["q"] == 256 and len(ring["owners"]) == 256
        assert sorted(n["owned"] for n in ring["nodes"]) == [128, 128]
        ctrl_c(proc)
    finally:
        kill_group(proc)

    with pytest.raises(AssertionError, match="partitions = 256") as failed:
        kill_group(start_up(data, port, "--partitions", "64"))
    assert "fixed when a cluster is created" in str(failed.value)
