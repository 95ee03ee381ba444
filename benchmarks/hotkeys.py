"""Hot keys and a slow replica: `ringkv bench` on `ringkv up`, each issue-15
mechanism off and on (docs/benchmarks.md, "Hot keys and tail latency").

Every configuration is a fresh 3-node cluster (`ringkv up --set ...`, N=3,
R=2, W=2); `ringkv bench` loads all three client ports (closed loop, 48
connections, 90 % GETs, 256-byte values, 10,000 preloaded keys: the peak
rate) with

* uniform keys, Zipf s = 1.1, and one key taking half the traffic (hot:0.5),
  with the hot-key mechanisms off, coalescing on, and coalescing plus the
  cache (cache_ms = 50);
* uniform keys with node3 answering every replica call 100 ms late
  (``[node] reply_delay_ms``), open loop at 300 requests/s (12
  connections), so latency is the replicas' and not the queue's: healthy,
  then slow with reads to all N (the default), to R only without hedging,
  and to R with hedging.

It prints one row per run (requests/s, p50, p99, p99.9 in ms) and, with
--markdown, the table for docs/benchmarks.md.

    python benchmarks/hotkeys.py --duration 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.serve import ping_port  # noqa: E402 - after the path above
from tests.cluster import port_block  # noqa: E402

DISTS = ("uniform", "zipf:1.1", "hot:0.5")
HOT_CONFIGS = {
    "all off": ["hotkeys.coalesce=false"],
    "coalescing": ["hotkeys.coalesce=true"],
    "coalescing + cache 50 ms": ["hotkeys.coalesce=true", "hotkeys.cache_ms=50",
                                 "hotkeys.hot_reads_per_s=50"],
}
SLOW = "node3:node.reply_delay_ms=100"
SLOW_CONFIGS = {
    "healthy, fanout all": ["hotkeys.coalesce=false"],
    "node3 slow, fanout all": ["hotkeys.coalesce=false", SLOW],
    "node3 slow, fanout quorum, no hedge": ["hotkeys.coalesce=false", 'reads.fanout="quorum"',
                                           "reads.hedge=false", SLOW],
    "node3 slow, fanout quorum, hedge": ["hotkeys.coalesce=false", 'reads.fanout="quorum"',
                                        "reads.hedge=true", SLOW],
}


@dataclass(frozen=True, slots=True)
class Row:
    config: str
    dist: str
    rate: float
    p50: float
    p99: float
    p999: float
    stats: dict[str, int]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@contextlib.contextmanager
def cluster(settings: list[str], data: Path) -> Iterator[list[int]]:
    """`ringkv up` with ``settings``; yields the client ports, stops it after.
    Tried three times: another program may take a port between
    ``port_block`` and the nodes' start."""
    for attempt in range(3):
        proc, ports, log = _start(settings, data)
        try:
            _wait_up(proc, ports, log)
        except PortTaken:
            if attempt == 2:
                raise
            continue
        except BaseException:
            _stop(proc)
            raise
        break
    try:
        yield ports
    finally:
        _stop(proc)


class PortTaken(RuntimeError):
    pass


def _start(settings: list[str], data: Path) -> tuple[subprocess.Popen[bytes], list[int], Path]:
    port = port_block(3)
    args = [sys.executable, "-m", "cli", "up", "--data", str(data), "--port", str(port)]
    for s in settings:
        args += ["--set", s]
    log = data.parent / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, [port, port + 1, port + 2], log


def _wait_up(proc: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
    deadline = time.monotonic() + 120
    while not (all(map(ping_port, ports)) and _up(ports)):
        if proc.poll() is not None:
            text = log.read_text()
            error = PortTaken if "in use" in text else RuntimeError
            raise error(f"ringkv up exited with {proc.returncode}: {text[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("cluster not up after 120 s")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _info(port: int, section: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", "import redis,sys; r=redis.Redis(port=int(sys.argv[1])); "
         "print('\\n'.join(f'{k}:{v}' for k,v in r.info(sys.argv[2]).items()))",
         str(port), section], capture_output=True, text=True, timeout=30, env=_env(), check=True)
    return dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)


def _up(ports: list[int]) -> bool:
    try:
        return all(int(_info(p, "cluster").get("nodes_up", 0)) == 3 for p in ports)
    except subprocess.SubprocessError:
        return False


COUNTED = ("coalesced_reads", "cache_hits", "cache_misses", "hedged_reads", "reads")


def bench(ports: list[int], dist: str, duration: float, preload: bool,
          rate: float) -> dict[str, Any]:
    """One run, closed loop (``rate`` 0, 48 connections) or open loop at
    ``rate`` (12 connections); with ``preload``, a gentle run first that
    SETs every key (3 connections: 48 pipelining preloads overran the 2 s
    request timeout on a busy 2-core machine)."""
    if preload:
        _bench(ports, ["--rate", "100", "--duration", "0.5", "--warmup", "0", "-c", "3",
                       "--preload"])
    return _bench(ports, ["--rate", str(rate), "--duration", str(duration), "--warmup", "2",
                          "-c", "12" if rate else "48", "--read-ratio", "0.9", "--dist", dist])


def _bench(ports: list[int], more: list[str]) -> dict[str, Any]:
    args = [sys.executable, "-m", "cli", "bench", "--json", "-q", "-d", "256",
            "--keys", "10000", *more]
    args += [a for p in ports for a in ("--port", str(p))]
    out = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600,
                         check=False)
    if out.returncode:
        raise RuntimeError(f"ringkv bench failed: {out.stderr.strip()}")
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def measure(name: str, settings: list[str], dists: tuple[str, ...],
            duration: float, rate: float = 0.0) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="ringkv-hot-") as tmp, \
            cluster(settings, Path(tmp) / "data") as ports:
        for i, dist in enumerate(dists):
            before = [_info(p, "stats") for p in ports]
            doc = bench(ports, dist, duration, i == 0, rate)
            after = [_info(p, "stats") for p in ports]
            stats = {k: sum(int(a[k]) - int(b[k]) for a, b in zip(after, before, strict=True))
                     for k in COUNTED}
            lat = doc["latency_ms"]
            row = Row(name, dist, doc["rate"], lat["p50"], lat["p99"], lat["p99.9"], stats)
            print(f"{name:<38} {dist:<9} {row.rate:>9,.0f}/s  p50 {row.p50:7.2f}  "
                  f"p99 {row.p99:7.2f}  p99.9 {row.p999:7.2f} ms  {stats}", flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| configuration | keys | requests/s | p50 ms | p99 ms | p99.9 ms "
             "| coalesced | cache hits | hedged |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r.stats
        lines.append(f"| {r.config} | {r.dist} | {r.rate:,.0f} | {r.p50:.2f} | {r.p99:.2f} "
                     f"| {r.p999:.2f} | {s['coalesced_reads']:,} | {s['cache_hits']:,} "
                     f"| {s['hedged_reads']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--markdown", action="store_true", help="print the docs table too")
    parser.add_argument("--only", choices=("hot", "slow"), help="one half of the matrix")
    parser.add_argument("--slow-rate", type=float, default=300.0,
                        help="requests/s of the slow-replica runs (open loop)")
    args = parser.parse_args()
    rows: list[Row] = []
    if args.only != "slow":
        for name, settings in HOT_CONFIGS.items():
            rows += measure(name, settings, DISTS, args.duration)
    if args.only != "hot":
        for name, settings in SLOW_CONFIGS.items():
            rows += measure(name, settings, ("uniform",), args.duration, args.slow_rate)
    if args.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    main()
