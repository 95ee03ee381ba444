"""What a node pays per ring partition: ``ringkv up --partitions Q`` for
Q = 64, 1,024 and 4,096 with the same data (issue 18.1).

For each Q, a fresh 3-node cluster (N = 3, 2 workers per node) is started
with ``ringkv up``, loaded with the same keys (``--keys`` x ``--value-bytes``
through redis-py pipelines), repaired with ``ringkv repair`` at node1 twice
(the first builds every Merkle tree, on node1 and on its peers; the second
finds them built), then stopped and started again on its data. Measured on
the real processes:

* start-up: ``ringkv up`` launched -> every node answers and sees 3 up
  (cold: empty directories, the ring is claimed; warm: the same data);
* RSS (``/proc/<pid>/status`` VmRSS) of every coordinator and worker after
  start, after the load and after the repairs, averaged per node;
* ``ringkv repair`` wall time.

The parts of that memory which depend on Q are sized in this process with
tracemalloc, built the way the node builds them: the ring as gossip decodes
it plus every preference list and primaries walk cached (a busy node asks
for all of them), the Router's plan cache for every partition, hint records
for every partition this node replicates and both other owners (the most a
ring change makes), and the Merkle trees one worker holds after a repair,
over the same keys. The gossip message is one node's payload as the
simulator builds it (``benchmarks/simulate.py``), msgpacked.

    python3 benchmarks/partitions.py --quick
    python3 benchmarks/partitions.py --json /tmp/q.json --write-docs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import harness
import redis
import simulate
from cluster import stop_group
from simnet import NetSettings

from coordinator.cluster import ring as ringmod
from coordinator.data import quorum
from coordinator.repair.hints import HintStore
from shardserver.aae import PartitionTrees
from shardserver.protocol.pool import partition_ranges
from tests.cluster import port_block

NODES = 3
WORKERS = 2
KIB = 1024


# -- the real cluster ------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(name))
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss(up_pid: int) -> dict[str, float]:
    """Mean RSS per node, MiB: its coordinator, and its workers together."""
    kids = _children()
    coords = [p for p in kids.get(up_pid, []) if " serve " in _cmdline(p)]
    workers = [w for c in coords for w in kids.get(c, []) if "shardserver.worker" in _cmdline(w)]
    n = max(1, len(coords))
    return {"coordinator_mib": sum(map(_rss_kib, coords)) / n / KIB,
            "workers_mib": sum(map(_rss_kib, workers)) / n / KIB,
            "coordinators": len(coords), "workers": len(workers)}


@contextmanager
def ringkv_up(data: str, port: int, q: int,
              run: str) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """``ringkv up`` on ``data`` (its output in ``<data>-<run>.log``);
    yields (process, seconds until every node answered and saw every other up)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [harness.REPO, env.get("PYTHONPATH")]))
    log_path = f"{data}-{run}.log"
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--nodes", str(NODES), "--n", str(NODES),
             "--workers", str(WORKERS), "--partitions", str(q), "--data", data,
             "--port", str(port), "--timeout", "600"],
            cwd=harness.REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not _says_up(log_path):
            if proc.poll() is not None or time.monotonic() - started > 600:
                with open(log_path, errors="replace") as f:
                    raise RuntimeError(f"ringkv up (Q={q}) did not start:\n{f.read()[-2000:]}")
            time.sleep(0.05)
        yield proc, time.monotonic() - started
    finally:
        stop_group(proc)


def _says_up(log_path: str) -> bool:
    with open(log_path, errors="replace") as f:
        return "nodes up" in f.read()


def load(port: int, keys: int, value_bytes: int) -> float:
    """The same keys and values for every Q; returns seconds."""
    started = time.monotonic()
    clients = [redis.Redis(port=port + i, socket_timeout=60) for i in range(NODES)]
    batch = 500
    for b, first in enumerate(range(0, keys, batch)):
        pipe = clients[b % NODES].pipeline(transaction=False)
        for i in range(first, min(keys, first + batch)):
            pipe.set(b"key:%08d" % i, _value(i, value_bytes))
        if not all(pipe.execute()):
            raise RuntimeError("a SET of the load failed")
    for c in clients:
        c.close()
    return time.monotonic() - started


