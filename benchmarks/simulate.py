"""Cluster simulator (issue 18.2): ringkv's real ring, placement, membership
reducer, gossip and phi-accrual detectors for hundreds of simulated nodes on
one discrete-event loop with a simulated network (latency, loss,
partitions; no sockets, simulated time). Deterministic for a given --seed.

Per cluster size it reports (see docs/benchmarks.md, "Cluster simulation"):

- ring: partitions per node (max/min/mean), zone spread of each partition's
  N replicas (zones z0..z2 round-robin), partitions that lose all replicas
  or their quorum when zone z0 goes down, partitions moved by one join and
  one leave against the minimum (Q*N/nodes replicas), for each --partitions;
- gossip: rounds (simulated seconds / gossip interval) until every node
  knows a joining node and holds the ring with it, until every node marks a
  stopped node down, until every node holds the ring without it after
  ``ringkv remove``, until a cut-off zone is marked down and, after the
  heal, up again; ring computations and handoff effects for the join; the
  gossip payload size.

    python3 benchmarks/simulate.py --quick              # 50 and 100 nodes, ~1 min
    python3 benchmarks/simulate.py --json out.json      # 100, 384, 1000 nodes
    python3 benchmarks/simulate.py --plot docs/img/gossip_convergence.png --write-docs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from typing import Any

import msgpack
import simring
from simnet import Cluster, NetSettings, SimNode

from coordinator.cluster import endpoints
from coordinator.cluster.ring import NodeId, Ring

INTERVAL_S = 1.0
SEEDS = 3


def _rounds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / INTERVAL_S, 2)


def _same_ring(nodes: list[SimNode], check: Any) -> Ring | None:
    """The ring every node holds when they all hold one equal ring passing ``check``."""
    ref = nodes[0].view.ring
    if ref is None or not check(ref):
        return None
    return ref if all(x.view.ring == ref for x in nodes[1:]) else None


def payload_bytes(node: SimNode) -> dict[str, int]:
    payload = node.gossip.payload()
    ring = payload.get("ring")
    return {
        "total": len(msgpack.packb(payload)),
        "members": len(msgpack.packb(payload["members"])),
        "ring": len(msgpack.packb(ring)) if ring is not None else 0,
        "digest_only": len(msgpack.packb(endpoints.digest(node.gossip.members))),
    }


def build(k: int, q: int, seed: int, net: NetSettings, n: int = 3) -> Cluster:
    """k nodes holding one claimed ring, each knowing every endpoint (as a
    formed cluster after a restart), gossip started at random phases."""
    cluster = Cluster(seed, net, INTERVAL_S)
    ring = simring.claimed(k, q, n)
    names = [simring.node_name(i) for i in range(k)]
    for i, name in enumerate(names):
        cluster.add(name, simring.zone_of(i), ring=ring, seeds=names[:SEEDS], q=q, n=n)
    everyone = {"members": [endpoints.encode(x.gossip.members[x.name]) for x in cluster.nodes]}
    for x in cluster.nodes:
        x.gossip.receive(everyone)
        x.start(cluster.rng.random() * INTERVAL_S)
    return cluster


def gossip_figures(k: int, q: int, *, seed: int, net: NetSettings, limit_rounds: float,
                   partition: bool = True, join_only: bool = False) -> dict[str, Any]:
    limit = limit_rounds * INTERVAL_S
    t0 = time.process_time()
    with simring.shared_ring_math() as shared:
        cluster = build(k, q, seed, net)
        cluster.run_until(lambda: False, 5 * INTERVAL_S)  # detectors learn the beat
        rng = random.Random(seed ^ 0x5EED)
        out: dict[str, Any] = {"nodes": k, "q": q, "seed": seed}

        # -- join -----------------------------------------------------------------
        name = simring.node_name(k)
        seeds = [simring.node_name(i) for i in rng.sample(range(k), SEEDS)]
        before = shared.snapshot()
        saved = sum(x.ring_file.saved for x in cluster.nodes)
        joiner = cluster.add(name, simring.zone_of(k), ring=None, seeds=seeds, q=q, n=3)
        joiner.start(0.0)
        jid = NodeId(name)
        everyone = cluster.live()
        seen = cluster.watch({
            "known": lambda: all(jid in x.gossip.members and x.view.is_up(jid)
                                 for x in everyone),
            "ring": lambda: _same_ring(everyone, lambda r: jid in r.node_ids) is not None,
        }, limit)
        out["join_known_rounds"] = _rounds(seen["known"])
        out["join_ring_rounds"] = _rounds(seen["ring"])
        calls = {f: c - before.get(f, 0) for f, c in shared.snapshot().items()}
        out["join_ring_computations"] = calls
        out["join_ring_adoptions"] = sum(x.ring_file.saved for x in cluster.nodes) - saved
        out["join_hint_copies"] = sum(x.hint_effects for x in cluster.nodes)
        final = cluster.nodes[0].view.ring
        out["join_epoch"] = final.epoch if final else None

        if join_only:
            return _finish(out, cluster, shared, t0)

        # -- node down --------------------------------------------------------------
        victim = rng.choice(cluster.nodes[SEEDS:k])
        victim.alive = False
        alive = cluster.live()
        out["down_rounds"] = _rounds(cluster.run_until(
            lambda: not any(x.view.is_up(victim.name) for x in alive), limit))

        # -- remove (ringkv remove of the dead node, at one live node) -------------
        asyncio.run(alive[rng.randrange(len(alive))].view.remove(victim.name))
        out["remove_rounds"] = _rounds(cluster.run_until(
            lambda: _same_ring(alive, lambda r: victim.name in r.removed) is not None, limit))

        # -- a zone cut off, then healed ---------------------------------------------
        if partition:
            cut = frozenset(x.addr for x in alive if x.view.config.zone == "z2")
            cluster.net.cut.append(cut)
            rest = [x for x in alive if x.addr not in cut]
            isolated = [x for x in alive if x.addr in cut]
            out["cut_down_rounds"] = _rounds(cluster.run_until(
                lambda: not any(x.view.is_up(y.name) for x in rest for y in isolated), limit))
            cluster.net.cut.clear()
            out["heal_up_rounds"] = _rounds(cluster.run_until(
                lambda: all(x.view.is_up(y.name) for x in alive for y in alive), limit))

        return _finish(out, cluster, shared, t0)


def _finish(out: dict[str, Any], cluster: Cluster, shared: simring.RingMath,
            t0: float) -> dict[str, Any]:
    out["payload_bytes"] = payload_bytes(cluster.live()[0])
    out["messages"] = cluster.net.sent
    out["dropped"] = cluster.net.dropped
    out["simulated_s"] = round(cluster.sim.now, 2)
    out["cpu_s"] = round(time.process_time() - t0, 1)
    out["ring_cpu_s_once"] = {f: round(s, 3) for f, s in shared.cpu_s.items()}
    return out


# -- output ------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    return "—" if x is None else str(x)


def report(result: dict[str, Any]) -> str:
    import harness

    ring_rows = [[
        str(r["nodes"]), str(r["q"]), f'{r["owned_min"]}/{r["owned_mean"]:.2f}/{r["owned_max"]}',
        f'{r["replicas_min"]}/{r["replicas_mean"]:.1f}/{r["replicas_max"]}',
        " ".join(f"{z}:{c}" for z, c in r["zone_spread"].items()),
        f'{r["node_conflicts"]}/{r["zone_conflicts"]}',
        f'{r["lost_all_replicas"]}/{r["lost_quorum"]}',
        f'{r["join"]["replicas_moved"]} (min {r["join"]["replicas_min"]}), '
        f'{r["join"]["owners_moved"]} own',
        f'{r["leave"]["replicas_moved"]} (min {r["leave"]["replicas_min"]}), '
        f'{r["leave"]["owners_moved"]} own',
        f'{r["join"]["cpu_s"]}/{r["leave"]["cpu_s"]}',
    ] for r in result["ring"]]
    ring_table = harness.table(
        ["nodes", "Q", "owned min/mean/max", "replicas min/mean/max", "zones per partition",
         "node/zone conflicts", "z0 down: lost all/quorum", "join: replicas moved",
         "leave: replicas moved", "join/leave CPU s"], ring_rows)
    gossip_rows = [[
        str(g["nodes"]), _fmt(g["join_known_rounds"]), _fmt(g["join_ring_rounds"]),
        _fmt(g.get("down_rounds")), _fmt(g.get("remove_rounds")), _fmt(g.get("cut_down_rounds")),
        _fmt(g.get("heal_up_rounds")), f'{math.log2(g["nodes"]):.1f}',
        str(g["join_ring_computations"].get("rebalance", 0)), str(g["join_ring_adoptions"]),
        f'{g["payload_bytes"]["total"]:,} ({g["payload_bytes"]["ring"]:,} ring)',
        str(g["cpu_s"]),
    ] for g in result["gossip"]]
    gossip_table = harness.table(
        ["nodes", "join known", "join ring", "down", "remove", "zone cut: down",
         "heal: up", "log2 n", "rebalances for the join", "ring adoptions",
         "payload bytes", "sim CPU s"], gossip_rows)
    return (f"Ring (N = 3, zones z0..z2 round-robin):\n\n{ring_table}\n\n"
            f"Gossip (Q = {result['params']['gossip_q']}, rounds of {INTERVAL_S:g} s):\n\n"
            f"{gossip_table}\n")


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["gossip"]
    xs = [g["nodes"] for g in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, label in (("join_known_rounds", "join: every node knows it"),
                       ("join_ring_rounds", "join: every node holds the new ring"),
                       ("remove_rounds", "remove: every node holds the ring without it"),
                       ("down_rounds", "node down: every node marks it down (phi)")):
        ys = [g[key] if g.get(key) is not None else float("nan") for g in rows]
        ax.plot(xs, ys, marker="o", label=label)
    ax.plot(xs, [math.log2(x) for x in xs], linestyle="--", color="grey", label="log2(nodes)")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("simulated nodes")
    ax.set_ylabel("gossip rounds (1 s each)")
    ax.set_title(f"ringkv gossip convergence (Q={result['params']['gossip_q']}, "
                 f"loss {result['params']['loss']:.0%}, seed {result['params']['seed']})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def simulate_all(args: argparse.Namespace, result: dict[str, Any], log: Any) -> None:
    sizes = [int(x) for x in args.nodes.split(",")]
    qs = [int(x) for x in args.partitions.split(",")]
    net = NetSettings(args.latency_ms / 1000, args.jitter_ms / 1000, args.loss)
    if not args.no_ring:
        for q in qs:
            for k in sizes:
                print(f"ring: {k} nodes, Q={q} ...", file=log, flush=True)
                result["ring"].append(simring.ring_figures(k, q))
    if not args.no_gossip:
        for k in sizes:
            print(f"gossip: {k} nodes ...", file=log, flush=True)
            result["gossip"].append(gossip_figures(
                k, args.gossip_partitions, seed=args.seed, net=net,
                limit_rounds=args.limit_rounds, partition=k <= args.cut_up_to,
                join_only=0 < args.join_only_from <= k))


def merged(paths: list[str]) -> dict[str, Any]:
    """Several --json results as one (the params of the first; runs split to use two cores)."""
    out: dict[str, Any] = {"ring": [], "gossip": []}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            part = json.load(f)
        out.setdefault("params", part["params"])
        out["ring"] += part["ring"]
        out["gossip"] += part["gossip"]
    out["ring"].sort(key=lambda r: (r["q"], r["nodes"]))
    out["gossip"].sort(key=lambda g: g["nodes"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="100,384,1000", help="cluster sizes, comma-separated")
    ap.add_argument("--partitions", default="64,1024,4096", help="Q values for the ring figures")
    ap.add_argument("--gossip-partitions", type=int, default=1024, help="Q of the gossip runs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--loss", type=float, default=0.01, help="message loss probability")
    ap.add_argument("--latency-ms", type=float, default=0.5)
    ap.add_argument("--jitter-ms", type=float, default=2.0)
    ap.add_argument("--limit-rounds", type=float, default=60.0)
    ap.add_argument("--cut-up-to", type=int, default=400,
                    help="run the zone-cut scenario for clusters up to this size (CPU bound)")
    ap.add_argument("--join-only-from", type=int, default=0, metavar="NODES",
                    help="clusters this large simulate only the join (0: none; CPU bound)")
    ap.add_argument("--no-ring", action="store_true", help="skip the ring figures")
    ap.add_argument("--no-gossip", action="store_true", help="skip the gossip runs")
    ap.add_argument("--quick", action="store_true", help="50 and 100 nodes, Q=64,1024")
    ap.add_argument("--from-json", metavar="PATHS",
                    help="report (and plot) the results of earlier --json runs, comma-separated, "
                         "instead of simulating")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': stdout)")
    ap.add_argument("--plot", metavar="PNG", help="plot convergence rounds vs nodes")
    ap.add_argument("--write-docs", action="store_true", help="section in docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.nodes, args.partitions = "50,100", "64,1024"
    result: dict[str, Any] = {
        "params": {"seed": args.seed, "loss": args.loss, "latency_ms": args.latency_ms,
                   "jitter_ms": args.jitter_ms, "gossip_q": args.gossip_partitions,
                   "interval_s": INTERVAL_S, "n": 3, "zones": simring.ZONES},
        "ring": [], "gossip": []}
    log = sys.stderr if args.json == "-" else sys.stdout
    if args.from_json:
        result = merged(args.from_json.split(","))
    else:
        simulate_all(args, result, log)
    text = report(result)
    print(text, file=log)
    if args.json == "-":
        json.dump(result, sys.stdout, indent=1)
    elif args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    if args.plot and result["gossip"]:
        plot(result, args.plot)
    if args.write_docs:
        import harness

        harness.publish("Cluster simulation", args.quick, harness.machine_info(".", ["msgpack"]),
                        text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
