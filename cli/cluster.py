"""Cluster admin commands (see cli/admin.py for how they reach a node)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import click

from cli.admin import Target, admin_options


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _levels(files: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(files.items()) if v) or "none"


@click.command()
@admin_options(with_node=False)
def status(target: Target) -> None:
    """Nodes up/down (phi), partitions, hint backlog, disk, SSTables, repair."""
    doc = target.call("status", cluster=True)
    lines = [f"{'node':<10} {'state':<12} {'primary':>7} {'fallback':>8} {'hints':>6} "
             f"{'disk':>10} {'debt':>10}  sstables / last repair"]
    for n in doc["nodes"]:
        if "partitions_primary" not in n:
            lines.append(f"{n['node']:<10} {n['state']:<12} {n.get('error', '')}")
            continue
        hints = sum(b["partitions"] for b in n["hint_backlog"].values())
        repair = n["last_repair_ms"]
        lines.append(
            f"{n['node']:<10} {n['state']:<12} {n['partitions_primary']:>7} "
            f"{n['partitions_fallback']:>8} {hints:>6} {_size(n['disk_bytes']):>10} "
            f"{_size(n['compaction_debt_bytes']):>10}  {_levels(n['sstables'])} / "
            f"{'never' if not repair else f'{max(0, int(time.time() - repair / 1000))}s ago'}"
        )
    asked = next(n for n in doc["nodes"] if n["node"] == doc["asked"])
    lines.append("")
    lines.append(f"as seen by {doc['asked']}: " + ", ".join(
        f"{k} {v['state']} (phi {v['phi']})" + (" removed" if v.get("status") == "removed" else "")
        for k, v in asked["peers"].items()))
    target.show(doc, lines)


@click.command()
@click.option("--key", help="Show the partition and replicas of this key.")
@admin_options(with_node=False)
def ring(target: Target, key: str | None) -> None:
    """Ownership and preference lists; with --key, where that key lives."""
    doc = target.call("ring", key=None if key is None else key.encode())
    lines = [f"ring epoch {doc['epoch']}: Q={doc['q']} partitions, N={doc['n']}",
             f"{'node':<10} {'state':<6} {'zone':<8} {'owns':>5} {'replicates':>10}"]
    for n in doc["nodes"]:
        lines.append(f"{n['node']:<10} {n['state']:<6} {n['zone'] or '-':<8} {n['owned']:>5} "
                     f"{n['replicated']:>10}")
    if "key" in doc:
        k = doc["key"]
        lines += ["", f"key {key!r}: partition {k['partition']}",
                  f"  primaries: {', '.join(k['primaries'])}",
                  f"  fallbacks: {', '.join(k['fallbacks']) or '-'}",
                  "  a request now goes to: " + ", ".join(
                      t["node"] + ("" if t["primary"] else f" (for {t['hint_for']})")
                      for t in k["targets"])]
    target.show(doc, lines)


@click.command()
@admin_options()
def hints(target: Target) -> None:
    """Hint backlog per target node, and each hint."""
    doc = target.call("hints")
    lines = [f"hints held by {doc['node']} (delivered {doc['delivered']}, "
             f"expired {doc['expired']})",
             f"{'target':<10} {'partitions':>10} {'expired':>7} {'writes':>8} {'bytes':>10} "
             f"{'oldest':>8}"]
    for owner, b in sorted(doc["backlog"].items()):
        lines.append(f"{owner:<10} {b['partitions']:>10} {b['expired']:>7} {b['writes']:>8} "
                     f"{_size(b['bytes']):>10} {b['oldest_s']:>7}s")
    if not doc["backlog"]:
        lines.append("(none)")
    target.show(doc, lines)


@click.command()
@admin_options()
def transfers(target: Target) -> None:
    """Handoffs running now on a node."""
    doc = target.call("transfers")
    lines = [f"handoffs on {doc['node']}: {len(doc['running'])} running, "
             f"{doc['completed']} completed, {doc['failed']} failed",
             f"{'partition':>9} {'to':<10} {'keys':>8} {'bytes':>10} {'passes':>6} {'for':>6}"]
    for t in doc["running"]:
        lines.append(f"{t['partition']:>9} {t['owner']:<10} {t['keys_sent']:>8} "
                     f"{_size(t['bytes_sent']):>10} {t['passes']:>6} {t['running_s']:>5}s")
    target.show(doc, lines)


@click.command()
@click.argument("node_id")
@admin_options(with_node=False)
def remove(target: Target, node_id: str) -> None:
    """Take NODE_ID out of the cluster for good, dead or alive.

    Its partitions move to the other nodes (the replicas that stay stream
    them; a live NODE_ID hands its copies off too, `ringkv transfers` shows
    the progress). The id can never join again; a replacement needs a new id.
    """
    doc = target.call("remove", remove=node_id)
    if doc["already_removed"]:
        lines = [f"{node_id} was already removed (ring epoch {doc['epoch']})"]
    else:
        lines = [f"removed {node_id} ({'up' if doc['was_up'] else 'down'}): ring epoch "
                 f"{doc['epoch_before']} -> {doc['epoch']}, {doc['partitions_changed']} "
                 f"partitions change replicas; members now {', '.join(doc['members'])}",
                 "data moves by handoff: `ringkv hints` / `ringkv transfers` on each node "
                 "show what is left"]
    target.show(doc, lines)


@click.command()
@admin_options()
def flush(target: Target) -> None:
    """Write every memtable of a node to SSTables."""
    doc = target.call("flush")
    target.show(doc, [f"{doc['node']}: flushed {doc['flushed_workers']} workers"])


@click.command()
@admin_options()
def drain(target: Target) -> None:
    """Stop a node taking writes and flush it, so it can be stopped cleanly."""
    doc = target.call("drain")
    target.show(doc, [f"{doc['node']}: draining (writes refused, peers route around it), "
                      f"flushed {doc['flushed_workers']} workers; safe to stop"])


@click.command()
@click.option("--partition", type=click.IntRange(0, 65535), help="Only this partition.")
@admin_options()
def compact(target: Target, partition: int | None) -> None:
    """Compact a node's storage now; reports SSTables and bytes before and after."""
    if partition is not None:
        steps: list[dict[str, Any]] = [{"partition": partition}]
    else:
        workers = target.call("status")["workers"]
        steps = [{"worker": i} for i in range(workers)]
    reports = []
    with _progress(target, steps, "compacting") as bar:
        for step in bar:
            reports.append(target.call("compact", **step))
    doc = {"node": reports[0]["node"], "partition": partition, "steps": len(reports),
           "seconds": round(sum(r["seconds"] for r in reports), 2),
           "before": reports[0]["before"], "after": reports[-1]["after"]}
    b, a = doc["before"], doc["after"]
    lines = [f"compacted {doc['node']}" + (f" partition {partition}" if partition is not None
                                           else f" ({len(reports)} workers)")
             + f" in {doc['seconds']}s",
             f"  before: {_levels(b['sstables'])}, {_size(b['bytes'])}, "
             f"{b['levels_over_target']} levels over target",
             f"  after:  {_levels(a['sstables'])}, {_size(a['bytes'])}, "
             f"{a['levels_over_target']} levels over target"]
    target.show(doc, lines)


