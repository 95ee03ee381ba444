"""Replica traffic straight to the peers' workers (peer protocol 5) against
the peer coordinators' relay (protocol 4), in paired runs (issue 19.4).

A three-node cluster of real processes (tests/cluster.py: N=3, W=2, R=2,
``--workers`` per node) is started with every node held at
``[cluster] max_peer_protocol = 4`` (the relay) and without (direct), in
turn (relay first in odd pairs, direct first in even ones), ``--pairs``
times. In each, a warm-up opens the direct connections;
then redis-benchmark runs SET and GET (``-c 50 -d 1024``, random keys) at
``-P 1`` and ``-P 16``, and SET and GET at ``-c 1`` for the unloaded p50.
The CPU of every process of the cluster (/proc, coordinators and workers)
over a run, divided by its requests, is the steadier figure on a shared
machine; each pair is compared on its own.

    python3 benchmarks/direct.py --pairs 2 --requests 20000
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # noqa: F401 - puts the repository on sys.path
from cluster import cpu_s, process_tree

from tests.cluster import Cluster

LOADS = (("SET", 50, 1), ("SET", 50, 16), ("GET", 50, 1), ("GET", 50, 16),
         ("SET", 1, 1), ("GET", 1, 1))


def cluster_cpu_s(c: Cluster) -> float:
    return sum(cpu_s(p) for m in c.members if m.proc is not None
               for p in process_tree(m.proc.pid))


def bench(c: Cluster, test: str, clients: int, pipeline: int, requests: int,
          ) -> tuple[float, float, float]:
    """(CPU µs per request over the cluster, requests/s, p50 ms)."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(c.members[0].client_port),
           "-t", test.lower(), "-c", str(clients), "-P", str(pipeline), "-d", "1024",
           "-n", str(requests), "-r", "100000", "--csv", "--precision", "3"]
    cpu0 = cluster_cpu_s(c)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    cpu = cluster_cpu_s(c) - cpu0
    row = next(r for r in csv.DictReader(io.StringIO(out)) if r["test"] == test)
    return cpu / requests * 1e6, float(row["rps"]), float(row["p50_latency_ms"])


def one_run(root: Path, relay: bool, args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    root.mkdir(parents=True)
    settings = {"cluster": {"max_peer_protocol": 4}} if relay else {}
    c = Cluster(root, nodes=3, n=3, workers=args.workers, settings=settings)
    try:
        c.start()
        bench(c, "SET", 50, 1, 2000)  # warm-up: opens the direct connections
        time.sleep(1.0)
        direct = c.info(0, "server")["direct_worker_connections"]
        out: dict[str, tuple[float, ...]] = {"direct connections": (float(direct),)}
        for test, clients, pipeline in LOADS:
            n = args.requests if clients > 1 else args.requests // 10
            out[f"{test} -c {clients} -P {pipeline}"] = bench(c, test, clients, pipeline, n)
        return out
    finally:
        c.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ringkv-direct-") as tmp:
        for pair in range(1, args.pairs + 1):
            runs = {}
            order = [("relay", True), ("direct", False)]
            for name, relay in order if pair % 2 else order[::-1]:  # A B, then B A
                runs[name] = one_run(Path(tmp) / f"{pair}-{name}", relay, args)
            print(f"pair {pair}: relay -> direct "
                  f"(direct connections from n1: {runs['direct']['direct connections'][0]:.0f})")
            for load in runs["relay"]:
                if load == "direct connections":
                    continue
                (ra, rr, rp), (da, dr, dp) = runs["relay"][load], runs["direct"][load]
                print(f"  {load:16} CPU {ra:6.0f} -> {da:6.0f} us/req ({(da - ra) / ra:+.0%}), "
                      f"{rr:7.0f} -> {dr:7.0f} req/s, p50 {rp:.3f} -> {dp:.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
