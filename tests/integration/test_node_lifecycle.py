"""A node's start and stop against real processes: a second node on the
same data directory is refused (naming the pid that holds it), and SIGTERM
while a node still waits for unreachable seeds stops it promptly, workers
included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import ROOT, SECRET, free_ports, wait_for
from tests.processes import group_alive

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, name: str, data_dir: Path, seeds: list[str]) -> Path:
    client, peer = free_ports(2)
    seed_list = ", ".join(f'"{s}"' for s in seeds)
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""[node]
id = "lone"
data_dir = "{data_dir}"
[network]
client_port = {client}
peer_port = {peer}
seeds = [{seed_list}]
[cluster]
n = 1
r = 1
w = 1
secret = "{SECRET}"
[storage]
workers = 2
""")
    return path


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--config", str(config)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _unreachable_seed() -> str:
    (port,) = free_ports(1)  # nothing listens there
    return f"127.0.0.1:{port}"


def test_second_node_on_the_same_data_dir_is_refused_naming_the_holder(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _serve(_config(tmp_path, "first", data, [_unreachable_seed()]), tmp_path / "1.log")
    try:
        lock = data / "LOCK"
        wait_for("the first node holds LOCK",
                 lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 60)
        done = subprocess.run(
            [sys.executable, "-m", "cli", "serve", "--config",
             str(_config(tmp_path, "second", data, [_unreachable_seed()]))],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1, done.stderr
        assert f"data directory {data} is in use by another ringkv node" in done.stderr
        assert f"pid {first.pid} holds {lock}" in done.stderr
        assert first.poll() is None  # the first node was not disturbed
    finally:
        _kill_group(first)


def test_lock_is_free_again_after_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = _config(tmp_path, "n", data, [_unreachable_seed()])
    first = _serve(config, tmp_path / "1.log")
    try:
        wait_for("LOCK written", lambda: (data / "LOCK").exists()
                 and (data / "LOCK").read_text().strip() == str(first.pid), 60)
    finally:
        _kill_group(first)
    again = _serve(config, tmp_path / "2.log")
    try:
        wait_for("the restarted node holds LOCK despite the stale pid",
                 lambda: (data / "LOCK").read_text().strip() == str(again.pid), 60)
        assert again.poll() is None
    finally:
        _kill_group(again)


def test_sigterm_while_waiting_for_seeds_stops_promptly(tmp_path: Path) -> None:
    """The seeds never answer, so the node sits in ring formation (30 s);
    SIGTERM there used to be ignored until formation timed out."""
    data = tmp_path / "data"
    log = tmp_path / "n.log"
    proc = _serve(_config(tmp_path, "n", data, [_unreachable_seed()]), log)
    try:
        wait_for("workers ready, waiting for seeds",
                 lambda: "serving peers on" in log.read_text(), 60)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        took = time.monotonic() - started
        assert code == 0, log.read_text()
        assert took < 10
        wait_for("no worker left behind", lambda: not group_alive(proc.pid), 10)
        assert "stopping during startup" in log.read_text()
        assert not (data / "LOCK").read_text()  # released: no pid left
    finally:
        _kill_group(proc)


def test_long_data_dir_gets_a_short_socket_dir_removed_on_exit(tmp_path: Path) -> None:
    """A data_dir whose <data_dir>/run/worker-i.sock would pass the 107
    bytes of a unix socket path: the workers listen in /tmp/ringkv-XXXX
    (0700) instead, and the node removes it when it stops. CONFIG GET shows
    the seeds as a list, not a Python tuple."""
    import redis

    data = tmp_path / ("d" * 60) / ("e" * 60)
    seeds = [_unreachable_seed(), _unreachable_seed()]
    config = _config(tmp_path, "long", data, seeds)
    log = tmp_path / "long.log"
    proc = _serve(config, log)
    try:
        client_port = int(next(line.split("=")[1] for line in config.read_text().splitlines()
                               if line.startswith("client_port")))
        with redis.Redis(port=client_port, socket_timeout=5, decode_responses=True) as r:
            wait_for("the node serves", r.ping, 90)
            assert r.set("k", "v") and r.get("k") == "v"
            assert r.config_get("seeds") == {"seeds": " ".join(seeds)}
            assert r.config_get("enable_flush") == {"enable_flush": "no"}
        line = next(x for x in log.read_text().splitlines() if "worker sockets in" in x)
        short = line.split("worker sockets in ")[1].split(":")[0]
        assert short.startswith("/tmp/ringkv-")
        assert os.stat(short).st_mode & 0o777 == 0o700
        assert sorted(os.listdir(short)) == ["worker-0.attach", "worker-0.sock",
                                         "worker-1.attach", "worker-1.sock"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        assert not os.path.exists(short)
    finally:
        _kill_group(proc)
