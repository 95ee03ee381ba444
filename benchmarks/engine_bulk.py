"""Bulk load: write 2 GiB of 1 KiB values to ringkv's engine in one go and
watch level 0, write stalls and throughput over time, then compact and
measure space amplification.

A sampler thread reads db.stats()["l0_files"] every ~50 ms. Reports: the
most L0 files seen, the time spent with L0 at or above the stop trigger
(options.l0_stop_trigger) and the slowdown trigger, total stall time, the
put rate per 10 % of progress (a cliff shows as a decile far below the
others), then compact_range(None, None) and du ÷ live bytes.

    python3 benchmarks/engine_bulk.py --quick
    python3 benchmarks/engine_bulk.py --gib 2 --write-docs
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import harness

MIB = harness.MIB
CLIFF = 0.8  # DESIGN §14: no throughput drop of more than 20 %
_CHUNK = 4096  # puts between wall-clock checks


@dataclass(slots=True)
class L0Sampler:
    """Samples l0_files from a thread; time is attributed to the state seen at
    the start of each interval."""

    db: Any
    interval_s: float
    stop_trigger: int
    slowdown_trigger: int
    max_l0: int = 0
    at_stop_s: float = 0.0
    at_slowdown_s: float = 0.0
    samples: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="l0-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        prev_t, prev_l0 = time.perf_counter(), 0
        while not self._stop.wait(self.interval_s):
            try:
                l0 = int(self.db.stats()["l0_files"])
            except Exception as exc:  # report, don't kill the run
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if len(self.errors) > 20:
                    return
                continue
            now = time.perf_counter()
            if prev_l0 >= self.stop_trigger:
                self.at_stop_s += now - prev_t
            if prev_l0 >= self.slowdown_trigger:
                self.at_slowdown_s += now - prev_t
            self.samples += 1
            self.max_l0 = max(self.max_l0, l0)
            prev_t, prev_l0 = now, l0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gib", type=float, default=None, help="user data to write (default 2)")
    p.add_argument("--quick", action="store_true", help="write 256 MiB")
    p.add_argument("--value-bytes", type=int, default=1024)
    p.add_argument("--key-bytes", type=int, default=16)
    p.add_argument("--memtable-mib", type=float, default=None,
                   help="memtable size (default: Options() default)")
    p.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    p.add_argument("--sample-ms", type=float, default=50.0)
    p.add_argument("--max-minutes", type=float, default=90.0,
                   help="stop writing after this long and report what was done")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--dir", default=None, help="parent of the scratch directory (removed after)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--write-docs", action="store_true",
                   help="append or replace today's section in docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.gib is None:
        args.gib = 0.25 if args.quick else 2.0
    if args.gib <= 0 or args.value_bytes < 1 or args.key_bytes < 1:
        p.error("--gib, --value-bytes and --key-bytes must be positive")
    return args


def load(db: Any, args: argparse.Namespace, n: int) -> tuple[list[tuple[int, float]], bool]:
    """Put ``n`` entries; returns (ops, seconds) per tenth of the work and
    whether the time limit cut the run short."""
    kb, vb = args.key_bytes, args.value_bytes
    keys = random.Random(args.seed).randbytes(n * kb)
    # Values are slices of a random pool at a stride that is not a multiple of
    # anything block-sized, so no two values in one block share bytes.
    pool = os.urandom(64 * MIB)
    span, stride = len(pool) - vb, vb + 13
    put = db.put
    deadline = time.perf_counter() + args.max_minutes * 60
    deciles: list[tuple[int, float]] = []
    bounds = [n * d // 10 for d in range(11)]
    for d in range(10):
        t0 = time.perf_counter()
        for chunk_start in range(bounds[d], bounds[d + 1], _CHUNK):
            for i in range(chunk_start, min(chunk_start + _CHUNK, bounds[d + 1])):
                off = (i * stride) % span
                put(keys[i * kb:(i + 1) * kb], pool[off:off + vb])
            if time.perf_counter() > deadline:
                done = min(chunk_start + _CHUNK, bounds[d + 1]) - bounds[d]
                deciles.append((done, time.perf_counter() - t0))
                return deciles, True
        dt = time.perf_counter() - t0
        deciles.append((bounds[d + 1] - bounds[d], dt))
        entry = kb + vb
        print(f"  {10 * (d + 1):3d} %  {bounds[d + 1]:>10,} puts  "
              f"{(bounds[d + 1] - bounds[d]) / dt:>9,.0f} puts/s  "
              f"{(bounds[d + 1] - bounds[d]) * entry / MIB / dt:6.1f} MiB/s  "
              f"L0 {db.stats()['l0_files']}", flush=True)
    return deciles, False


def run(args: argparse.Namespace, scratch: str) -> tuple[str, dict[str, Any]]:
    from lsm.db import DB
    from lsm.options import Options

    options = Options(fsync=args.fsync)
    if args.memtable_mib:
        options = replace(options, memtable_bytes=int(args.memtable_mib * MIB))
    entry = args.key_bytes + args.value_bytes
    n = max(10, int(args.gib * 1024 * MIB) // entry)
    path = os.path.join(scratch, "ringkv")
    db = DB.open(path, options)
    sampler = L0Sampler(db, args.sample_ms / 1000, options.l0_stop_trigger,
                        options.l0_slowdown_trigger)
    print(f"writing {n:,} x {entry} B = {n * entry / MIB:,.0f} MiB to {path}", flush=True)
    io0 = harness.written_bytes()
    sampler.start()
    t0 = time.perf_counter()
    try:
        deciles, cut = load(db, args, n)
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        db.wait_for_compactions(timeout=args.max_minutes * 60)
        settle_s = time.perf_counter() - t1
    finally:
        sampler.stop()
    io1 = harness.written_bytes()
    stats = db.stats()
    done = sum(ops for ops, _ in deciles)
    live = done * entry
    print("compact_range(None, None) ...", flush=True)
    t2 = time.perf_counter()
    db.compact_range(None, None)
    db.wait_for_compactions(timeout=args.max_minutes * 60)
    compact_s = time.perf_counter() - t2
    du = harness.du_bytes(path)
    after = db.stats()
    db.close()
    figures = {
        "ops": done, "cut": cut, "load_s": load_s, "settle_s": settle_s, "compact_s": compact_s,
        "deciles": deciles, "live": live, "du": du,
        "written": None if io0 is None or io1 is None else io1 - io0,
        "max_l0": sampler.max_l0, "at_stop_s": sampler.at_stop_s,
        "at_slowdown_s": sampler.at_slowdown_s, "samples": sampler.samples,
        "sampler_errors": sampler.errors, "stats": stats, "after": after, "options": options,
    }
    return render(args, figures), figures


def render(args: argparse.Namespace, f: dict[str, Any]) -> str:
    entry = args.key_bytes + args.value_bytes
    options, stats = f["options"], f["stats"]
    rates = [ops / s for ops, s in f["deciles"] if s > 0]
    rows = [[f"{10 * (i + 1)} %", f"{ops:,}", f"{ops / s:,.0f}", f"{ops * entry / MIB / s:.1f}"]
            for i, (ops, s) in enumerate(f["deciles"]) if s > 0]
    later = rates[1:] or rates
    median = statistics.median(later) if later else 0.0
    worst = min(later) / median if median else 0.0
    written = f["written"]
    levels = ", ".join(f"L{i} {lv['files']} files/{lv['bytes'] / MIB:,.0f} MiB"
                       for i, lv in enumerate(stats["levels"]) if lv["files"])
    levels_after = ", ".join(f"L{i} {lv['files']} files/{lv['bytes'] / MIB:,.0f} MiB"
                             for i, lv in enumerate(f["after"]["levels"]) if lv["files"])
    lines = [
        f"{f['ops']:,} puts of random {args.key_bytes}-byte keys and {args.value_bytes}-byte "
        f"incompressible values ({f['live'] / MIB:,.0f} MiB) in one thread; "
        f"Options(fsync={args.fsync!r}, memtable_bytes={options.memtable_bytes >> 20} MiB, "
        f"l0_compaction_trigger={options.l0_compaction_trigger}, "
        f"l0_slowdown_trigger={options.l0_slowdown_trigger}, "
        f"l0_stop_trigger={options.l0_stop_trigger}).",
        "",
        harness.table(["progress", "puts", "puts/s", "MiB/s"], rows),
        "",
        harness.table(["figure", "value"], [
            ["load time", f"{f['load_s']:.1f} s ({f['ops'] / f['load_s']:,.0f} puts/s, "
             f"{f['live'] / MIB / f['load_s']:.1f} MiB/s)"],
            ["slowest decile after the first ÷ median", f"{worst:.2f} "
             f"({'no cliff' if worst >= CLIFF else 'CLIFF: more than a 20 % drop'})"],
            ["max L0 files (sampled every "
             f"{args.sample_ms:g} ms, {f['samples']:,} samples)", str(f["max_l0"])],
            [f"time with L0 ≥ stop trigger ({options.l0_stop_trigger})",
             f"{f['at_stop_s']:.2f} s"],
            [f"time with L0 ≥ slowdown trigger ({options.l0_slowdown_trigger})",
             f"{f['at_slowdown_s']:.2f} s"],
            ["total stall time (stats stall_s)", f"{stats['stall_s']:.2f} s in "
             f"{stats['write_stalls']} stalls; {stats.get('write_slowdowns', 0)} slowdowns"],
            ["background work after the last put", f"{f['settle_s']:.1f} s"],
            ["levels after settling", levels or "—"],
            ["write amplification (until settled)",
             "—" if not written else f"{written / f['live']:.2f} ({written / MIB:,.0f} MiB)"],
            ["compact_range(None, None)", f"{f['compact_s']:.1f} s → {levels_after or '—'}"],
            ["space amplification (du ÷ live)",
             f"{f['du'] / f['live']:.2f} ({f['du'] / MIB:,.0f} MiB ÷ {f['live'] / MIB:,.0f} MiB)"],
        ]),
    ]
    if f["cut"]:
        lines += ["", f"**Stopped after --max-minutes {args.max_minutes:g}: partial run.**"]
    if f["sampler_errors"]:
        lines += ["", f"**stats() failed in the sampler: {f['sampler_errors'][0]}**"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with harness.work_dir(args.dir, keep=args.keep) as scratch:
        text, _ = run(args, scratch)
        info = harness.machine_info(scratch, ["zstandard", "crc32c"])
    text += f"\n\nWhole run: {time.perf_counter() - started:.0f} s."
    print()
    print(text)
    if args.write_docs:
        harness.publish("Bulk load", args.quick, info, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