SUMMED = ("partitions", "pairs", "pairs_skipped", "keys_compared", "keys_differing",
          "keys_repaired", "corrupt_fixed", "bytes_sent", "bytes_exchanged", "error_count")


@click.command()
@click.option("--partition", type=click.IntRange(0, 65535), help="Only this partition.")
@admin_options()
def repair(target: Target, partition: int | None) -> None:
    """Run anti-entropy now: compare a node's partitions with their other
    replicas and exchange only what differs."""
    if partition is not None:
        parts = [partition]
    else:
        parts = target.call("repair_plan")["partitions"]
    reports = []
    with _progress(target, parts, "repairing partitions") as bar:
        for p in bar:
            reports.append(target.call("repair", partitions=[p]))
    node = reports[0]["node"] if reports else (target.node or "?")
    doc: dict[str, Any] = {"node": node, **{k: sum(r[k] for r in reports) for k in SUMMED},
                           "seconds": round(sum(r["seconds"] for r in reports), 2),
                           "errors": [e for r in reports for e in r["errors"]][-10:]}
    lines = [f"repaired {node}: {doc['partitions']} partitions, {doc['pairs']} replica pairs "
             f"({doc['pairs_skipped']} skipped: peer down) in {doc['seconds']}s",
             f"  keys compared {doc['keys_compared']}, differing {doc['keys_differing']}, "
             f"repaired {doc['keys_repaired']} (corrupt copies fixed {doc['corrupt_fixed']})",
             f"  sent {_size(doc['bytes_sent'])}, received {_size(doc['bytes_exchanged'])} "
             f"of tree nodes and digests"]
    lines += [f"  error: {e}" for e in doc["errors"]]
    target.show(doc, lines)
    if doc["error_count"]:
        raise SystemExit(1)


@contextlib.contextmanager
def _progress(target: Target, items: list[Any], label: str) -> Iterator[Iterable[Any]]:
    """A progress bar on stderr when it is a terminal (and not --json)."""
    if target.as_json or not sys.stderr.isatty():
        yield items
        return
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar
