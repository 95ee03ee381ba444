"""Growth: does a get stay as fast at 10M keys as at 100k (DESIGN §14)?

Loads small entries (16-byte random keys, 100-byte incompressible values by
default) into ringkv's engine in one thread and stops at each checkpoint
(100k, 1M, 10M keys): lets background compaction settle, then times
``--probes`` gets of random keys already written, one at a time
(perf_counter_ns around ``db.get``), and reports p50/p99 and the ratio of
each p50 to the first checkpoint's. The put rate of every segment between
checkpoints shows whether writes fall off a cliff as the tree deepens.
Data that outgrows the block cache is read through the page cache, as on a
machine with RAM to spare; ``--drop-cache`` evicts the files first (needs
root) for a cold-read figure.

    python3 benchmarks/engine_growth.py --quick        # 1M keys, about a minute
    python3 benchmarks/engine_growth.py --write-docs   # 10M keys
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any

import harness

MIB = harness.MIB
TARGET = 1.5  # DESIGN §14: get p50 at 10M keys <= 1.5x get p50 at 100k keys
_CHUNK = 4096


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=None, help="keys to load (default 10M)")
    p.add_argument("--quick", action="store_true", help="1M keys")
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument("--key-bytes", type=int, default=16)
    p.add_argument("--probes", type=int, default=20_000, help="gets timed per checkpoint")
    p.add_argument("--drop-cache", action="store_true",
                   help="evict the data files from the page cache before each probe run")
    p.add_argument("--max-minutes", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=20261123)
    p.add_argument("--dir", default=None, help="parent of the scratch directory (removed after)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--write-docs", action="store_true",
                   help="append or replace today's section in docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.keys is None:
        args.keys = 1_000_000 if args.quick else 10_000_000
    if args.keys < 100_000 or args.value_bytes < 1 or args.key_bytes < 8 or args.probes < 100:
        p.error("--keys >= 100000, --value-bytes >= 1, --key-bytes >= 8, --probes >= 100")
    return args


def checkpoints(total: int) -> list[int]:
    out, n = [], 100_000
    while n < total:
        out.append(n)
        n *= 10
    return [*out, total]


def probe(db: Any, keys: bytes, kb: int, loaded: int, *, count: int, rng: random.Random
          ) -> tuple[float, float, int]:
    """(p50 µs, p99 µs, misses) of ``count`` gets of random loaded keys."""
    get, clock = db.get, time.perf_counter_ns
    times: list[int] = []
    misses = 0
    for _ in range(count):
        i = rng.randrange(loaded)
        key = keys[i * kb:(i + 1) * kb]
        t0 = clock()
        found = get(key)
        times.append(clock() - t0)
        misses += found is None
    times.sort()
    return times[len(times) // 2] / 1000, times[len(times) * 99 // 100] / 1000, misses


def run(args: argparse.Namespace, scratch: str) -> dict[str, Any]:
    from lsm.db import DB
    from lsm.options import Options

    kb, vb = args.key_bytes, args.value_bytes
    options = Options(fsync="interval")
    path = os.path.join(scratch, "ringkv")
    db = DB.open(path, options)
    rng = random.Random(args.seed)
    keys = rng.randbytes(args.keys * kb)
    pool = os.urandom(64 * MIB)
    span, stride = len(pool) - vb, vb + 13
    put = db.put
    deadline = time.perf_counter() + args.max_minutes * 60
    rows: list[dict[str, Any]] = []
    loaded = 0
    cut = False
    print(f"loading up to {args.keys:,} x {kb + vb} B into {path}", flush=True)
    for target in checkpoints(args.keys):
        t0 = time.perf_counter()
        start = loaded
        for chunk in range(start, target, _CHUNK):
            for i in range(chunk, min(chunk + _CHUNK, target)):
                off = (i * stride) % span
                put(keys[i * kb:(i + 1) * kb], pool[off:off + vb])
            loaded = min(chunk + _CHUNK, target)
            if time.perf_counter() > deadline:
                cut = True
                break
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        db.wait_for_compactions(timeout=max(1.0, deadline - time.perf_counter()))
        settle_s = time.perf_counter() - t1
        if args.drop_cache:
            harness.drop_from_page_cache(path)
        p50, p99, misses = probe(db, keys, kb, loaded, count=args.probes, rng=rng)
        stats = db.stats()
        row = {"keys": loaded, "puts_per_s": (loaded - start) / load_s if load_s else 0.0,
               "settle_s": settle_s, "p50_us": p50, "p99_us": p99, "misses": misses,
               "levels": [lv["files"] for lv in stats["levels"]],
               "bytes": sum(lv["bytes"] for lv in stats["levels"])}
        rows.append(row)
        print(f"  {loaded:>11,} keys: {row['puts_per_s']:>9,.0f} puts/s, settled in "
              f"{settle_s:5.1f} s; get p50 {p50:6.1f} µs, p99 {p99:7.1f} µs "
              f"({misses} misses); files per level {row['levels']}", flush=True)
        if cut:
            break
    db.close()
    return {"rows": rows, "cut": cut, "options": options}


def render(args: argparse.Namespace, f: dict[str, Any]) -> str:
    rows = f["rows"]
    base = rows[0]["p50_us"]
    options = f["options"]
    table_rows = [[f"{r['keys']:,}", f"{r['puts_per_s']:,.0f}", f"{r['settle_s']:.1f} s",
                   f"{r['bytes'] / MIB:,.0f} MiB",
                   " ".join(f"L{i}={n}" for i, n in enumerate(r["levels"]) if n) or "-",
                   f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}", f"{r['p50_us'] / base:.2f}x",
                   str(r["misses"])] for r in rows]
    last = rows[-1]
    ratio = last["p50_us"] / base
    rates = [r["puts_per_s"] for r in rows[1:]]
    lines = [
        f"Random {args.key_bytes}-byte keys, {args.value_bytes}-byte incompressible values, "
        f"one thread; Options(fsync='interval', memtable_bytes="
        f"{options.memtable_bytes >> 20} MiB, block_cache_bytes="
        f"{options.block_cache_bytes >> 20} MiB). At each checkpoint: compaction settles, "
        f"then {args.probes:,} gets of random loaded keys are timed one by one"
        + (" after the data files were evicted from the page cache" if args.drop_cache
           else " (the page cache keeps what the block cache cannot)") + ".",
        "",
        harness.table(["keys", "puts/s (segment)", "settle", "SSTables", "files",
                       "get p50 µs", "get p99 µs", "p50 vs first", "misses"], table_rows),
        "",
        f"Target (DESIGN §14): get p50 at {last['keys']:,} keys ≤ {TARGET}x the p50 at "
        f"{rows[0]['keys']:,}: **{ratio:.2f}x, "
        f"{'met' if ratio <= TARGET else 'missed'}**"
        + ("" if last["keys"] >= 10_000_000 else " (fewer than 10M keys: --quick or cut short)")
        + ".",
    ]
    if len(rates) >= 2:
        shown = ", ".join(f"{r:,.0f}" for r in rates)
        lines.append(f"Put rate per segment after the first: {shown} puts/s (segments grow "
                     "tenfold, so later ones include more compaction).")
    if f["cut"]:
        lines.append(f"**Stopped after --max-minutes {args.max_minutes:g}: partial run.**")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with harness.work_dir(args.dir, keep=args.keep) as scratch:
        figures = run(args, scratch)
        info = harness.machine_info(scratch, ["zstandard", "crc32c"])
    text = render(args, figures)
    text += f"\n\nWhole run: {time.perf_counter() - started:.0f} s."
    print()
    print(text)
    if args.write_docs:
        harness.publish("Growth", args.quick, info, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
