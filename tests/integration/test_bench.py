"""`python -m cli bench` against real servers: redis-server (Debian's
package, see scripts/test.sh) and a one-node ringkv. The reports must add
up and be ordered; no timing figure is asserted except where the test
itself stalls the server, and then only as a lower bound."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.cluster import ROOT, free_ports, running_cluster, wait_for
from tests.processes import stop

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 120
KEYS = ("version", "config", "scheduled", "sent", "answered", "ok", "misses", "errors",
        "dropped", "timeouts", "unsent", "disconnects", "rate", "latency_ms", "send_lag_ms",
        "generator_cpu_s", "histogram")


def start_redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is not installed (scripts/test.sh installs it)"
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(data), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for("redis-server answers PING",
                 lambda: redis.Redis(port=port, socket_timeout=2).ping(), 30)
    except BaseException:
        stop(proc)
        raise
    return proc


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    port = free_ports(1)[0]
    proc = start_redis(port, tmp_path)
    try:
        yield port
    finally:
        stop(proc)


def bench(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "cli", "bench", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def bench_json(*args: object) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(bench(*args, "--json").stdout)
    assert set(doc) == set(KEYS), doc
    assert doc["version"] == 1
    lat = doc["latency_ms"]
    order = [lat[k] for k in ("min", "p50", "p90", "p99", "p99.9", "max")]
    assert order == sorted(order), lat
    lag = doc["send_lag_ms"]
    assert lag["p50"] <= lag["p99"] <= lag["max"]
    failed = sum(doc["errors"].values()) + doc["dropped"] + doc["timeouts"] + doc["unsent"]
    assert doc["scheduled"] == doc["ok"] + failed, doc
    assert doc["answered"] == doc["ok"] + sum(doc["errors"].values())
    assert doc["histogram"]["total"] == doc["ok"]
    return doc


def test_open_loop_against_redis_server_adds_up(redis_port: int) -> None:
    rate, duration = 400, 2
    doc = bench_json("--port", redis_port, "--rate", rate, "--duration", duration,
                     "--warmup", 0.5, "-c", 4, "--read-ratio", 0.5, "--dist", "zipf:1.1",
                     "--keys", 300, "--preload", "-d", 100)
    # the schedule is exact: every request due in the window is counted
    assert doc["scheduled"] == rate * duration
    assert doc["sent"] == doc["answered"] == doc["ok"] == doc["scheduled"]
    assert doc["errors"] == {} and doc["timeouts"] == doc["unsent"] == doc["dropped"] == 0
    assert doc["misses"] == 0  # every key was preloaded
    assert doc["rate"] == rate
    assert doc["config"]["mode"] == "open" and doc["config"]["dist"] == "zipf:1.1"
    assert redis.Redis(port=redis_port).dbsize() == 300


def test_text_report_and_one_progress_line_a_second(redis_port: int) -> None:
    done = bench("--port", redis_port, "--rate", 200, "--duration", 2, "--warmup", 0,
                 "-c", 2, "-P", 4)
    progress = [ln for ln in done.stderr.splitlines() if ln.startswith("[")]
    assert [ln.split("]")[0] for ln in progress[:2]] == ["[   1s", "[   2s"], done.stderr
    assert "open loop at 200 requests/s" in done.stdout
    assert "400 in the window, 400 answered" in done.stdout
    assert "failed: none" in done.stdout and "p99.9" in done.stdout


def test_error_replies_are_counted_by_class(redis_port: int) -> None:
    redis.Redis(port=redis_port).rpush("bench:0", "not a string")
    doc = bench_json("--port", redis_port, "--rate", 100, "--duration", 1, "--warmup", 0.2,
                     "-c", 2, "--keys", 1, "--read-ratio", 1)
    assert doc["errors"] == {"WRONGTYPE": 100}
    assert doc["ok"] == 0 and doc["answered"] == 100


def test_closed_loop_and_two_processes_over_two_targets(redis_port: int) -> None:
    doc = bench_json("--port", redis_port, "--port", f"127.0.0.1:{redis_port}", "--rate", 0,
                     "--duration", 1, "--warmup", 0.2, "-c", 4, "-P", 8, "--processes", 2)
    assert doc["config"]["mode"] == "closed" and doc["config"]["processes"] == 2
    assert doc["ok"] > 0 and doc["ok"] % 8 == 0  # whole batches
    assert doc["sent"] == doc["scheduled"] == doc["ok"]
    assert doc["errors"] == {} and doc["timeouts"] == 0
    doc = bench_json("--port", redis_port, "--rate", 600, "--duration", 1, "--warmup", 0.2,
                     "-c", 6, "--processes", 2)
    assert doc["scheduled"] == doc["ok"] == 600


def test_a_stalled_server_shows_in_the_latency_not_in_fewer_requests(
        redis_port: int, tmp_path: Path) -> None:
    """Coordinated omission: a closed-loop client would send nothing while
    the server is stopped and report only a handful of slow requests. Open
    loop, every request due during the stall waits for it, and counts."""
    rate, stall_s = 200, 1.0
    server = _pid_on(redis_port)
    out = tmp_path / "out.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(out, "w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "bench", "--port", str(redis_port), "--rate",
             str(rate), "--duration", "4", "--warmup", "0", "--grace", "5", "-c", "4",
             "--json"], cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # the first progress line: one second in
        assert first.startswith("[   1s]"), first
        os.kill(server, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            time.sleep(stall_s)  # the stall itself, not a wait for a condition
        finally:
            os.kill(server, signal.SIGCONT)
        stalled = time.monotonic() - stopped
        assert proc.wait(RUN_TIMEOUT_S) == 0
    finally:
        stop(proc)
    doc = json.loads(out.read_text())
    assert doc["scheduled"] == doc["ok"] == rate * 4  # none lost, none skipped
    # ~stalled * rate requests fell due during the stall, waiting up to
    # `stalled` each: at least 1 % of them waited over half of it.
    assert doc["latency_ms"]["max"] >= 1000 * stalled * 0.9
    assert doc["latency_ms"]["p99"] >= 1000 * stalled * 0.5


def test_connections_lost_mid_run_reconnect_and_count_what_they_dropped(
        tmp_path: Path) -> None:
    port = free_ports(1)[0]
    server = start_redis(port, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "bench", "--port", str(port), "--rate", "200",
         "--duration", "4", "--warmup", "0", "-c", "4", "--json"], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("[   1s]"), first
        server.kill()
        server.wait(10)
        server = start_redis(port, tmp_path)  # the same port, a second or so later
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        assert proc.returncode == 0, err
    finally:
        stop(proc)
        stop(server)
    doc = json.loads(out)
    assert doc["disconnects"] and sum(doc["disconnects"].values()) == 4
    # what was in flight at the kill is dropped; what fell due while the
    # server was away went out on reconnect and was answered
    assert doc["ok"] + doc["dropped"] == doc["scheduled"] == 800


def _pid_on(port: int) -> int:
    info = redis.Redis(port=port).info("server")
    return int(info["process_id"])


def test_bad_targets_fail_with_the_reason(redis_port: int) -> None:
    refused = bench("--port", free_ports(1)[0], "--duration", 1, check=False)
    assert refused.returncode == 1 and "Connection refused" in refused.stderr
    auth = bench("--port", redis_port, "--duration", 1, "--password", "nope", check=False)
    assert auth.returncode == 1 and "refused the connection" in auth.stderr
    usage = bench("--dist", "zipf:x", check=False)
    assert usage.returncode == 2 and "'x' is not a number" in usage.stderr
    usage = bench("--processes", 3, "-c", 2, check=False)
    assert usage.returncode == 2 and "3 processes need at least" in usage.stderr


def test_one_ringkv_node(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=1, n=1, workers=1) as c:
        port = c.members[0].client_port
        doc = bench_json("--port", port, "--rate", 200, "--duration", 2, "--warmup", 0.5,
                         "-c", 4, "-P", 2, "--read-ratio", 0.5, "--keys", 100, "--preload",
                         "--dist", "hot:0.5")
        assert doc["scheduled"] == doc["ok"] == 400
        assert doc["misses"] == 0 and doc["errors"] == {}
        assert c.client(0).get("bench:00") is not None
