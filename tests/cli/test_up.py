"""`ringkv up` as a user runs it: the installed console script, a 3-node
cluster in a fresh directory, a client round trip, then Ctrl-C (SIGINT to
the whole process group, as a terminal sends it) stops everything."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
import redis

from shardserver.protocol.pool import default_worker_count, usable_cores
from tests.cluster import port_block, wait_for
from tests.processes import group_alive

pytestmark = pytest.mark.integration


def test_ringkv_up_serves_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    exe = shutil.which("ringkv")
    assert exe is not None, "the ringkv console script is not installed"
    port = port_block(3)
    proc = subprocess.Popen(
        [exe, "up", "--data", str(tmp_path / "data"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Connect with:"):
                break
        out = "".join(lines)
        assert "3 nodes up" in out and f"redis-cli -p {port}" in out, out
        r = redis.Redis(port=port, socket_timeout=10)
        assert r.set("hello", "world") is True
        assert redis.Redis(port=port + 2, socket_timeout=10).get("hello") == b"world"
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
            "cluster.secret", "node1", "node1.log", "node1.toml", "node2", "node2.log",
            "node2.toml", "node3", "node3.log", "node3.toml",
        ]
        _admin_commands_work(exe, tmp_path / "data", port)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0
        wait_for("every process of the cluster is gone", lambda: not group_alive(proc.pid), 30)
    finally:
        if proc.poll() is None or group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _admin_commands_work(exe: str, data: Path, port: int) -> None:
    """Every admin command, end to end through the console script."""
    common = ["--addr", f"127.0.0.1:{port + 10000}", "--secret-file", str(data / "cluster.secret"),
              "--json"]

    def admin(*args: str) -> dict:  # type: ignore[type-arg]
        done = subprocess.run([exe, *args, *common], capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, done.stderr
        doc: dict = json.loads(done.stdout)  # type: ignore[type-arg]
        return doc

    assert [n["state"] for n in admin("status")["nodes"]] == ["up", "up", "up"]
    assert admin("ring", "--key", "hello")["key"]["partition"] in range(64)
    assert admin("hints", "--node", "node2")["node"] == "node2"
    assert admin("transfers")["running"] == []
    # The nodes share this machine's cores: one coordinator and the default
    # worker count for a third of them each (1 on 2 cores: 6 processes, not 9).
    per_node = default_worker_count(max(1, usable_cores() // 3))
    assert admin("flush")["flushed_workers"] == per_node
    assert admin("compact", "--node", "node3")["after"]["l0_files"] == 0
    assert admin("repair", "--node", "node2")["partitions"] == 64
    assert admin("drain", "--node", "node3")["state"] == "draining"
    # 3 nodes at N=3: a removal is refused, with the cause, exit 2.
    done = subprocess.run([exe, "remove", "node3", *common], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "would leave 2 node(s) for N=3" in done.stderr
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port + 1000}/metrics", timeout=5)
    assert b"ringkv_requests_total" in metrics.read()
