"""``ringkv readonly on|off``: the operator's kill switch (``coordinator.ops.read_only``)."""

from __future__ import annotations

import click

from cli.admin import AdminClient, admin_options
from coordinator.ops import admin_api as api
from coordinator.ops.read_only import reason_problem


def _reason(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if (problem := reason_problem(value)) is not None:
        raise click.BadParameter(problem)
    return value


@click.command()
@click.argument("mode", type=click.Choice(["on", "off"]))
@click.option("--reason", default="", callback=_reason,
              help="Said to clients in the READONLY error (one line, no control characters).")
@admin_options()
def readonly(target: AdminClient, mode: str, reason: str) -> None:
    """Turn client writes off (on) or back on (off): every node, or --node.

    While on, writes get `-READONLY writes are off on NODE (operator)` and
    reads keep working; replication, handoff and repair go on. It is kept
    in each node's data directory, so it survives restarts until turned
    off. A node that is down is not switched: the command names it and
    exits 1, and when it comes back it is writable: run `readonly on --node
    NODE` for it once it is back.
    """
    request = api.ReadOnlyRequest(mode == "on", reason)
    if target.node is not None:
        nodes = [target.node]
        down: dict[str, str] = {}
    else:
        status = target.call(api.StatusRequest(cluster=True), api.ClusterStatus)
        nodes = [n.node for n in status.nodes if isinstance(n, api.NodeStatus)]
        down = {n.node: n.error or n.state for n in status.nodes
                if isinstance(n, api.NodeUnreachable)}
    results = target.call_each(request, api.ReadOnlyReply, nodes)
    failed = {**down, **{n: r for n, r in results.items() if isinstance(r, str)}}
    lines = []
    for node, r in sorted(results.items()):
        if isinstance(r, api.ReadOnlyReply):
            what = "read-only" if r.on else "writable"
            lines.append(f"{node}: {what}" + ("" if r.changed else " (already)")
                         + (f" - {r.reason}" if r.on and r.reason else ""))
    lines += [f"{node}: NOT switched: {why}" for node, why in sorted(failed.items())]
    doc = {"mode": mode, "reason": reason,
           "nodes": {n: r for n, r in results.items() if not isinstance(r, str)},
           "failed": failed}
    target.show(doc, lines)
    if failed:
        raise SystemExit(1)
