"""Stopping the processes a test started, always within a bounded time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from shardserver.config import WorkerConfig


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, then
    SIGKILL after ``timeout``; closes the pipes the test opened."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def start_worker(config: WorkerConfig, root: str) -> subprocess.Popen[bytes]:
    """``python -m shardserver.worker`` of the tree at ``root`` with
    ``config`` on its stdin, as the supervisor starts one."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardserver.worker", "--config", "-"],
        env=dict(os.environ, PYTHONPATH=root), stdin=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(config.to_json())
    proc.stdin.close()
    return proc


def count_until_killed(script: str, args: list[str], stop_at: int, timeout_s: float = 30.0) -> int:
    """Run ``python -c script *args`` (this tree on its path), which prints one
    number a line as it acknowledges work; SIGKILL it once a line reaches
    ``stop_at`` (or after ``timeout_s``) and return the last number read."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert proc.stdout is not None and proc.stderr is not None
    last = -1
    deadline = time.monotonic() + timeout_s
    try:
        while last < stop_at and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            last = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert last >= 0, f"the process never acknowledged anything: {err}"
    return last


def group_alive(pgid: int) -> bool:
    """True while any process of process group ``pgid`` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def raw(port: int, data: bytes, expect_close: bool = False, quiet_s: float = 0.5) -> bytes:
    """Send ``data`` to 127.0.0.1:``port`` over a plain socket and return what
    comes back until the server closes (``expect_close``: wait up to 5 s for
    that) or ``quiet_s`` pass without a byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.settimeout(5 if expect_close else quiet_s)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return out
            if not chunk:
                return out
            out += chunk
