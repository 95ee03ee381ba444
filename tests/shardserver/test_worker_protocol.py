"""The shard protocol version a node and its workers speak (issue 17.1): a
worker started from another install than its node's (the package upgraded
underneath a running node, then a worker restarted) is refused with an error
naming both ranges instead of half-understanding the node."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shardserver.config import WorkerConfig
from shardserver.protocol.client import ShardClient
from shardserver.protocol.messages import PROTOCOL
from tests.processes import start_worker, stop

pytestmark = pytest.mark.integration

REPO = str(Path(__file__).resolve().parents[2])


def config(tmp_path: Path, protocol: tuple[int, int]) -> WorkerConfig:
    return WorkerConfig(str(tmp_path / "w.sock"), str(tmp_path / "data"), (0, 4),
                        protocol=protocol)


def test_a_node_of_another_protocol_is_refused_naming_both_ranges(tmp_path: Path) -> None:
    newer = (PROTOCOL[1] + 1, PROTOCOL[1] + 2)
    proc = subprocess.run(
        [sys.executable, "-m", "shardserver.worker", "--config", "-"],
        input=config(tmp_path, newer).to_json(), capture_output=True, timeout=60, check=False,
        env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"},
    )
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert f"the node speaks {newer[0]}..{newer[1]}" in err, err
    assert f"this worker's build speaks {PROTOCOL[0]}..{PROTOCOL[1]}" in err, err
    assert not (tmp_path / "data").exists(), "a refused worker must not touch the data"


def test_the_common_version_is_the_newest_both_speak(tmp_path: Path) -> None:
    wider = (1, PROTOCOL[1] + 5)  # a newer node that still speaks ours
    proc = start_worker(config(tmp_path, wider), REPO)

    async def ping() -> dict[str, object]:
        client = await ShardClient.connect(str(tmp_path / "w.sock"), timeout=5)
        try:
            await client.wait_ready(60)
            return await client.ping(timeout=5)
        finally:
            await client.close()

    try:
        async def connected() -> dict[str, object]:
            for _ in range(600):
                if (tmp_path / "w.sock").exists():
                    return await ping()
                await asyncio.sleep(0.05)
            raise AssertionError("the worker never bound its socket")

        assert asyncio.run(connected())["protocol"] == PROTOCOL[1]
    finally:
        stop(proc)


def test_a_config_from_before_the_field_means_version_1(tmp_path: Path) -> None:
    doc = json.loads(config(tmp_path, PROTOCOL).to_json())
    del doc["protocol"]
    old = WorkerConfig.from_json(json.dumps(doc).encode())
    assert old.protocol == (1, 1) and old.negotiate() == 1
