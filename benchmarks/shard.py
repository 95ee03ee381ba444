"""Shard worker benchmark: replica writes and reads per second through the
protocol client against the engine alone, side by side in one run.

Rows (all with 1 KiB incompressible values, random 16-byte keys, the same
durability: every write reaches the OS, no fsync per write):

- engine: ``DB.put`` / ``DB.get`` in this process (the ceiling);
- store: ``ShardStore.write`` / ``read`` in this process (adds the
  version check and its encoding as a merge operand: a blind write; before
  issue 19.2 it was a read-merge-write);
- client, unbatched: one call at a time to a worker process over its unix
  socket (round-trip latency bound);
- client, batched: ``--concurrency`` calls in flight, which the client packs
  into shared frames (DESIGN §2).

A second table compares ways to apply a replica write in the engine (each
key written 4 times, every version superseding the last): a blind ``put``
(no version merge at all: the ceiling), ``merge`` of the encoded version
with a sibling-set merge operator (lsm merge operands, resolved where they
meet), the same through ``try_write`` (what a worker would call inline on
its event loop), and get + ``merge_sets`` + put (the read before write
the store did before issue 19.2); then gets of the merged keys before and after a full compaction.
``--merge-only`` runs just that table.

    python3 benchmarks/shard.py --quick
    python3 benchmarks/shard.py --ops 50000 --write-docs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import harness
from cluster import cpu_s
from sibling_merge import SiblingSetMerge

from lsm import NOT_CACHED
from lsm.batch import WriteBatch
from lsm.db import DB
from lsm.options import Options
from shardserver.config import WorkerConfig, WorkerSettings
from shardserver.protocol.hlc import make_hlc
from shardserver.protocol.vclock import ActorId, VClock
from shardserver.protocol.versions import Version, decode_siblings, encode_siblings, merge_sets
from shardserver.storage import ShardStore

ACTOR = ActorId(b"bench#1")
Q = 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (well under a minute)")
    p.add_argument("--ops", type=int, default=None, help="keys per row (default 40000, quick 5000)")
    p.add_argument("--value-bytes", type=int, default=1024)
    p.add_argument("--concurrency", type=int, default=256, help="calls in flight when batched")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--dir", default=None, help="parent of the scratch directory")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--write-docs", action="store_true", help="append the results to docs")
    p.add_argument("--merge-only", action="store_true",
                   help="only the table of write paths (put, merge, read before write)")
    args = p.parse_args(argv)
    if args.ops is None:
        args.ops = 5000 if args.quick else 40000
    return args


def workload(args: argparse.Namespace) -> tuple[list[tuple[int, bytes]], list[bytes]]:
    rnd = random.Random(args.seed)
    keys = [(rnd.randrange(Q), rnd.randbytes(16)) for _ in range(args.ops)]
    values = [os.urandom(args.value_bytes) for _ in range(256)]
    return keys, values


def version(i: int, value: bytes) -> Version:
    hlc = make_hlc(1_700_000_000_000 + i)
    return Version(VClock.of({ACTOR: hlc}), hlc, ACTOR, value)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


class Meter:
    """Rate by the wall clock and CPU µs per op of one process (``pid``, or
    this one) over a ``with`` block of ``n`` operations."""

    def __init__(self, n: int, pid: int | None = None) -> None:
        self.n, self.pid = n, pid
        self.rate = self.cpu_us = 0.0

    def _cpu(self) -> float:
        return time.process_time() if self.pid is None else cpu_s(self.pid)

    def __enter__(self) -> Meter:
        self._t, self._c = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.rate = rate(self.n, time.perf_counter() - self._t)
        self.cpu_us = (self._cpu() - self._c) / self.n * 1e6 if self.n else 0.0


def shuffled(keys: list[tuple[int, bytes]], seed: int) -> list[tuple[int, bytes]]:
    order = keys[:]
    random.Random(seed).shuffle(order)
    return order


def bench_engine(args: argparse.Namespace, path: str) -> dict[str, float]:
    keys, values = workload(args)
    with DB.open(path, Options(fsync="interval")) as db:
        with Meter(len(keys)) as w:
            for i, (p, k) in enumerate(keys):
                db.put(p.to_bytes(2, "big") + k, values[i % len(values)])
        with Meter(len(keys)) as r:
            for p, k in shuffled(keys, args.seed + 1):
                db.get(p.to_bytes(2, "big") + k)
    return measured(w, r)


def measured(w: Meter, r: Meter) -> dict[str, float]:
    return {"write": w.rate, "write_cpu": w.cpu_us, "read": r.rate, "read_cpu": r.cpu_us}


def bench_store(args: argparse.Namespace, path: str) -> dict[str, float]:
    keys, values = workload(args)
    store = ShardStore.open(path, range(Q), Options(fsync="interval"))
    try:
        with Meter(len(keys)) as w:
            for i, (p, k) in enumerate(keys):
                store.write(p, k, version(i, values[i % len(values)]))
        with Meter(len(keys)) as r:
            for p, k in shuffled(keys, args.seed + 1):
                store.read(p, k)
    finally:
        store.close()
    return measured(w, r)


def _merge_options() -> Options:
    # Compactions run in a child process, which must import the operator.
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    return Options(fsync="interval", merge_operator=SiblingSetMerge())


def bench_write_paths(args: argparse.Namespace, scratch: str) -> str:
    keys, values = workload(args)
    distinct = [p.to_bytes(2, "big") + k for p, k in keys[: max(1, len(keys) // 4)]]
    n = len(keys)
    writes = [(distinct[i % len(distinct)], encode_siblings((version(i, values[i % 256]),)))
              for i in range(n)]
    order = distinct[:]
    random.Random(args.seed + 1).shuffle(order)
    rows: list[list[str]] = []
    base: dict[str, float] = {}

    def timed(label: str, fn: Callable[[bytes, bytes], object], what: str) -> None:
        t, c = time.perf_counter(), time.process_time()
        for key, raw in writes:
            fn(key, raw)
        base[label] = rate(n, time.perf_counter() - t)
        cpu = (time.process_time() - c) / n * 1e6
        rows.append([label, harness.fmt_rate(base[label]), f"{cpu:.1f}",
                     harness.fmt_ratio(base[label] / base["put"]), what])

    def reads(label: str, db: DB) -> None:
        t, c = time.perf_counter(), time.process_time()
        for key in order:
            db.get(key)
        r = rate(len(order), time.perf_counter() - t)
        cpu = (time.process_time() - c) / len(order) * 1e6
        cached = sum(1 for key in order if db.get_cached(key) is not NOT_CACHED)
        rows.append([label, harness.fmt_rate(r), f"{cpu:.1f}", "",
                     f"get_cached answered {cached / len(order):.0%} afterwards"])

    with DB.open(os.path.join(scratch, "put"), Options(fsync="interval")) as db:
        timed("put", db.put, "blind overwrite, no version merge")
    with DB.open(os.path.join(scratch, "merge"), _merge_options()) as db:
        timed("merge", db.merge, "blind; siblings joined where entries meet")
        db.wait_for_compactions()
        reads("get after merges", db)
        db.compact_range(bottommost=True)
        reads("get after full compaction", db)
        newest = decode_siblings(db.get(writes[-1][0]) or b"")
        if [v.hlc for v in newest] != [make_hlc(1_700_000_000_000 + n - 1)]:
            raise RuntimeError(f"merged siblings are wrong: {newest}")
    with DB.open(os.path.join(scratch, "inline"), _merge_options()) as db:
        inline = 0

        def try_merge(key: bytes, raw: bytes) -> None:
            nonlocal inline
            batch = WriteBatch().merge(key, raw)
            if db.try_write(batch):
                inline += 1
            else:
                db.write(batch)

        timed("merge via try_write", try_merge, "")
        rows[-1][-1] = f"{inline / n:.1%} applied inline, the rest by write"
    with DB.open(os.path.join(scratch, "rbw"), Options(fsync="interval")) as db:

        def read_merge_write(key: bytes, raw: bytes) -> None:
            old = db.get(key)
            current = () if old is None else decode_siblings(old)
            db.put(key, encode_siblings(merge_sets(current, decode_siblings(raw)).siblings))

        timed("get + merge_sets + put", read_merge_write, "read before write (before 19.2)")
        db.wait_for_compactions()
        reads("get after read-before-write", db)
    note = (f"{n} writes over {len(distinct)} keys, {args.value_bytes}-byte values, "
            "fsync=interval, one thread; ops/s by the wall clock, CPU µs per op of this "
            "process (compactions run in child processes and are not counted).")
    return harness.table(["engine path", "ops/s", "CPU µs/op", "vs put", "notes"], rows) + (
        "\n\n" + note)


def start_worker(sock: str, data: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [harness.REPO, env.get("PYTHONPATH")]))
    config = WorkerConfig(sock, data, (0, Q), settings=WorkerSettings(log_level="WARNING"))
    proc = subprocess.Popen([sys.executable, "-m", "shardserver.worker", "--config", "-"],
                            env=env, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(config.to_json())
    proc.stdin.close()
    return proc


async def _timed(n: int, concurrency: int, call: Callable[[int], Awaitable[Any]],
                 pid: int) -> Meter:
    """``n`` calls, ``concurrency`` at a time, measured on the worker ``pid``."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await call(i)

    with Meter(n, pid) as m:
        if concurrency == 1:
            for i in range(n):
                await call(i)
        else:
            await asyncio.gather(*(one(i) for i in range(n)))
    return m


