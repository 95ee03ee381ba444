"""Cluster admin commands: each sends one request of the admin API and
renders its typed reply (see cli/admin.py for how they reach a node)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import click

from cli import picture
from cli.admin import AdminClient, Refused, admin_options, fail
from coordinator.cluster import ring as ringmod
from coordinator.errors import RingError
from coordinator.ops import admin_api as api


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _levels(files: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(files.items()) if v) or "none"


@click.command()
@click.option("--no-map", is_flag=True, help="Leave out the partition map.")
@admin_options(with_node=False)
def status(target: AdminClient, no_map: bool) -> None:
    """Nodes up/down (phi), load, ring ownership, hints, workers, storage and
    repair; then the partition map (each node's primaries and replicas)."""
    doc = target.call(api.StatusRequest(cluster=True), api.ClusterStatus)
    ring = None
    if not target.as_json:  # the JSON document stays the status reply alone
        answer = target.call_or_refusal(api.RingRequest(), api.RingReply)
        ring = None if isinstance(answer, Refused) else answer
    lines = _nodes_table(doc, ring)
    if ring is not None and not no_map:
        lines += ["", *_map(ring)]
    target.show(doc, lines)


def _nodes_table(doc: api.ClusterStatus, ring: api.RingReply | None) -> list[str]:
    """One row per node like nodetool status, then its storage and repair,
    then notes (why a node is unreachable or read-only)."""
    asked = next(n for n in doc.nodes if n.node == doc.asked)
    peers = asked.peers if isinstance(asked, api.NodeStatus) else {}
    members = {m.node: m for m in ring.nodes} if ring else {}
    up = sum(1 for n in doc.nodes if isinstance(n, api.NodeStatus))
    lines = [(f"ring epoch {ring.epoch}: Q={ring.q}, N={ring.n}; " if ring else "no ring yet; ")
             + f"{up}/{len(doc.nodes)} nodes up as seen by {doc.asked}",
             f"{'node':<10} {'state':<11} {'phi':>6} {'load':>10} {'primary':>7} "
             f"{'replica':>7} {'owns':>6} {'hints':>6} {'workers':>7}"]
    storage = ["", f"{'node':<10} {'fallback':>8} {'debt':>10}  sstables / last repair"]
    notes: list[str] = []
    for n in doc.nodes:
        head = (f"{n.node:<10} {n.state.capitalize():<11} "
                f"{f'{peers[n.node].phi:.1f}' if n.node in peers else '-':>6}")
        owns = _ownership(members.get(n.node), ring.q if ring else 0)
        if isinstance(n, api.NodeUnreachable):
            lines.append(f"{head} {'?':>10} {owns}")
            if n.error:
                notes.append(f"{n.node}: {n.error}")
            continue
        hints = sum(b.writes for b in n.hint_backlog.values())
        lines.append(f"{head} {_size(n.disk_bytes):>10} {owns} {hints:>6} "
                     f"{f'{n.workers_ready}/{n.workers}':>7}")
        repair = n.last_repair_ms
        storage.append(
            f"{n.node:<10} {n.partitions_fallback:>8} {_size(n.compaction_debt_bytes):>10}  "
            f"{_levels(n.sstables)} / "
            f"{'never' if not repair else f'{max(0, int(time.time() - repair / 1000))}s ago'}")
        notes += [f"{n.node}: read-only: {why}" for why in n.read_only]
        if n.read_only_mode:
            notes.append(f"{n.node}: read-only (operator's kill switch): {n.read_only_mode}")
    return lines + storage + _versions(doc) + notes


def _versions(doc: api.ClusterStatus) -> list[str]:
    """Each node's peer protocol and release, as the asked node knows them
    (a rolling upgrade shows here)."""
    asked = next(n for n in doc.nodes if n.node == doc.asked)
    if not isinstance(asked, api.NodeStatus):
        return []
    known = {asked.node: (asked.peer_protocols[-1] if asked.peer_protocols else 0,
                          asked.release)}
    known |= {k: (v.peer_protocol, v.release) for k, v in asked.peers.items()}
    return ["", "peer protocol / release: " + ", ".join(
        f"{k} {proto or '?'} / {release or '?'}" for k, (proto, release) in sorted(known.items()))]


def _ownership(member: api.RingMember | None, q: int) -> str:
    """primary, replica and owns columns of a node."""
    if member is None:
        return f"{'-':>7} {'-':>7} {'-':>6}"
    return (f"{member.owned:>7} {member.replicated - member.owned:>7} "
            f"{picture.share(member.replicated, q):>6}")


def _zone_shared(reply: api.RingReply) -> tuple[int, ...]:
    try:
        return ringmod.zone_shared(picture.ring_of(reply))
    except RingError as exc:
        fail(1, f"the node sent a ring that does not hold together: {exc}")


def _map(ring: api.RingReply) -> list[str]:
    """The partition map, as wide as the terminal (``ringkv ring`` too)."""
    try:
        health = picture.health_of(ring)
    except RingError as exc:
        fail(1, f"the node sent a ring that does not hold together: {exc}")
    key = ring.key.partition if ring.key else None
    return picture.partition_map(health, [m.node for m in ring.nodes],
                                 width=picture.terminal_width(),
                                 colour=picture.colour_wanted(), key_partition=key)


@click.command()
@click.option("--key", help="Show the partition and replicas of this key.")
@click.option("--no-map", is_flag=True, help="Leave out the partition map.")
@admin_options(with_node=False)
def ring(target: AdminClient, key: str | None, no_map: bool) -> None:
    """Ownership per node and the partition map; with --key, where that key
    lives (marked on the map)."""
    doc = target.call(api.RingRequest(None if key is None else key.encode()), api.RingReply)
    up = sum(1 for n in doc.nodes if n.state == "up")
    lines = [f"ring epoch {doc.epoch}: Q={doc.q} partitions, N={doc.n}; "
             f"{up}/{len(doc.nodes)} nodes up",
             f"{'node':<10} {'state':<6} {'zone':<8} {'primary':>7} {'replica':>7} "
             f"{'owns':>6} {'% ring':>6}"]
    for n in doc.nodes:
        lines.append(f"{n.node:<10} {n.state:<6} {n.zone or '-':<8} "
                     f"{_ownership(n, doc.q)} {picture.share(n.owned, doc.q):>6}")
    if shared := _zone_shared(doc):
        lines += ["", f"{len(shared)} partition(s) keep two replicas in one zone "
                  f"({', '.join(map(str, shared[:16]))}{' ...' if len(shared) > 16 else ''}): "
                  "losing that zone leaves them one replica until it is back "
                  "(docs/configuration.md, Zones)"]
    if (k := doc.key) is not None:
        lines += ["", f"key {key!r}: partition {k.partition}",
                  f"  primaries: {', '.join(k.primaries)}",
                  f"  fallbacks: {', '.join(k.fallbacks) or '-'}",
                  "  a request now goes to: " + ", ".join(
                      t.node + ("" if t.primary else f" (for {t.hint_for})") for t in k.targets)]
    if not no_map and not target.as_json:
        lines += ["", *_map(doc)]
    target.show(doc, lines)


@click.command()
@admin_options()
def hints(target: AdminClient) -> None:
    """Hint backlog per target node, and each hint."""
    doc = target.call(api.HintsRequest(), api.HintsReply)
    lines = [f"hints held by {doc.node} (delivered {doc.delivered}, expired {doc.expired})",
             f"{'target':<10} {'partitions':>10} {'expired':>7} {'writes':>8} {'bytes':>10} "
             f"{'oldest':>8}"]
    for owner, b in sorted(doc.backlog.items()):
        lines.append(f"{owner:<10} {b.partitions:>10} {b.expired:>7} {b.writes:>8} "
                     f"{_size(b.bytes):>10} {b.oldest_s:>7}s")
    if not doc.backlog:
        lines.append("(none)")
    target.show(doc, lines)


@click.command()
@admin_options()
def transfers(target: AdminClient) -> None:
    """Handoffs running now on a node."""
    doc = target.call(api.TransfersRequest(), api.TransfersReply)
    lines = [f"handoffs on {doc.node}: {len(doc.running)} running, "
             f"{doc.completed} completed, {doc.failed} failed",
             f"{'partition':>9} {'to':<10} {'keys':>8} {'bytes':>10} {'passes':>6} {'for':>6}"]
    for t in doc.running:
        lines.append(f"{t.partition:>9} {t.owner:<10} {t.keys_sent:>8} "
                     f"{_size(t.bytes_sent):>10} {t.passes:>6} {t.running_s:>5}s")
    target.show(doc, lines)


@click.command()
@click.argument("node_id")
@admin_options(with_node=False)
def remove(target: AdminClient, node_id: str) -> None:
    """Take NODE_ID out of the cluster for good, dead or alive.

    Its partitions move to the other nodes (the replicas that stay stream
    them; a live NODE_ID hands its copies off too, `ringkv transfers` shows
    the progress). The id can never join again; a replacement needs a new id.
    """
    doc = target.call(api.RemoveRequest(node_id), api.RemoveReply)
    if doc.already_removed:
        lines = [f"{node_id} was already removed (ring epoch {doc.epoch})"]
    else:
        lines = [f"removed {node_id} ({'up' if doc.was_up else 'down'}): ring epoch "
                 f"{doc.epoch_before} -> {doc.epoch}, {doc.partitions_changed} "
                 f"partitions change replicas; members now {', '.join(doc.members)}",
                 "data moves by handoff: `ringkv hints` / `ringkv transfers` on each node "
                 "show what is left"]
    target.show(doc, lines)


@click.command()
@admin_options()
def flush(target: AdminClient) -> None:
    """Write every memtable of a node to SSTables."""
    doc = target.call(api.FlushRequest(), api.FlushReply)
    target.show(doc, [f"{doc.node}: flushed {doc.flushed_workers} workers"])


@click.command()
@click.option("--off", is_flag=True, help="Undo a drain: take writes again, peers route to it.")
@admin_options()
def drain(target: AdminClient, off: bool) -> None:
    """Stop a node taking writes and flush it, so it can be stopped cleanly
    (--off: take writes again)."""
    doc = target.call(api.DrainRequest(off), api.DrainReply)
    if off:
        target.show(doc, [f"{doc.node}: undrained: takes writes, peers route to it again"])
        return
    target.show(doc, [f"{doc.node}: draining (writes refused, peers route around it), "
                      f"flushed {doc.flushed_workers} workers; safe to stop"])


@click.command()
@click.option("--partition", type=click.IntRange(0, 65535), help="Only this partition.")
@click.option("--all", "every_node", is_flag=True,
              help="Every node of the cluster at once, from this one command.")
@admin_options()
def compact(target: AdminClient, partition: int | None, every_node: bool) -> None:
    """Compact a node's storage now (--all: every node's); reports SSTables
    and bytes before and after."""
    if every_node:
        if target.node is not None:
            fail(2, "--all and --node exclude each other")
        _compact_cluster(target, partition)
        return
    if partition is not None:
        steps = [api.CompactRequest(partition=partition)]
    else:
        status = target.call(api.StatusRequest(), api.NodeStatus)
        steps = [api.CompactRequest(worker=i) for i in range(status.workers)]
    reports: list[api.CompactReply] = []
    with _progress(target, steps, "compacting") as bar:
        for step in bar:
            reports.append(target.call(step, api.CompactReply))
    doc, lines = _compacted(reports, partition)
    target.show(doc, lines)


def _compact_cluster(target: AdminClient, partition: int | None) -> None:
    """``compact`` on every node that is up, all at once: worker i of every
    node in step i (or the partition on each), forwarded by the node asked.
    One process instead of one per node (each start costs ~0.3 s of CPU,
    taken from the nodes on a small machine)."""
    doc = target.call(api.StatusRequest(cluster=True), api.ClusterStatus)
    up = {n.node: n.workers for n in doc.nodes if isinstance(n, api.NodeStatus)}
    errors = {n.node: n.error or "unreachable" for n in doc.nodes
              if not isinstance(n, api.NodeStatus)}
    if partition is not None:
        steps = [(api.CompactRequest(partition=partition), sorted(up))]
    else:
        steps = [(api.CompactRequest(worker=i), sorted(n for n, w in up.items() if w > i))
                 for i in range(max(up.values(), default=0))]
    reports: dict[str, list[api.CompactReply]] = {n: [] for n in up}
    with _progress(target, steps, "compacting every node, step") as bar:
        for request, nodes in bar:
            for node, got in target.call_each(request, api.CompactReply, nodes).items():
                if isinstance(got, str):
                    errors[node] = got
                elif node not in errors:
                    reports[node].append(got)
    docs: dict[str, Any] = {}
    lines: list[str] = []
    for node in sorted(reports):
        if node in errors or not reports[node]:
            continue
        docs[node], node_lines = _compacted(reports[node], partition)
        lines += node_lines
    lines += [f"{node}: not compacted: {why}" for node, why in sorted(errors.items())]
    target.show({"nodes": docs, "errors": errors}, lines)
    if errors:
        raise SystemExit(1)


def _compacted(reports: list[api.CompactReply],
               partition: int | None) -> tuple[dict[str, Any], list[str]]:
    """One node's compaction steps as the document and the lines shown."""
    b, a = reports[0].before, reports[-1].after
    seconds = round(sum(r.seconds for r in reports), 2)
    doc = {"node": reports[0].node, "partition": partition, "steps": len(reports),
           "seconds": seconds, "before": b, "after": a}
    lines = [f"compacted {reports[0].node}" + (f" partition {partition}" if partition is not None
                                               else f" ({len(reports)} workers)")
             + f" in {seconds}s",
             f"  before: {_levels(b.sstables)}, {_size(b.bytes)}, "
             f"{b.levels_over_target} levels over target",
             f"  after:  {_levels(a.sstables)}, {_size(a.bytes)}, "
             f"{a.levels_over_target} levels over target"]
    return doc, lines


#: Partitions per admin call of ``ringkv repair``.
REPAIR_BATCH = 32
SUMMED = ("partitions", "pairs", "pairs_skipped", "keys_compared", "keys_differing",
          "keys_repaired", "corrupt_fixed", "bytes_sent", "bytes_exchanged", "error_count")


@click.command()
@click.option("--partition", type=click.IntRange(0, 65535), help="Only this partition.")
@admin_options()
def repair(target: AdminClient, partition: int | None) -> None:
    """Run anti-entropy now: compare a node's partitions with their other
    replicas and exchange only what differs."""
    if partition is not None:
        parts = [partition]
    else:
        plan = target.call(api.RepairPlanRequest(), api.RepairPlanReply)
        parts = list(plan.partitions)
    # Partitions go in batches: one admin call each (a connection and a
    # handshake) cost more than repairing an in-sync partition, and at
    # Q = 4,096 one call per partition was most of the run.
    batches = [tuple(parts[i:i + REPAIR_BATCH]) for i in range(0, len(parts), REPAIR_BATCH)]
    reports: list[api.RepairReply] = []
    with _progress(target, batches, "repairing partition batches") as bar:
        for batch in bar:
            reports.append(target.call(api.RepairRequest(partitions=batch), api.RepairReply))
    node = reports[0].node if reports else (target.node or "?")
    doc: dict[str, Any] = {"node": node,
                           **{k: sum(getattr(r, k) for r in reports) for k in SUMMED},
                           "seconds": round(sum(r.seconds for r in reports), 2),
                           "errors": [e for r in reports for e in r.errors][-10:]}
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
def _progress(target: AdminClient, items: list[Any], label: str) -> Iterator[Iterable[Any]]:
    """A progress bar on stderr when it is a terminal (and not --json)."""
    if target.as_json or not sys.stderr.isatty():
        yield items
        return
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar
