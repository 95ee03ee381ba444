"""Turns engine.py's per-engine results into the printed (Markdown) report."""

from __future__ import annotations

import argparse
from typing import Any

import harness
import stores
from harness import fmt_rate, fmt_ratio, verdict

MIB = harness.MIB
PUT_VS_ROCKSDICT = 1.0
GET_VS_ROCKSDICT = 0.5
GET_VS_PLYVEL = 1.0
REOPEN_S = 2.0


def _ratio(results: dict[str, dict[str, Any]], engine: str, peer: str, key: str) -> float | None:
    a, b = results.get(engine, {}).get(key), results.get(peer, {}).get(key)
    return None if a is None or not b else a / b


def _reopen(result: dict[str, Any], phase: str) -> float | None:
    opened: dict[str, Any] = result.get(phase, {}).get("open", {})
    value: float | None = opened.get("open_s")
    return value


def _fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} s"


def _fmt_amp(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def main_table(engines: list[str], results: dict[str, dict[str, Any]],
               skipped: dict[str, str]) -> str:
    header = ["engine", "put ops/s", "put vs rocksdict", "get ops/s", "get vs rocksdict",
              "get vs plyvel", "write amp", "space amp", "reopen (WAL)"]
    rows = []
    for e in engines:
        r = results.get(e)
        if r is None or "error" in r:
            why = "skipped (see notes)" if e in skipped else "failed (see notes)"
            rows.append([e, why, "", "", "", "", "", "", ""])
            continue
        rows.append([
            e,
            fmt_rate(r.get("put_ops_s")), fmt_ratio(_ratio(results, e, "rocksdict", "put_ops_s")),
            fmt_rate(r.get("get_ops_s")), fmt_ratio(_ratio(results, e, "rocksdict", "get_ops_s")),
            fmt_ratio(_ratio(results, e, "plyvel", "get_ops_s")),
            _fmt_amp(r.get("write_amp")), _fmt_amp(r.get("space_amp")),
            _fmt_s(_reopen(r, "reopen-open")) if e in stores.WAL_ENGINES else "n/a",
        ])
    return harness.table(header, rows)


def targets_table(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str:
    put_rd = _ratio(results, "ringkv", "rocksdict", "put_ops_s")
    get_rd = _ratio(results, "ringkv", "rocksdict", "get_ops_s")
    get_pl = _ratio(results, "ringkv", "plyvel", "get_ops_s")
    ringkv = results.get("ringkv", {})
    warm, cold = _reopen(ringkv, "reopen-open"), _reopen(ringkv, "reopen-open-cold")

    def at_least(x: float | None, bound: float) -> bool | None:
        return None if x is None else x >= bound

    reopen_fig = _fmt_s(warm) + ("" if cold is None else f" (cold cache {_fmt_s(cold)})")
    reopen_ok = None if warm is None else max(warm, cold or 0.0) <= REOPEN_S
    reopen_name = f"reopen with {args.reopen_mib:g} MiB of unflushed WAL ≤ {REOPEN_S:g} s"
    if args.reopen_mib != 64:
        reopen_name += " (target is for 64 MiB)"
    rows = [
        [f"put ≥ {PUT_VS_ROCKSDICT}x rocksdict", fmt_ratio(put_rd),
         verdict(at_least(put_rd, PUT_VS_ROCKSDICT))],
        [f"get ≥ {GET_VS_ROCKSDICT}x rocksdict", fmt_ratio(get_rd),
         verdict(at_least(get_rd, GET_VS_ROCKSDICT))],
        [f"get ≥ {GET_VS_PLYVEL}x plyvel", fmt_ratio(get_pl),
         verdict(at_least(get_pl, GET_VS_PLYVEL))],
        [reopen_name, reopen_fig, verdict(reopen_ok)],
    ]
    return harness.table(["ringkv target (DESIGN §14)", "figure", "verdict"], rows)


def ringkv_details(args: argparse.Namespace, r: dict[str, Any]) -> list[str]:
    out = []
    settled, end = r.get("extra_settled", {}), r.get("extra_end", {})
    if r.get("write_amp") is not None:
        out.append(
            f"- write amplification {r['write_amp']:.2f}: {r['written_bytes'] / MIB:,.1f} MiB "
            f"written (/proc/self/io write_bytes: WAL + flushes + compactions, from the first "
            f"put until background work settled) for {r['user_bytes'] / MIB:,.1f} MiB of keys "
            f"and values."
        )
    out.append(
        f"- space amplification {r['space_amp']:.2f}: du {r['du_bytes'] / MIB:,.1f} MiB after "
        f"compact_range(None, None) ÷ {r['user_bytes'] / MIB:,.1f} MiB live."
    )
    levels = settled.get("levels") or []
    shape = ", ".join(f"L{i} {f} files/{(b or 0) / MIB:.1f} MiB"
                      for i, (f, b) in enumerate(levels) if f)
    out.append(
        f"- after the puts settled ({r['settle_s']:.1f} s): {shape or 'no tables'}; "
        f"write stalls {settled.get('write_stalls')}, stalled {settled.get('stall_s') or 0:.2f} s,"
        f" slowdowns {settled.get('write_slowdowns')}. compact_range took "
        f"{r['compact_s']:.1f} s."
    )
    cache = end.get("block_cache")
    if cache:
        out.append(f"- block cache after the gets: {cache}")
    for phase in ("reopen-open", "reopen-open-cold"):
        rec = r.get(phase)
        if not rec:
            continue
        wrote, opened = rec["write"], rec["open"]
        if "error" in opened:
            out.append(f"- reopen ({phase}): failed: {opened['error']}")
            continue
        wal = wrote.get("wal_bytes")
        out.append(
            f"- reopen{' (cold page cache)' if opened.get('cold') else ''}: DB.open took "
            f"{opened['open_s']:.2f} s on {(wal or 0) / MIB:.1f} MiB of WAL "
            f"({wrote['ops']:,} puts in {wrote['write_s']:.1f} s, then os._exit without close; "
            f"{wrote.get('table_files')} table files before the kill); "
            f"{opened['found']}/{opened['probed']} probed keys found after reopen."
        )
    return out


def notes(args: argparse.Namespace, engines: list[str], results: dict[str, dict[str, Any]],
          skipped: dict[str, str]) -> list[str]:
    out = []
    for e, r in results.items():
        if "error" in r:
            out.append(f"- **{e} failed**: {r['error']}")
            continue
        if r.get("misses") or r.get("wrong_values"):
            out.append(f"- **{e}: {r['misses']} gets returned nothing and {r['wrong_values']} "
                       f"of a 2,000-key sample returned a wrong value**")
        for phase in ("reopen-open", "reopen-open-cold"):
            opened = r.get(phase, {}).get("open", {})
            if e != "ringkv" and "error" in opened:
                out.append(f"- {e} reopen failed: {opened['error']}")
            elif opened and opened.get("found") != opened.get("probed"):
                out.append(f"- **{e}: only {opened['found']}/{opened['probed']} keys written "
                           f"before the kill were found after reopen**")
    for e, why in skipped.items():
        out.append(f"- {e} skipped: {why}")
    tuning = stores.Tuning(int(args.memtable_mib * MIB), int(args.cache_mib * MIB),
                           matched=not args.peer_defaults)
    for e in engines:
        if e in results:
            out.append(f"- {e}: {stores.describe(e, tuning)}.")
    return out


def render(args: argparse.Namespace, engines: list[str], results: dict[str, dict[str, Any]],
           skipped: dict[str, str], elapsed_s: float) -> str:
    user = args.ops * (args.key_bytes + args.value_bytes)
    memtable = args.memtable_mib * MIB
    parts = [
        f"{args.ops:,} random {args.key_bytes}-byte keys with {args.value_bytes}-byte "
        f"incompressible values ({user / MIB:,.1f} MiB, {user / memtable:.1f}x the "
        f"{args.memtable_mib:g} MiB memtable), one thread, one process per engine. Puts in "
        f"random order; then background work settles and a full manual compaction runs; then "
        f"gets of every key in a different random order. Ratios are within this run.",
        "",
        main_table(engines, results, skipped),
        "",
    ]
    if user < 8 * memtable:
        parts += ["**Data is less than 8x the memtable: the get figures do not meet the "
                  "§14 setup.**", ""]
    if "ringkv" in results and "error" not in results["ringkv"]:
        parts += [targets_table(args, results), "", "ringkv:", "",
                  *ringkv_details(args, results["ringkv"]), ""]
    parts += [
        "Notes:",
        "",
        "- write amp = bytes the engine's process wrote (/proc/self/io write_bytes, page-cache "
        "writes included) from the first put until background work settled, ÷ user bytes; "
        "space amp = du after a full compaction (lmdb: after sync; sqlite3: after a WAL "
        "checkpoint) ÷ user bytes; reopen = time for open to return after a process that had "
        "written the WAL died with os._exit.",
        *notes(args, engines, results, skipped),
        f"- whole run: {elapsed_s:.0f} s.",
    ]
    return "\n".join(parts)