def _value(i: int, size: int) -> bytes:
    return (b"%08d" % i * (size // 8 + 1))[:size]


def repair(data: str, port: int) -> tuple[float, dict[str, Any]]:
    """``ringkv repair`` at node1: (wall seconds, its --json report)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cli", "repair", "--addr", f"127.0.0.1:{port + 10000}",
         "--secret-file", os.path.join(data, "cluster.secret"), "--json"],
        cwd=harness.REPO, capture_output=True, text=True, timeout=1800, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"ringkv repair failed: {done.stderr[-1000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return seconds, report


def measure_cluster(q: int, args: argparse.Namespace, scratch: str) -> dict[str, Any]:
    data = os.path.join(scratch, f"q{q}")
    port = port_block(NODES, (0, 1000, 10000))
    out: dict[str, Any] = {"q": q}
    with ringkv_up(data, port, q, "cold") as (proc, seconds):
        out["start_cold_s"] = seconds
        out["rss_started"] = rss(proc.pid)
        out["load_s"] = load(port, args.keys, args.value_bytes)
        out["rss_loaded"] = rss(proc.pid)
        out["repair_first_s"], first = repair(data, port)
        out["repair_second_s"], second = repair(data, port)
        out["repair_partitions"] = first["partitions"]
        out["repair_keys_compared"] = [first["keys_compared"], second["keys_compared"]]
        out["rss_repaired"] = rss(proc.pid)
    with ringkv_up(data, port, q, "warm") as (proc, seconds):
        out["start_warm_s"] = seconds
    return out


# -- what depends on Q, sized in this process --------------------------------------
def traced(build: Callable[[], Any]) -> tuple[Any, int]:
    """``build()`` and the bytes it left allocated."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        return kept, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def model(q: int, keys: int, value_bytes: int, scratch: str) -> dict[str, Any]:
    members = [(f"node{i + 1}", None) for i in range(NODES)]
    encoded = ringmod.encode_ring(ringmod.claim(members, q, NODES))
    ring, ring_bytes = traced(lambda: ringmod.decode_ring(encoded))

    def walk_all() -> None:
        for p in range(q):
            ringmod.preference_list(ring, p)
            ringmod.primaries(ring, p)

    _, walks_bytes = traced(walk_all)
    _, plans_bytes = traced(lambda: {p: quorum.plan(ringmod.preference_list(ring, p), NODES,
                                                     lambda node: True) for p in range(q)})
    me = ringmod.NodeId("node1")
    pairs = [(p, o) for p in ringmod.replicated_partitions(ring, me)
             for o in ringmod.primaries(ring, p) if o != me]
    hint_dir = tempfile.mkdtemp(dir=scratch)

    def hints() -> HintStore:
        store = HintStore(hint_dir)
        asyncio.run(store.add_many(pairs, int(time.time() * 1000)))
        return store

    _, hints_bytes = traced(hints)
    return {
        "ring_kib": ring_bytes / KIB,
        "walks_kib": walks_bytes / KIB,
        "plans_kib": plans_bytes / KIB,
        "hint_records": len(pairs),
        "hints_kib": hints_bytes / KIB,
        "hints_file_kib": os.path.getsize(os.path.join(hint_dir, "hints.msgpack")) / KIB,
        **trees(q, keys, value_bytes),
        "gossip_bytes": gossip_bytes(q),
    }


def trees(q: int, keys: int, value_bytes: int) -> dict[str, Any]:
    """The Merkle trees worker 0 of a node holds after a repair (with N = 3
    on 3 nodes, every node replicates every partition)."""
    held = partition_ranges(q, WORKERS)[0]
    rows: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in held}
    for i in range(keys):
        key = b"key:%08d" % i
        p = ringmod.partition_of(key, q)
        if p in rows:
            rows[p].append((key, _value(i, value_bytes)))
    for items in rows.values():
        items.sort()

    def page(p: int, after: bytes | None, limit: int
             ) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        items = [kv for kv in rows[p] if after is None or kv[0] > after][:limit]
        more = len(items) == limit and items[-1][0] != rows[p][-1][0]
        return items, items[-1][0] if more else None

    def build() -> PartitionTrees:
        t = PartitionTrees(page, pause_ratio=0)
        for p in held:
            t.levels(p, 0, [0])
        return t

    started = time.process_time()
    _, size = traced(build)
    return {"trees": len(held), "trees_kib": size / KIB,
            "tree_build_cpu_s": time.process_time() - started}


def gossip_bytes(q: int) -> int:
    cluster = simulate.build(NODES, q, seed=1, net=NetSettings())
    return simulate.payload_bytes(cluster.nodes[0])["total"]


# -- the event loop while partitions are placed --------------------------------------
def ring_lag(nodes: int, q: int) -> dict[str, Any]:
    """The longest the event loop waits while ``ringkv remove`` of one of
    ``nodes`` nodes places Q partitions: on the loop (inline, how every
    placement ran before) and in a thread (how a node runs it now)."""
    import simring
    from simnet import MemoryRingFile

    from coordinator.cluster.view import ClusterView
    from coordinator.config import NodeConfig

    ring = simring.claimed(nodes, q, 3)
    out: dict[str, Any] = {"nodes": nodes, "q": q}
    for mode in ("inline", "thread"):
        config = NodeConfig(id=str(ring.nodes[0].node_id), data_dir="", partitions=q, n=3)
        view = ClusterView(config, ring, ring_file=MemoryRingFile(),
                           inline_ring_math=mode == "inline")
        out[mode] = asyncio.run(_lag_during(view.remove(ring.nodes[-1].node_id)))
    return out


async def _lag_during(work: Any) -> dict[str, float]:
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.monotonic()
        while not done:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last - 0.005)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    started, cpu = time.monotonic(), time.process_time()
    await work
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    done = True
    await tick
    gaps.sort()
    return {"seconds": seconds, "cpu_s": cpu, "max_lag_ms": gaps[-1] * 1000,
            "p99_lag_ms": gaps[int(len(gaps) * 0.99)] * 1000, "ticks": len(gaps)}


