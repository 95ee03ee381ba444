"""Engine benchmark: ringkv's LSM engine against rocksdict, plyvel, lmdb and
sqlite3, side by side in one run (DESIGN §14).

Random puts then random gets of incompressible values under random keys, with
the same durability for every engine (each write reaches the OS, no fsync per
write). Gets run after the writes and a full manual compaction, with data at
least 8x ringkv's memtable. Also, for ringkv: write amplification, space
amplification and the time to reopen with 64 MiB of unflushed WAL.

Each engine runs in a fresh interpreter (this script, re-invoked with
--child), so caches, allocator state and GC never leak between engines.

    python3 benchmarks/engine.py --quick
    python3 benchmarks/engine.py --engines ringkv,rocksdict --ops 200000 --write-docs
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import sys
import time
from typing import Any, NoReturn

import harness
import stores
from report import render

_REOPEN_KEY_SEED_OFFSET = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes (about a minute): 1 MiB memtable, 16 MiB WAL to reopen")
    p.add_argument("--engines", default=",".join(stores.ENGINES),
                   help="comma-separated subset of " + ",".join(stores.ENGINES))
    p.add_argument("--ops", type=int, default=None,
                   help="keys to put and to get (default 131072, quick 16384)")
    p.add_argument("--value-bytes", type=int, default=1024)
    p.add_argument("--key-bytes", type=int, default=16)
    p.add_argument("--memtable-mib", type=float, default=None,
                   help="ringkv memtable and peers' write buffer (default 8, quick 1)")
    p.add_argument("--cache-mib", type=float, default=None,
                   help="block cache of every engine that has one (default 64, quick 8)")
    p.add_argument("--reopen-mib", type=float, default=None,
                   help="unflushed WAL to reopen with (default 64, quick 16)")
    p.add_argument("--cold-reopen", action=argparse.BooleanOptionalAction, default=None,
                   help="also time ringkv's reopen with its files evicted from the page cache "
                   "(default: on, off with --quick)")
    p.add_argument("--peer-defaults", action="store_true",
                   help="leave peers at library defaults instead of matching ringkv's "
                   "write buffer, block cache and bloom filter")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--dir", default=None,
                   help="parent of the scratch directory (default: current directory); the "
                   "scratch directory is removed afterwards")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds allowed per engine process (default 1800, quick 120)")
    p.add_argument("--write-docs", action="store_true",
                   help="append or replace today's section in docs/benchmarks.md")
    # Internal: one engine's phase in a fresh process.
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    args.ops = args.ops or (16384 if quick else 131072)
    args.memtable_mib = args.memtable_mib or (1.0 if quick else 8.0)
    args.cache_mib = args.cache_mib or (8.0 if quick else 64.0)
    args.reopen_mib = args.reopen_mib or (16.0 if quick else 64.0)
    args.timeout = args.timeout or (120.0 if quick else 1800.0)
    if args.cold_reopen is None:
        args.cold_reopen = not quick
    if args.ops < 1 or args.value_bytes < 1 or args.key_bytes < 1:
        p.error("--ops, --value-bytes and --key-bytes must be positive")
    return args


def tuning_of(args: argparse.Namespace, memtable_bytes: int | None = None) -> stores.Tuning:
    return stores.Tuning(
        memtable_bytes=memtable_bytes or int(args.memtable_mib * harness.MIB),
        block_cache_bytes=int(args.cache_mib * harness.MIB),
        matched=not args.peer_defaults,
    )


def make_keys(seed: int, n: int, size: int) -> list[bytes]:
    blob = random.Random(seed).randbytes(n * size)
    return [blob[i * size:(i + 1) * size] for i in range(n)]


# -- child phases ----------------------------------------------------------------
def phase_main(args: argparse.Namespace) -> dict[str, Any]:
    n, kb, vb = args.ops, args.key_bytes, args.value_bytes
    keys = make_keys(args.seed, n, kb)
    values = [os.urandom(vb) for _ in range(n)]
    order = list(range(n))
    random.Random(args.seed).shuffle(order)
    get_keys = [keys[i] for i in order]
    user_bytes = n * (kb + vb)
    gc.collect()
    gc.freeze()  # the inputs above are not the engine's garbage to scan

    store = stores.open_store(args.child, args.path, tuning_of(args))
    put = store.put
    io0 = harness.written_bytes()
    t0 = time.perf_counter()
    for k, v in zip(keys, values, strict=True):
        put(k, v)
    put_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    store.settle()
    harness.wait_io_quiet()
    settle_s = time.perf_counter() - t0
    io1 = harness.written_bytes()
    settled = store.extra()

    t0 = time.perf_counter()
    store.compact()
    harness.wait_io_quiet(0.5)
    compact_s = time.perf_counter() - t0
    du = harness.du_bytes(args.path)

    store.begin_reads()
    get = store.get
    gc.collect()
    misses = 0
    t0 = time.perf_counter()
    for k in get_keys:
        if get(k) is None:
            misses += 1
    get_s = time.perf_counter() - t0

    sample = random.Random(args.seed + 2).sample(range(n), min(n, 2000))
    wrong = sum(1 for i in sample if store.get(keys[i]) != values[i])
    end = store.extra()
    store.close()
    written = None if io0 is None or io1 is None else io1 - io0
    return {
        "put_ops_s": n / put_s, "put_s": put_s,
        "get_ops_s": n / get_s, "get_s": get_s,
        "settle_s": settle_s, "compact_s": compact_s,
        "user_bytes": user_bytes, "written_bytes": written,
        "write_amp": None if not written else written / user_bytes,
        "du_bytes": du, "space_amp": du / user_bytes,
        "misses": misses, "wrong_values": wrong,
        "extra_settled": settled, "extra_end": end,
    }


def reopen_tuning(args: argparse.Namespace) -> stores.Tuning:
    # Memtable large enough that none of the WAL gets flushed before the kill,
    # for the peers too (even with --peer-defaults).
    return stores.Tuning(
        memtable_bytes=max(256 << 20, int(4 * args.reopen_mib * harness.MIB)),
        block_cache_bytes=int(args.cache_mib * harness.MIB),
    )


def reopen_ops(args: argparse.Namespace) -> int:
    entry: int = args.key_bytes + args.value_bytes
    return -(-int(args.reopen_mib * harness.MIB) // entry)


def phase_reopen_write(args: argparse.Namespace) -> NoReturn:
    """Write --reopen-mib of user data and die without closing anything."""
    n = reopen_ops(args)
    keys = make_keys(args.seed + _REOPEN_KEY_SEED_OFFSET, n, args.key_bytes)
    store = stores.open_store(args.child, args.path, reopen_tuning(args))
    t0 = time.perf_counter()
    for k in keys:
        store.put(k, os.urandom(args.value_bytes))
    result: dict[str, Any] = {"ops": n, "write_s": time.perf_counter() - t0,
                              "du_bytes": harness.du_bytes(args.path)}
    if args.child == "ringkv":
        stats = store.extra()
        result["wal_bytes"] = stats.get("wal_bytes")
        result["table_files"] = sum(f or 0 for f, _ in stats.get("levels", []))
    harness.write_result(args.result, result)
    os._exit(0)  # a crash: no close, no flush, no final sync


def phase_reopen_open(args: argparse.Namespace) -> dict[str, Any]:
    cold = args.phase == "reopen-open-cold"
    if cold:
        harness.drop_from_page_cache(args.path)
    t0 = time.perf_counter()
    store = stores.open_store(args.child, args.path, reopen_tuning(args))
    open_s = time.perf_counter() - t0
    n = reopen_ops(args)
    keys = make_keys(args.seed + _REOPEN_KEY_SEED_OFFSET, n, args.key_bytes)
    probe = keys[:200] + keys[-200:]
    found = sum(1 for k in probe if store.get(k) is not None)
    store.close()
    return {"open_s": open_s, "cold": cold, "probed": len(probe), "found": found}


def run_child_phase(args: argparse.Namespace) -> int:
    if args.phase == "main":
        result = phase_main(args)
    elif args.phase == "reopen-write":
        phase_reopen_write(args)
    else:
        result = phase_reopen_open(args)
    harness.write_result(args.result, result)
    return 0


# -- orchestration ---------------------------------------------------------------
def child_args(args: argparse.Namespace, engine: str, phase: str, path: str) -> list[str]:
    out = ["--child", engine, "--phase", phase, "--path", path,
           "--ops", str(args.ops), "--value-bytes", str(args.value_bytes),
           "--key-bytes", str(args.key_bytes), "--memtable-mib", str(args.memtable_mib),
           "--cache-mib", str(args.cache_mib), "--reopen-mib", str(args.reopen_mib),
           "--seed", str(args.seed)]
    return [*out, "--peer-defaults"] if args.peer_defaults else out


def run_engine(args: argparse.Namespace, engine: str, scratch: str) -> dict[str, Any]:
    script = os.path.abspath(__file__)
    path = os.path.join(scratch, engine)
    print(f"  {engine}: {args.ops:,} puts, compaction, {args.ops:,} gets ...", flush=True)
    result = harness.run_child(script, child_args(args, engine, "main", path), args.timeout)
    shutil.rmtree(path, ignore_errors=True)
    if engine not in stores.WAL_ENGINES or "error" in result:
        return result
    phases = ["reopen-open"] + (["reopen-open-cold"] if args.cold_reopen and engine == "ringkv"
                                else [])
    for phase in phases:
        print(f"  {engine}: reopen with {args.reopen_mib:g} MiB of unflushed WAL"
              f"{' (cold page cache)' if phase.endswith('cold') else ''} ...", flush=True)
        wrote = harness.run_child(script, child_args(args, engine, "reopen-write", path),
                                  args.timeout)
        opened = ({"error": wrote["error"]} if "error" in wrote else
                  harness.run_child(script, child_args(args, engine, phase, path), args.timeout))
        result[phase] = {"write": wrote, "open": opened}
        shutil.rmtree(path, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child_phase(args)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in stores.ENGINES]
    if unknown:
        print(f"unknown engine(s): {', '.join(unknown)}; choose from {stores.ENGINES}",
              file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    started = time.perf_counter()
    with harness.work_dir(args.dir, keep=args.keep) as scratch:
        print(f"scratch directory {scratch}", flush=True)
        for engine in engines:
            why = (None if stores.available(engine) else "not installed") or (
                stores.importable(engine) if engine == "ringkv" else None)
            if why:
                skipped[engine] = why + (
                    " (pip install -e '.[bench]')" if engine in stores.DISTRIBUTIONS else "")
                print(f"  {engine}: skipped, {skipped[engine]}", flush=True)
                continue
            results[engine] = run_engine(args, engine, scratch)
        info = harness.machine_info(scratch, [*stores.DISTRIBUTIONS, "zstandard", "crc32c"])
    elapsed = time.perf_counter() - started
    text = render(args, engines, results, skipped, elapsed)
    print()
    print(text)
    if args.write_docs:
        harness.publish("Engine benchmark", args.quick, info, text)
    failed = [e for e, r in results.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
