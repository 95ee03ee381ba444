"""`python -m cli shadow` between redis-py clients, a real redis-server (the
primary) and a 3-node `ringkv up` (the shadow): clients get the primary's
replies, ringkv's are compared with them, an injected divergence is
reported with its key, and a ringkv that never answers delays nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.cluster import ROOT, free_ports, port_block, wait_for
from tests.integration.test_bench import start_redis
from tests.processes import group_alive, stop

pytestmark = pytest.mark.integration

ENV = dict(os.environ, PYTHONPATH=str(ROOT))
#: What "never delayed" means for one proxied request on this shared machine.
PRIMARY_BOUND_S = 0.2
UP_MAX_PORT = 55000


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_ports(1)[0]
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield port
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def ringkv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`ringkv up` (3 nodes, N=3, W=2, R=2): node1's client port."""
    root = tmp_path_factory.mktemp("ringkv")
    # `ringkv up --port` takes at most 55000; port_block may pick above it.
    port = next(p for p in (port_block(3) for _ in range(100)) if p <= UP_MAX_PORT)
    log = root / "up.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--data", str(root / "data"), "--port",
             str(port)], cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for("ringkv up is ready", lambda: "Connect with:" in log.read_text()
                 or proc.poll() is not None, 150)
        assert proc.poll() is None, log.read_text()
        yield port
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        wait_for("every ringkv process is gone", lambda: not group_alive(proc.pid), 30)


@dataclass
class Shadow:
    proc: subprocess.Popen[str]
    port: int
    stderr: Path

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10, **kwargs)

    def report(self, timeout: float = 60) -> dict[str, Any]:
        """Stop it (SIGINT) unless it stops by itself; its --json report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, self.stderr.read_text()
        doc: dict[str, Any] = json.loads(out)
        lat = doc["latency_ms"]
        for side in ("primary", "ringkv"):
            assert lat[side]["p50"] <= lat[side]["p99"] <= lat[side]["p99.9"] <= lat[side]["max"]
        ended = doc["matched"] + doc["mismatched"] + sum(doc["ringkv_errors"].values()) + sum(
            doc["refused"].values()) + sum(doc["abandoned"].values())
        assert doc["mirrored"] == ended, doc
        return doc


@pytest.fixture
def start_shadow(tmp_path: Path) -> Iterator[Any]:
    started: list[Shadow] = []

    def start(primary: int, shadow: int, *args: object) -> Shadow:
        port = free_ports(1)[0]
        err = tmp_path / f"shadow-{port}.err"
        with open(err, "w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "shadow", "--listen", str(port), "--primary",
                 f"127.0.0.1:{primary}", "--shadow", f"127.0.0.1:{shadow}", "--json",
                 *map(str, args)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=stderr,
                text=True, start_new_session=True)
        s = Shadow(proc, port, err)
        started.append(s)
        wait_for("the shadow proxy listens", lambda: "listening on" in err.read_text()
                 or proc.poll() is not None, 60)
        assert proc.poll() is None, err.read_text()
        return s

    yield start
    for s in started:
        stop(s.proc)


def wait_mirrors_answered(shadow: Shadow) -> None:
    """Until a live line printed from now on shows nothing pending (the
    proxy prints one every --interval, "pending N" while mirrors await
    ringkv's replies)."""
    def lines() -> list[str]:
        return [ln for ln in shadow.stderr.read_text().splitlines() if "| mismatches" in ln]

    before = len(lines())
    wait_for("ringkv answered every mirror",
             lambda: len(now := lines()) > before and "pending" not in now[-1], 30)


def test_supported_commands_match_and_a_divergence_is_reported_with_its_key(
        primary: int, ringkv: int, start_shadow: Any) -> None:
    shadow = start_shadow(primary, ringkv, "--interval", 0.2)
    c = shadow.client()
    assert c.set("s:a", "1") is True and c.get("s:a") == b"1"
    assert c.mset({"s:b": "2", "s:c": b"\x00\xff"}) is True
    assert c.mget("s:a", "s:b", "s:c", "s:none") == [b"1", b"2", b"\x00\xff", None]
    assert c.exists("s:a", "s:b", "s:none") == 2
    assert c.delete("s:a", "s:none") == 1 and c.get("s:a") is None
    assert c.ping() is True and c.echo("hi") == b"hi"
    pipe = c.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"s:p{i}", i)
        pipe.get(f"s:p{i}")
    assert pipe.execute()[1::2] == [str(i).encode() for i in range(200)]
    # served by the primary, not mirrored
    assert c.incr("s:n") == 1 and c.set("s:e", "x", ex=60) is True and c.dbsize() > 0
    # The injected divergence: ringkv alone holds another value. Injected
    # once ringkv answered every mirror so far: a mirrored MSET still in
    # flight would land under the divergent value (its version is older)
    # and the earlier mirrored reads would see the divergence too.
    wait_mirrors_answered(shadow)
    assert redis.Redis(port=ringkv, socket_timeout=10).set("s:b", "divergent") is True
    assert c.get("s:b") == b"2"  # the client still gets the primary's value
    assert c.mget("s:c", "s:b") == [b"\x00\xff", b"2"]
    wait_for("a live line", lambda: "| mismatches" in shadow.stderr.read_text(), 30)

    doc = shadow.report()
    assert doc["mismatched"] == 2 and doc["mismatched_by_command"] == {"GET": 1, "MGET": 1}, \
        doc["mismatches"]
    assert [(m["command"], m["keys"], m["primary"], m["ringkv"]) for m in doc["mismatches"]] \
        == [("GET", ["s:b"], '"2"', '"divergent"'),
            ("MGET", ["s:b"], r'["\x00\xff", "2"]', r'["\x00\xff", "divergent"]')]
    assert doc["dropped"] == {} and doc["abandoned"] == {} and doc["ringkv_errors"] == {}
    assert doc["matched"] == doc["mirrored"] - 2 >= 400 + 9
    assert doc["unsupported"] == {"INCRBY": 1, "SET EX": 1}
    assert doc["not_compared"]["DBSIZE"] == 1
    assert doc["requests"] == doc["mirrored"] + sum(doc["unsupported"].values()) + sum(
        doc["not_compared"].values())
    assert doc["latency_ms"]["primary"]["p50"] > 0 and doc["latency_ms"]["ringkv"]["p50"] > 0


