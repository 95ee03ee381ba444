"""``ringkv hotkeys``: the most requested keys of one node or of every node
(the coordinators' heavy-hitters sketches, see docs/operations.md, "One key
is hot")."""

from __future__ import annotations

import click

from cli.admin import AdminClient, admin_options
from coordinator.data.hotkeys import printable
from coordinator.ops import admin_api as api


@click.command()
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Show at most this many keys per node (default: all the node reports).")
@admin_options()
def hotkeys(target: AdminClient, top: int | None) -> None:
    """The most requested keys per coordinator, with reads/s and writes/s
    over the sketch's window; every node, or the one given by --node."""
    if target.node is None:
        doc = target.call(api.HotKeysRequest(cluster=True), api.ClusterHotKeys)
        nodes: tuple[api.HotKeysReply | api.NodeUnreachable, ...] = doc.nodes
        shown: object = doc
    else:
        one = target.call(api.HotKeysRequest(), api.HotKeysReply)
        nodes, shown = (one,), one
    lines = [f"{'node':<10} {'rank':>4} {'reads/s':>10} {'writes/s':>10}  key"]
    for n in nodes:
        if isinstance(n, api.NodeUnreachable):
            lines.append(f"{n.node:<10} {n.state}: {n.error or ''}")
            continue
        for rank, h in enumerate(n.keys[:top], 1):
            lines.append(f"{n.node:<10} {rank:>4} {h.reads_per_s:>10g} {h.writes_per_s:>10g}  "
                         f"{printable(h.key)}")
        if not n.keys:
            lines.append(f"{n.node:<10} (no requests in the last {n.window_s:g} s)")
    target.show(shown, lines)