async def bench_client(
    args: argparse.Namespace, sock: str, concurrency: int, salt: int, pid: int
) -> dict[str, float]:
    from shardserver.protocol.client import ShardClient

    keys, values = workload(args)
    keys = [(p, k + bytes([salt])) for p, k in keys]  # rows must not overwrite each other
    client = ShardClient(sock, timeout_s=30.0, max_inflight=max(concurrency, 1))
    try:
        await client.wait_ready(timeout_s=60.0)

        async def write(i: int) -> None:
            p, k = keys[i]
            await client.write(p, k, version(i, values[i % len(values)]))

        async def read(i: int) -> None:
            p, k = keys[i]
            await client.read(p, k)

        w = await _timed(len(keys), concurrency, write, pid)
        r = await _timed(len(keys), concurrency, read, pid)
    finally:
        await client.close()
    return measured(w, r)


def run(args: argparse.Namespace, scratch: str) -> str:
    merge_table = bench_write_paths(args, os.path.join(scratch, "paths"))
    if args.merge_only:
        return merge_table
    rows: dict[str, dict[str, float]] = {}
    rows["engine (in-process)"] = bench_engine(args, os.path.join(scratch, "engine"))
    rows["store (in-process)"] = bench_store(args, os.path.join(scratch, "store"))
    sock = os.path.join(scratch, "w.sock")
    proc = start_worker(sock, os.path.join(scratch, "worker"))
    try:
        rows["client, unbatched"] = asyncio.run(bench_client(args, sock, 1, 1, proc.pid))
        rows[f"client, batched (c={args.concurrency})"] = asyncio.run(
            bench_client(args, sock, args.concurrency, 2, proc.pid)
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    base = rows["engine (in-process)"]
    header = ["path", "writes/s", "vs engine", "CPU µs/write", "reads/s", "vs engine",
              "CPU µs/read"]
    table = [
        [name, harness.fmt_rate(r["write"]), harness.fmt_ratio(r["write"] / base["write"]),
         f"{r['write_cpu']:.1f}", harness.fmt_rate(r["read"]),
         harness.fmt_ratio(r["read"] / base["read"]), f"{r['read_cpu']:.1f}"]
        for name, r in rows.items()
    ]
    note = (
        f"{args.ops} keys per row, {args.value_bytes}-byte values, fsync=interval; "
        "client rows talk to one worker process over a unix socket. CPU µs: of this "
        "process for the in-process rows, of the worker process (all its threads) for "
        "the client rows."
    )
    return harness.table(header, table) + "\n\n" + note + "\n\n" + merge_table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with harness.work_dir(args.dir, keep=args.keep) as scratch:
        text = run(args, scratch)
        info = harness.machine_info(scratch, ["msgpack", "zstandard"])
    print()
    print(text)
    if args.write_docs:
        title = "Engine write paths (merge operands)" if args.merge_only else "Shard worker"
        harness.publish(title, args.quick, info, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
