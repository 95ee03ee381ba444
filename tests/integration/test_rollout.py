"""``ringkv rollout`` on a live 3-node cluster (N=3, W=2, R=2): a dry run,
the safety check with a node down, and a rollout of every node under steady
``ringkv bench`` load with zero client errors and every acknowledged write
present after. Clients use the nodes that are not being restarted (the
runbook's rule: take a node out of the clients' list before its rollout),
so each node's rollout runs beside a bench against the other two; each
node keeps its pid (it executes itself) and comes back as a new process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis
from click.testing import CliRunner

from cli.main import cli
from tests.cluster import ROOT, Cluster, running_cluster, secret_file, wait_for

pytestmark = pytest.mark.integration

BENCH_S = 45  # longer than one node's rollout (measured: about 15-25 s here)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(Path(tmp_path_factory.mktemp("rollout")), nodes=3, n=3) as c:
        yield c


def rollout(c: Cluster, *args: str, via: int = 0) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["rollout", *args, "--addr",
                                      f"127.0.0.1:{c.members[via].peer_port}",
                                      "--secret-file", str(secret_file(c))])
    return result.exit_code, result.stdout, result.stderr


def test_dry_run_and_the_safety_check(cluster: Cluster) -> None:
    code, out, _ = rollout(cluster, "--dry-run")
    assert code == 0 and out.startswith("would restart n1, n2, n3 one at a time"), out
    cluster.kill(2)
    cluster.wait_seen(2, "down")
    try:
        code, out, err = rollout(cluster, "--nodes", "n1", "--window", "1")
        assert code == 2, (out, err)
        assert "refusing to take n1 down: n3 is down and they share 64 partitions" in err
        assert "draining" not in err  # nothing was done
        # Naming the down node itself: refused up front, saying so once, and the
        # refusal's JSON has the keys of a rollout that ran.
        code, out, err = rollout(cluster, "--nodes", "n3", "--window", "1", "--json")
        assert code == 2, (out, err)
        assert err.count("n3 is down") == 1, err
        assert "cannot roll a node that is down: n3 is down" in err and "baseline" not in err
        doc = json.loads(out)
        assert set(doc) == {"order", "baseline", "nodes", "gates", "ok", "error"}, doc
        assert not doc["ok"] and doc["nodes"] == [] and doc["baseline"] is None
    finally:
        cluster.start_node(2)
        cluster.wait_all_up()


class Writer(threading.Thread):
    """Unique SETs at W=2 against the given nodes, no retries; records
    what was acknowledged and what failed."""

    def __init__(self, c: Cluster, nodes: list[int], tag: str) -> None:
        super().__init__(daemon=True)
        self.clients = [c.client(i, socket_timeout=5) for i in nodes]
        self.tag, self.acked, self.failed = tag, [], []  # type: ignore[var-annotated]
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < 100_000:
            key = f"{self.tag}:{i}"
            try:
                self.clients[i % len(self.clients)].set(key, str(i))
                self.acked.append(key)
            except redis.RedisError as exc:
                self.failed.append(f"{key}: {exc}")
            i += 1
            self.stop.wait(0.01)


def test_a_rollout_under_load_has_no_client_errors_and_loses_nothing(cluster: Cluster) -> None:
    pids = [m.proc.pid for m in cluster.members if m.proc]
    writers = []
    for x in range(3):
        others = [i for i in range(3) if i != x]
        ports = [f"127.0.0.1:{cluster.members[i].client_port}" for i in others]
        bench = subprocess.Popen(
            [sys.executable, "-m", "cli", "bench", "--json", "-q", "--rate", "300",
             "--duration", str(BENCH_S), "--warmup", "1", "-c", "8", "--keys", "2000",
             "--read-ratio", "0.5",
             *(a for p in ports for a in ("--port", p))],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        writer = Writer(cluster, others, f"roll{x}")
        writer.start()
        writers.append(writer)
        try:
            # The p99 gate is loose here: on a loaded CI machine a window's
            # p99 swings by hundreds of ms (218 ms against 156 allowed once).
            # What this test checks is client errors and lost writes; the
            # gate's arithmetic is tested in tests/cli/test_rollout_plan.py.
            code, out, err = rollout(cluster, "--nodes", f"n{x + 1}", "--window", "4",
                                     "--p99-factor", "10", "--p99-slack-ms", "2000",
                                     "--json", via=others[0])
        finally:
            writer.stop.set()
            writer.join(10)
            stdout, _ = bench.communicate(timeout=BENCH_S + 60)
        assert code == 0, (out, err)
        doc = json.loads(out)
        assert doc["ok"] and [n["node"] for n in doc["nodes"]] == [f"n{x + 1}"]
        gate = doc["nodes"][0]["gate"]
        assert gate["errors"] == 0 and gate["quorum_failures"] == 0, gate
        assert f"n{x + 1}: draining" in err and "gate ok" in err
        report = json.loads(stdout)
        print(f"n{x + 1} rolled: {doc['nodes'][0]}; bench {report['answered']} answered, "
              f"errors {report['errors']}, timeouts {report['timeouts']}, "
              f"disconnects {report['disconnects']}; writer {len(writer.acked)} acked")
        assert report["answered"] > 0 and not report["errors"] and not report["timeouts"], report
        assert not report["disconnects"] and not report["dropped"], report
        assert not writer.failed, writer.failed[:5]
    # Every node ran again as the same process (exec), now a new one.
    assert [m.proc.pid for m in cluster.members if m.proc] == pids
    for i, m in enumerate(cluster.members):
        assert "executing" in m.log.read_text(), cluster.log_tail(i)
    cluster.wait_all_up()
    wait_for("no hints left", lambda: all(
        int(cluster.info(i, "replication")["hint_partitions"]) == 0 for i in range(3)), 60)
    for w in writers:
        assert w.acked
        for i in range(3):
            got = cluster.client(i).mget(w.acked)
            missing = [k for k, v in zip(w.acked, got, strict=True) if v is None]
            assert not missing, (i, missing[:10])


def _spawn(c: Cluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "rollout", *args, "--addr",
         f"127.0.0.1:{c.members[1].peer_port}", "--secret-file", str(secret_file(c))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lease_holders(c: Cluster) -> list[str]:
    return [msgpack.unpackb((m.data_dir / "rollout_lease.msgpack").read_bytes())["holder"]
            for m in c.members]


def test_two_rollouts_at_once_one_is_refused_naming_the_holder(cluster: Cluster) -> None:
    """Regression: two rollouts started together (--nodes n1, --nodes n2)
    both passed the safety check and had n1 and n2 down together."""
    first, second = _spawn(cluster, "--nodes", "n1", "--window", "1", "--json"), \
        _spawn(cluster, "--nodes", "n2", "--window", "1", "--json")
    results = [(p.wait(180), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    (_, out_ok, err_ok), = [r for r in results if r[0] == 0]
    (_, out_no, err_no), = [r for r in results if r[0] == 2]
    holder = err_ok.split("holding the rollout lease as ", 1)[1].split()[0]
    assert f"another rollout is running: {holder} holds the rollout lease on " in err_no
    assert "run one rollout at a time" in err_no and "draining" not in err_no
    refused, done = json.loads(out_no), json.loads(out_ok)
    assert set(refused) == set(done) == {"order", "baseline", "nodes", "gates", "ok", "error"}
    assert done["ok"] and not refused["ok"] and refused["nodes"] == []
    assert "rollout done: 1 node restarted" not in out_ok  # --json: the document only
    assert _lease_holders(cluster) == ["", "", ""]  # given back at the end
    cluster.wait_all_up()


def test_ctrl_c_after_the_drain_undrains_the_node(cluster: Cluster) -> None:
    """Regression: SIGINT between the drain and the restart left the node
    draining for good (writes refused, shown as down)."""
    # --drain-wait 10: the re-check runs 10 s after n1's drain is seen, so
    # the drain of n2 below has landed by then however loaded the machine.
    proc = _spawn(cluster, "--nodes", "n1", "--window", "1", "--timeout", "60",
                  "--drain-wait", "10")
    try:
        def draining() -> bool:
            try:
                cluster.client(0).set("ctrl-c", "x")
            except redis.ResponseError as exc:
                assert "node n1 is draining" in str(exc), exc
                return True
            return False

        wait_for("n1 draining", draining, 60, interval=0.02)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert code == 130, err
    assert "n1 undrained: it takes writes again" in err
    assert "error: interrupted (Ctrl-C); n1 undrained: it takes writes again" in err
    assert "restarting" not in err
    cluster.client(0).set("ctrl-c", "y")  # takes writes again, at once
    cluster.wait_seen(0, "up")
    assert _lease_holders(cluster) == ["", "", ""]


def test_a_restart_into_a_bad_config_is_refused_with_the_cause(cluster: Cluster) -> None:
    """Regression: a config broken since the node started made the restart
    kill the node; the rollout only timed out later, without the cause."""
    m = cluster.members[0]
    good = m.config.read_text()
    m.config.write_text(good.replace("[cluster]\n", "[cluster]\nmax_peer_protocol = 99\n"))
    try:
        code, out, err = rollout(cluster, "--nodes", "n1", "--window", "1", via=1)
    finally:
        m.config.write_text(good)
    assert code == 1, (out, err)
    assert "not restarting n1: it would not start again: max_peer_protocol must be" in err
    assert "n1 undrained: it takes writes again" in err
    assert m.proc is not None and m.proc.poll() is None
    cluster.client(0).set("bad-config", "x")
    cluster.wait_seen(0, "up")


def test_a_node_drained_meanwhile_stops_the_rollout_before_the_restart(
        cluster: Cluster) -> None:
    """The safety check again after the drain: n2 drained by hand while n1
    drains (no lease covers an operator's `ringkv drain`) stops the
    rollout before n1 restarts, with n1 undrained."""
    n2 = ["--addr", f"127.0.0.1:{cluster.members[1].peer_port}",
          "--secret-file", str(secret_file(cluster))]
    # --drain-wait 10: the re-check runs 10 s after n1's drain is seen, so
    # the drain of n2 below has landed by then however loaded the machine.
    proc = _spawn(cluster, "--nodes", "n1", "--window", "1", "--timeout", "60",
                  "--drain-wait", "10")
    try:
        def draining() -> bool:
            try:
                cluster.client(0).set("recheck", "x")
            except redis.ResponseError:
                return True
            return False

        wait_for("n1 draining", draining, 60, interval=0.02)
        result = CliRunner().invoke(cli, ["drain", *n2])
        assert result.exit_code == 0, result.output
        code = proc.wait(60)
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
        CliRunner().invoke(cli, ["drain", "--off", *n2])
    assert code == 2, err
    assert ("refusing to take n1 down: n2 is down and they share 64 partitions" in err
            and "(seen after draining n1)" in err), err
    assert "n1 undrained: it takes writes again" in err and "restarting" not in err
    cluster.client(0).set("recheck", "y")
    cluster.client(1).set("recheck", "z")
    cluster.wait_seen(0, "up")
    cluster.wait_seen(1, "up")
