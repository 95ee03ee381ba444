"""Regression: a worker SIGKILLed right after its fork was never restarted;
and nothing that goes wrong while supervising a worker ends its supervision.

The supervisor writes a new worker's config to its stdin as soon as the
spawn returns. Under uvloop (what a node runs on), a worker already dead by
then has a closed pipe transport, and the write raised RuntimeError; that
ended the worker's supervise task without a log line, so the worker stayed
down for good (the fault schedules' ``settle`` waited 90 s for
``workers_ready``). The default asyncio loop accepts such a write quietly,
so the supervisor runs here in a process of its own under uvloop, as in a
node, and the test kills each of its workers the moment it appears.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shardserver.supervisor import PingResult, Supervisor, ping_worker
from tests.processes import stop

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

#: One worker under uvloop; on a line on stdin, wait for it to be ready and
#: print its restart count (a timeout exits non-zero with a traceback).
SUPERVISE = """
import asyncio, sys
import uvloop
from shardserver.supervisor import Supervisor

async def main(root):
    sup = Supervisor(root + "/data", root + "/run", 8, 1,
                     backoff_initial_s=0.01, backoff_max_s=0.05)
    await sup.start()
    await asyncio.to_thread(sys.stdin.readline)
    try:
        await sup.wait_ready(30.0)
        print("ready", sup.restarts(0), flush=True)
    finally:
        await sup.stop()

uvloop.run(main(sys.argv[1]))
"""


def kill_children(pid: int, seconds: float) -> int:
    """SIGKILL every child of ``pid`` as soon as it is listed, for ``seconds``;
    returns how many signals were sent."""
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:  # the supervisor died: the caller reports it
            break
        for child in children:
            try:
                os.kill(int(child), signal.SIGKILL)
                sent += 1
            except ProcessLookupError:
                pass
    return sent


def test_worker_killed_right_after_its_fork_is_restarted(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        sent = kill_children(proc.pid, 3.0)
        out, err = proc.communicate(b"go\n", timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 0, f"the worker never came back:\n{err.decode()[-3000:]}"
    word, restarts = out.split()
    assert word == b"ready"
    assert sent > 0 and int(restarts) >= 3, (sent, restarts)  # the kills hit start-ups


def test_an_error_while_watching_a_worker_restarts_it_instead_of_ending_supervision(
    tmp_path: Path,
) -> None:
    calls = 0

    async def ping_failing_once(path: str, timeout_s: float) -> PingResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug in the watch loop")
        return await ping_worker(path, timeout_s)

    async def body() -> None:
        sup = Supervisor(str(tmp_path / "data"), str(tmp_path / "run"), 8, 1,
                         ping=ping_failing_once, ping_interval_s=0.1, backoff_initial_s=0.05)
        await sup.start()
        try:
            await sup.wait_ready(30.0)
            assert sup.restarts(0) == 1  # the first worker was killed and replaced
            assert sup.status()[0].last_exit == -signal.SIGKILL
        finally:
            await sup.stop()

    asyncio.run(asyncio.wait_for(body(), 60.0))


def test_one_late_ping_keeps_a_worker_in_service_two_take_it_out(tmp_path: Path) -> None:
    """A coordinator short of CPU answers its own pings late: one missed
    ping must not cut it off from a live worker; two in a row do."""
    script: list[PingResult] = []
    seen: list[bool] = []

    async def scripted(path: str, timeout_s: float) -> PingResult:
        result = await ping_worker(path, timeout_s)
        return script.pop(0) if result == "ready" and script else result

    async def body() -> None:
        sup = Supervisor(str(tmp_path / "data"), str(tmp_path / "run"), 8, 1,
                         ping=scripted, ping_interval_s=0.05)
        await sup.start()
        try:
            await sup.wait_ready(30.0)
            for then in (["down"], ["down", "down"]):
                script.extend(then)
                for _ in range(200):  # until the script is used up, and one ping more
                    if not script:
                        break
                    await asyncio.sleep(0.01)
                seen.append(sup.ready(0))
                script.clear()
                await sup.wait_ready(30.0)
            assert sup.restarts(0) == 0
        finally:
            await sup.stop()

    asyncio.run(asyncio.wait_for(body(), 60.0))
    assert seen == [True, False]
