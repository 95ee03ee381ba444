"""Stalls during a full compaction and a node restart, at a fixed rate.

Only the disturbance part of benchmarks/cluster.py (its ``compact_all`` and
``kill_and_restart``), at a rate given on the command line instead of half
of a measured peak, so that two builds can be compared run for run on a
shared machine (A/B, alternating). ``ringkv up`` (3 nodes, N=3 W=2 R=2,
2 workers each), preloaded as ``cluster.py --quick`` leaves it
(redis-benchmark SET -n 3000 -r 750 -d 1024 at -P 1 and -P 16), then for
each disturbance an open-loop SET load (``ringkv bench``'s library, latency
from the intended send time) with the disturbance starting 2 s in.

    python benchmarks/stalls.py --rate 400 --rounds 3
    PYTHONPATH=/other/tree python /other/tree/benchmarks/stalls.py ...   # the B side

Prints one JSON line per run (percentiles in ms, errors, the load average).
``--runs compact-cpu``: no load; ``ringkv compact`` on every node with the
CPU it cost (/proc: the cluster's processes, compaction children included,
against an idle window as long; and the three CLIs), 12,000 more SETs
before each.

Two runs split ``compact`` into its parts: ``compact-admin`` sends the
same admin requests as ``ringkv compact`` (a node's status, then a
compaction per worker; every node at once) from one process started before
the first such run, so no interpreter starts during the load: the server's
share. ``cli-start`` starts three ``ringkv ring`` at once, a request that
costs the server nothing: the CLIs' share.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any

import cluster
import harness
import open_loop

from cli.bench import driver
from cli.bench.config import BenchConfig
from cli.bench.conn import BenchError, ServerAddr
from cli.bench.keys import KeyDist
from cli.bench.workload import Workload

PRELOAD = 3000  # as cluster.py --quick: its requests, keyspace requests // 4
RUNS = ("undisturbed", "compact", "compact-admin", "cli-start", "kill", "compact-cpu")
NODES = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=400.0, help="SET/s offered (open loop)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--runs", default="undisturbed,compact,kill",
                   help=f"comma-separated subset of {','.join(RUNS)}")
    p.add_argument("--dir", default=None, help="parent of the scratch directory")
    args = p.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if unknown := set(args.runs) - set(RUNS):
        p.error(f"unknown run(s) {', '.join(sorted(unknown))}")
    return args


def _load(port: int, rate: float, seconds: float) -> open_loop.HalfPeak:
    config = BenchConfig(
        targets=(ServerAddr("127.0.0.1", port),), rate=rate, duration_s=seconds,
        connections=50, pipeline=1,
        workload=Workload(0.0, 1024, PRELOAD // 4, KeyDist("uniform")))
    try:
        return open_loop.HalfPeak("cluster", 2 * rate, driver.run(config))
    except BenchError as exc:  # e.g. the server did not answer the warm-up in time
        return open_loop.HalfPeak("cluster", 2 * rate, None, str(exc))


def _preload(port: int, requests: int, pipeline: int) -> None:
    subprocess.run(["redis-benchmark", "-p", str(port), "-c", "50", "-n", str(requests), "-r",
                    str(PRELOAD // 4), "-d", "1024", "-P", str(pipeline), "-t", "set", "-q"],
                   capture_output=True, timeout=300, check=False)


def _tree_cpu_s() -> float:
    me = os.getpid()
    return sum(cluster.cpu_s(p) for p in cluster.process_tree(me) if p != me)


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def compaction_cpu(port: int, data: str) -> dict[str, Any]:
    """The CPU one ``ringkv compact`` on every node costs, with no load."""
    _preload(port, 4 * PRELOAD, 1)
    tree, clis, started = _tree_cpu_s(), _children_cpu_s(), time.monotonic()
    cluster.compact_all(data, cluster.Timeline())
    took = time.monotonic() - started
    tree, clis = _tree_cpu_s() - tree, _children_cpu_s() - clis
    idle = _tree_cpu_s()
    time.sleep(took)  # an idle window as long, for the cluster's background work
    idle = _tree_cpu_s() - idle
    return {"run": "compact-cpu", "took_s": round(took, 1), "cluster_cpu_s": round(tree, 2),
            "idle_window_cpu_s": round(idle, 2), "cli_cpu_s": round(clis, 2),
            "load": os.getloadavg()[0]}


class AdminCompactor:
    """A child process, started once and before the load, that compacts
    every node as ``ringkv compact`` does each time it is asked (a line on
    its stdin; it answers with one when done)."""

    def __init__(self, data: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [harness.REPO, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--admin-compactor", data],
            cwd=harness.REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._answer()  # "ready": imports done

    def compact(self, line: cluster.Timeline) -> None:
        assert self.proc.stdin is not None
        line.note("admin compaction of every node (from a running process)")
        self.proc.stdin.write("compact\n")
        self.proc.stdin.flush()
        line.note(f"compactions done ({self._answer()})")

    def _answer(self) -> str:
        assert self.proc.stdout is not None
        answer = self.proc.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"the admin compactor exited ({self.proc.wait(10)})")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


def serve_compactions(data: str) -> int:
    """The :class:`AdminCompactor`'s side: the requests ``ringkv compact``
    sends (``cli.cluster.compact``), to every node at once."""
    from cli.admin import AdminClient, _secret
    from coordinator.ops import admin_api as api

    clients = []
    for i in range(1, NODES + 1):
        secret, addr = _secret(None, os.path.join(data, f"node{i}.toml"))
        clients.append(AdminClient(addr or "", secret, None, True))

    def compact(client: AdminClient) -> None:
        status = client.call(api.StatusRequest(), api.NodeStatus)
        for worker in range(status.workers):
            client.call(api.CompactRequest(worker=worker), api.CompactReply)

    print("ready", flush=True)
    for _ in sys.stdin:
        started = time.monotonic()
        threads = [threading.Thread(target=compact, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"took {time.monotonic() - started:.1f} s", flush=True)
    return 0


def cli_start(data: str, line: cluster.Timeline) -> None:
    """Three ``ringkv ring`` at once, as ``compact_all`` started its CLIs
    before ``ringkv compact --all`` (one CLI start per node)."""
    line.note("ringkv ring on every node")
    procs = [cluster.ringkv("ring", "--json", "--config", os.path.join(data, f"node{i}.toml"),
                            log=os.path.join(data, "ring.log")) for i in range(1, NODES + 1)]
    line.note(f"rings done (exit {', '.join(str(p.wait(600)) for p in procs)})")


def one_run(what: str, args: argparse.Namespace, port: int, data: str,
            restarted: list[subprocess.Popen[bytes]], *,
            compactor: AdminCompactor | None = None) -> dict[str, Any]:
    line = cluster.Timeline()

    def disturb() -> None:
        time.sleep(2.0)  # 1 s warm-up, then 1 s of undisturbed load
        if what == "compact":
            cluster.compact_all(data, line)
        elif what == "compact-admin":
            assert compactor is not None
            compactor.compact(line)
        elif what == "cli-start":
            cli_start(data, line)
        elif what == "kill":
            # Our own tree: node3 restarted by a kill run is our child, not `up`'s.
            cluster.kill_and_restart(os.getpid(), data, port, line, restarted=restarted)

    helper = threading.Thread(target=disturb, daemon=True)
    helper.start()
    result = _load(port, args.rate, args.seconds)
    line.note("load finished")
    helper.join(660)
    out: dict[str, Any] = {"run": what, "rate": args.rate, "load": os.getloadavg()[0]}
    if result.report is None:
        return {**out, "error": result.error}
    ms, o = result.report.latency_ms(), result.report.outcome
    return {**out, **{k: round(ms[k], 1) for k in ("p50", "p90", "p99", "max")},
            "errors": dict(o.errors), "timeouts": o.timeouts, "events": line.events}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--admin-compactor"]:
        return serve_compactions(argv[1])
    args = parse_args(argv)
    with harness.work_dir(args.dir) as scratch:
        ns = argparse.Namespace(workers=2)
        with cluster.started(cluster.TARGETS[0], ns, scratch) as (_, port):
            for pipeline in (1, 16):
                _preload(port, PRELOAD, pipeline)
            data = os.path.join(scratch, "cluster", "d")
            restarted: list[subprocess.Popen[bytes]] = []
            compactor = AdminCompactor(data) if "compact-admin" in args.runs else None
            try:
                for _ in range(args.rounds):
                    for what in args.runs:
                        result = (compaction_cpu(port, data) if what == "compact-cpu"
                                  else one_run(what, args, port, data, restarted,
                                          compactor=compactor))
                        print(json.dumps(result), flush=True)
            finally:
                if compactor is not None:
                    compactor.close()
                for p in restarted:
                    cluster.stop_group(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