# -- report ---------------------------------------------------------------------
def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = []
    for r in results:
        m = r["model"]
        c = r.get("cluster")
        rows.append([
            str(r["q"]),
            f'{c["start_cold_s"]:.1f} / {c["start_warm_s"]:.1f}' if c else "—",
            f'{c["load_s"]:.1f}' if c else "—",
            (f'{c["rss_started"]["coordinator_mib"]:.0f} / '
             f'{c["rss_repaired"]["coordinator_mib"]:.0f}') if c else "—",
            (f'{c["rss_loaded"]["workers_mib"]:.0f} / '
             f'{c["rss_repaired"]["workers_mib"]:.0f}') if c else "—",
            f'{m["ring_kib"]:,.0f} + {m["walks_kib"]:,.0f}',
            f'{m["plans_kib"]:,.0f}',
            f'{m["hint_records"]:,}: {m["hints_kib"]:,.0f} ({m["hints_file_kib"]:,.0f} file)',
            f'{WORKERS}x{m["trees"]:,}: {WORKERS * m["trees_kib"] / KIB:,.1f}',
            f'{m["gossip_bytes"]:,}',
            (f'{c["repair_first_s"]:.1f} / {c["repair_second_s"]:.1f}') if c else "—",
        ])
    header = ["Q", "start s cold / warm", "load s", "coord RSS MiB start / repaired",
              "workers RSS MiB loaded / repaired", "ring + walks KiB", "plans KiB",
              "hint records: KiB", "trees MiB (workers x trees)", "gossip msg B",
              "repair s 1st / 2nd"]
    return (f"{NODES} nodes, N = {NODES}, {WORKERS} workers per node, "
            f"{args.keys:,} keys x {args.value_bytes} B; per node.\n\n"
            + harness.table(header, rows))


def render_lag(lag: dict[str, Any]) -> str:
    rows = [[mode, f'{lag[mode]["seconds"]:.2f}', f'{lag[mode]["cpu_s"]:.2f}',
             f'{lag[mode]["p99_lag_ms"]:.1f}', f'{lag[mode]["max_lag_ms"]:.0f}']
            for mode in ("inline", "thread")]
    return (f"Event loop during `ringkv remove` of one of {lag['nodes']} nodes at "
            f"Q = {lag['q']:,} (a 5 ms ticker on the loop):\n\n"
            + harness.table(["placement", "wall s", "CPU s", "p99 lag ms", "max lag ms"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qs", default="64,1024,4096")
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--value-bytes", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="5,000 keys, Q = 64 and 1,024")
    ap.add_argument("--model-only", action="store_true", help="no cluster, only the sizes")
    ap.add_argument("--lag", default="100:4096",
                    help="NODES:Q of the ring whose removal measures event-loop lag ('' skips)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.keys, args.qs = 5_000, "64,1024"
    qs = [int(x) for x in args.qs.split(",")]
    results = []
    with harness.work_dir(None) as scratch:
        for q in qs:
            r: dict[str, Any] = {"q": q, "model": model(q, args.keys, args.value_bytes, scratch)}
            if not args.model_only:
                r["cluster"] = measure_cluster(q, args, scratch)
            results.append(r)
            print(json.dumps(r), flush=True)
        info = harness.machine_info(scratch, ["msgpack", "redis"])
    text = render(results, args)
    lag = None
    if args.lag:
        nodes, q = (int(x) for x in args.lag.split(":"))
        lag = ring_lag(nodes, q)
        print(json.dumps(lag), flush=True)
        text += "\n\n" + render_lag(lag)
    print(text)
    if args.json:
        harness.write_result(args.json, {"results": results, "lag": lag, "machine": info})
    if args.write_docs:
        harness.publish("Partitions per node", args.quick, info, text)


if __name__ == "__main__":
    main()