def drive(shadow: Shadow, prefix: str, pairs: int) -> tuple[float, int]:
    """SET then GET ``pairs`` keys through the proxy, one at a time, until
    done or the proxy stops by itself (--requests); the slowest request's
    seconds, and the pairs done."""
    c = shadow.client()
    slowest, done = 0.0, 0
    deadline = time.monotonic() + 120
    while done < pairs and time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            assert c.set(f"{prefix}{done}", done) is True
            assert c.get(f"{prefix}{done}") == str(done).encode()
        except redis.ConnectionError:
            assert shadow.proc.wait(30) == 0, shadow.stderr.read_text()
            break
        slowest = max(slowest, (time.monotonic() - t0) / 2)
        done += 1
    return slowest, done


def test_a_ringkv_that_never_answers_delays_no_reply_of_the_primary(
        primary: int, start_shadow: Any) -> None:
    # A socket that accepts (the kernel completes the handshake into its
    # backlog) but is never read: mirrors pile up unanswered.
    with socket.create_server(("127.0.0.1", 0), backlog=64) as black_hole:
        hole = black_hole.getsockname()[1]
        shadow = start_shadow(primary, hole, "--max-pending", 50, "--shadow-timeout", 1,
                              "--requests", 3000, "--interval", 0.5)
        slowest, done = drive(shadow, "h:", 10_000)
        assert shadow.proc.wait(30) == 0  # it stopped by itself
        doc = shadow.report()
    assert slowest < PRIMARY_BOUND_S, f"a request took {slowest * 1000:.0f} ms"
    assert doc["requests"] >= 3000 and done >= 1400
    assert doc["matched"] == doc["mismatched"] == 0
    assert doc["latency_ms"]["primary"]["max"] < PRIMARY_BOUND_S * 1000
    assert doc["dropped"]["max pending"] > 1000
    assert doc["abandoned"]["ringkv timeout"] >= 50  # the first 50, after 1 s
    assert doc["latency_ms"]["ringkv"]["max"] == 0  # it never answered


def test_a_stopped_ringkv_node_delays_nothing(primary: int, ringkv: int,
                                             start_shadow: Any) -> None:
    node = _pid_on(ringkv)
    shadow = start_shadow(primary, ringkv, "--shadow-timeout", 1, "--interval", 0)
    assert shadow.client().set("z:warm", 1) is True  # the mirror link is up before
    os.kill(node, signal.SIGSTOP)
    try:
        slowest, done = drive(shadow, "z:", 200)
        doc = shadow.report()
    finally:
        os.kill(node, signal.SIGCONT)
    assert slowest < PRIMARY_BOUND_S, f"a request took {slowest * 1000:.0f} ms"
    assert done == 200 and doc["requests"] >= 400 and doc["mismatched"] == 0
    lost = sum(doc["abandoned"].values()) + sum(doc["dropped"].values())
    assert lost >= 400, doc  # every mirror abandoned (timeout, stop) or dropped


def test_startup_errors_name_their_cause(primary: int, tmp_path: Path) -> None:
    closed = free_ports(1)[0]
    for args, why in ((["--primary", f"127.0.0.1:{closed}"],
                       f"cannot connect to the primary at 127.0.0.1:{closed}"),
                      (["--primary", str(primary), "--shadow", str(closed)],
                       f"cannot connect to the ringkv at 127.0.0.1:{closed}"),
                      (["--primary", "127.0.0.1:notaport"], "is not PORT or HOST:PORT")):
        done = subprocess.run(
            [sys.executable, "-m", "cli", "shadow", "--listen", str(free_ports(1)[0]), *args],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0 and why in done.stderr, done.stderr


def _pid_on(port: int) -> int:
    return int(redis.Redis(port=port, socket_timeout=10).info("server")["process_id"])
