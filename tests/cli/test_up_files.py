"""`ringkv up` leaves only private files behind, and runs again at once
after Ctrl-C, though the connections it just closed sit in TIME-WAIT on its
ports (real processes, SIGINT to the process group as a terminal sends it)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from cli.main import cli
from tests.cluster import ROOT, port_block, wait_for
from tests.processes import group_alive

pytestmark = pytest.mark.integration

NODES = 2
KEYS = [b"private-%d" % i for i in range(200)]


def start_up(data: Path, port: int, *flags: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--data", str(data), "--port", str(port),
         "--nodes", str(NODES), "--n", str(NODES), "--workers", "1", *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # ends at EOF if `up` fails
        lines.append(line)
        if line.startswith("Connect with:"):
            return proc
    proc.wait(30)
    proc.stdout.close()
    raise AssertionError(f"ringkv up exited with {proc.returncode}:\n{''.join(lines)}")


def ctrl_c(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 0
    wait_for("every process of the cluster is gone", lambda: not group_alive(proc.pid), 30)


def kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None or group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def close_from_server_side(port: int) -> None:
    """QUIT: the server closes first, so the connection's TIME-WAIT stays on
    the server's port, as after any client session a cluster served."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"QUIT\r\n")
        while s.recv(64):
            pass


def time_wait_ports() -> set[int]:
    """Local ports of IPv4 TCP connections in TIME-WAIT (state 06)."""
    ports = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "06":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def use_cluster(data: Path, port: int) -> None:
    r = redis.Redis(port=port, socket_timeout=10)
    pipe = r.pipeline(transaction=False)
    for k in KEYS:
        pipe.set(k, k[::-1])
    assert all(pipe.execute())
    r.close()
    # SSTables, not only WALs: flush every node's memtables.
    result = CliRunner().invoke(cli, ["flush", "--addr", f"127.0.0.1:{port + 10000}",
                                      "--secret-file", str(data / "cluster.secret")])
    assert result.exit_code == 0, result.output
    with urllib.request.urlopen(f"http://127.0.0.1:{port + 1000}/metrics", timeout=5) as resp:
        assert b"ringkv_requests_total" in resp.read()
    for i in range(NODES):
        close_from_server_side(port + i)


def assert_private(data: Path) -> None:
    """Directories 0700, files 0600 (configs, secret, logs, SSTables, WALs,
    state files); nothing open to group or others."""
    kinds: dict[str, int] = {}
    for root, dirs, files in os.walk(data):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        for name in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o700, name
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(st.st_mode):
                assert stat.S_IMODE(st.st_mode) == 0o600, os.path.join(root, name)
                ext = name.rsplit(".", 1)[-1] if "." in name else name
                kinds[ext] = kinds.get(ext, 0) + 1
            else:
                assert stat.S_IMODE(st.st_mode) & 0o077 == 0, os.path.join(root, name)
    for kind in ("toml", "secret", "log", "sst", "msgpack"):
        assert kinds.get(kind, 0) > 0, f"no .{kind} file was checked: {sorted(kinds)}"


def test_up_files_are_private_and_up_restarts_at_once_after_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = port_block(NODES)
    proc = start_up(data, port)
    try:
        use_cluster(data, port)
        ctrl_c(proc)
    finally:
        kill_group(proc)
    cluster_ports = {port + o + i for o in (0, 1000, 10000) for i in range(NODES)}
    assert cluster_ports & time_wait_ports(), "no TIME-WAIT left: the restart tests nothing"
    assert_private(data)

    proc = start_up(data, port)  # within a second or two of the stop
    try:
        r = redis.Redis(port=port + 1, socket_timeout=10)
        assert r.mget(KEYS) == [k[::-1] for k in KEYS]
        r.close()
        ctrl_c(proc)
    finally:
        kill_group(proc)
    assert_private(data)
