"""The node's status page, served at ``/`` on ``metrics_port``: one HTML
document with inline CSS and SVG (no scripts, no external assets, so it works
offline), refreshing itself every ``REFRESH_S``. It renders what INFO and the
metrics render: the snapshot, partition health (``ops.health``) and the last
minutes of requests (``ops.recent``).

The ring is a circle of Q arcs, each coloured by the partition's first
primary (grey stripes when a primary is down); a table lists each node's
replicas per partition; the hot keys are the sketch's top ones (as in
``INFO hotkeys``, keys escaped the same way). Elements carry ``data-*``
attributes for tests and scripts
(``<tr class="node" data-node="n3" data-state="down">``)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from coordinator.data.hotkeys import printable
from coordinator.ops.health import RingHealth
from coordinator.ops.recent import Interval
from coordinator.ops.status import NodeSnapshot

REFRESH_S = 5
_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7",
            "#9c755f", "#e15759", "#bab0ac")
_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse} td,th{padding:.2em .7em;border-bottom:1px solid #ddd;
text-align:left} .down{color:#b00;font-weight:bold} .up{color:#070}
.grid{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start} .big{font-size:1.6em}
.warn{background:#fee} small{color:#666}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render(snap: NodeSnapshot, health: RingHealth, recent: Sequence[Interval]) -> str:
    up = {m.node: m.up for m in snap.members}
    colours = {n: _COLOURS[i % len(_COLOURS)] for i, n in enumerate(snap.ring_nodes)}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{REFRESH_S}'>",
        f"<title>ringkv {_e(snap.node_id)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>ringkv node {_e(snap.node_id)}</h1>",
        f"<small>ring epoch {snap.ring_epoch}, Q={snap.partitions}, N={snap.replicas}, "
        f"up {snap.uptime_s} s; refreshes every {REFRESH_S} s</small>",
        "<div class='grid'><div>", _ring_svg(health, colours, up), "</div><div>",
        _summary(snap, health), _nodes(snap, colours), "</div></div>",
        _requests(recent), _hot_keys(snap), _hints(snap), _partitions(health, colours),
        "</body></html>",
    ]
    return "".join(parts)


def _ring_svg(health: RingHealth, colours: dict[str, str], up: dict[str, bool]) -> str:
    q = len(health.partitions)
    size, r_out, r_in = 320, 150, 95
    c = size / 2
    out = [f"<svg width='{size}' height='{size}' "
           f"viewBox='0 0 {size} {size}' role='img' aria-label='ring'>"]
    for p in health.partitions:
        a0 = 2 * math.pi * p.partition / q - math.pi / 2
        a1 = 2 * math.pi * (p.partition + 1) / q - math.pi / 2
        owner = p.replicas[0] if p.replicas else "?"
        fill = colours.get(owner, "#ccc")
        stroke = "#b00" if not all(p.up) else "#fff"
        large = 1 if a1 - a0 > math.pi else 0
        pts = (c + r_out * math.cos(a0), c + r_out * math.sin(a0),
               c + r_out * math.cos(a1), c + r_out * math.sin(a1),
               c + r_in * math.cos(a1), c + r_in * math.sin(a1),
               c + r_in * math.cos(a0), c + r_in * math.sin(a0))
        d = (f"M{pts[0]:.1f},{pts[1]:.1f} A{r_out},{r_out} 0 {large} 1 {pts[2]:.1f},{pts[3]:.1f}"
             f" L{pts[4]:.1f},{pts[5]:.1f} A{r_in},{r_in} 0 {large} 0 {pts[6]:.1f},{pts[7]:.1f}Z")
        title = (f"partition {p.partition}: " + ", ".join(
            f"{n} {'up' if ok else 'DOWN'}" for n, ok in zip(p.replicas, p.up, strict=True)))
        out.append(f"<path d='{d}' fill='{fill}' stroke='{stroke}' stroke-width='1'"
                   f" data-partition='{p.partition}'><title>{_e(title)}</title></path>")
    downs = sum(1 for v in up.values() if not v)
    out.append(f"<text x='{c}' y='{c - 6}' text-anchor='middle' font-size='22'>"
               f"{len(up) - downs}/{len(up)}</text>")
    out.append(f"<text x='{c}' y='{c + 16}' text-anchor='middle' font-size='12'>nodes up</text>")
    out.append("</svg>")
    return "".join(out)


def _summary(snap: NodeSnapshot, health: RingHealth) -> str:
    under, risk = health.under_replicated, health.at_quorum_risk
    hints = sum(b.writes for b in snap.replication.backlog.values())
    rows = [("under-replicated partitions", under, "under-replicated", under > 0),
            ("partitions one loss from quorum loss", risk, "at-risk", risk > 0),
            ("hinted writes held", hints, "hint-backlog", hints > 0),
            ("read-only engines", len(snap.storage.read_only), "read-only",
             bool(snap.storage.read_only))]
    cells = "".join(f"<tr class='{'warn' if bad else ''}'><td>{_e(label)}</td>"
                    f"<td class='big' data-figure='{key}'>{value}</td></tr>"
                    for label, value, key, bad in rows)
    return f"<h2>Data safety</h2><table>{cells}</table>"


def _nodes(snap: NodeSnapshot, colours: dict[str, str]) -> str:
    rows = []
    for m in snap.members:
        state = "up" if m.up else "down"
        swatch = (f"<span style='color:{colours.get(m.node, '#ccc')}'>&#9632;</span> ")
        rows.append(f"<tr class='node {state}' data-node='{_e(m.node)}' data-state='{state}'>"
                    f"<td>{swatch}{_e(m.node)}</td><td class='{state}'>{state}</td>"
                    f"<td>{m.phi:.1f}</td><td>{_e(m.client_addr)}</td><td>{_e(m.status)}</td>"
                    "</tr>")
    return ("<h2>Nodes</h2><table><tr><th>node</th><th>state</th><th>phi</th>"
            "<th>client address</th><th>says</th></tr>" + "".join(rows) + "</table>")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def _requests(recent: Sequence[Interval]) -> str:
    if not recent:
        return "<h2>Requests</h2><p>No samples yet (one every 10 s).</p>"
    peak = max(*(i.rate for i in recent), 1.0)
    w, h = 360, 60
    step = w / max(len(recent) - 1, 1)
    points = " ".join(f"{k * step:.1f},{h - h * i.rate / peak:.1f}" for k, i in enumerate(recent))
    spark = (f"<svg width='{w}' height='{h}'>"
             f"<polyline fill='none' stroke='#4e79a7' stroke-width='2' points='{points}'/></svg>")
    rows = "".join(f"<tr><td>-{(len(recent) - k - 1) * 10} s</td><td>{i.rate:.1f}</td>"
                   f"<td>{_ms(i.p50)}</td><td>{_ms(i.p99)}</td></tr>"
                   for k, i in list(enumerate(recent))[::-1][:12])
    return ("<h2>Requests through this node</h2>" + spark +
            "<table><tr><th>10 s ending</th><th>per s</th><th>p50 ms</th><th>p99 ms</th></tr>"
            + rows + "</table>")


def _hot_keys(snap: NodeSnapshot) -> str:
    """The sketch's top keys at this coordinator (``INFO hotkeys``)."""
    if not snap.hotkeys:
        return "<h2>Hot keys</h2><p>No requests counted in the window yet.</p>"
    rows = "".join(f"<tr data-hot-key='{_e(printable(h.key))}'><td>{rank}</td>"
                   f"<td><code>{_e(printable(h.key))}</code></td>"
                   f"<td>{h.reads_per_s:.1f}</td><td>{h.writes_per_s:.1f}</td></tr>"
                   for rank, h in enumerate(snap.hotkeys, 1))
    return ("<h2>Hot keys at this node</h2><table><tr><th>rank</th><th>key</th>"
            "<th>reads/s</th><th>writes/s</th></tr>" + rows + "</table>")


def _hints(snap: NodeSnapshot) -> str:
    backlog = snap.replication.backlog
    if not backlog:
        return "<h2>Hint backlog</h2><p>None held.</p>"
    rows = "".join(f"<tr data-target='{_e(t)}'><td>{_e(t)}</td><td>{b.partitions}</td>"
                   f"<td>{b.writes}</td><td>{b.bytes}</td><td>{b.oldest_s}</td>"
                   f"<td>{b.expired}</td></tr>" for t, b in sorted(backlog.items()))
    return ("<h2>Hint backlog</h2><table><tr><th>for</th><th>partitions</th><th>writes</th>"
            "<th>bytes</th><th>oldest s</th><th>expired</th></tr>" + rows + "</table>")


def _partitions(health: RingHealth, colours: dict[str, str]) -> str:
    """Partitions by losses to quorum loss, the closest first (at most 32)."""
    worst = sorted(health.partitions, key=lambda p: (p.losses_to_quorum_loss, p.partition))[:32]
    rows = "".join(
        f"<tr data-partition='{p.partition}'><td>{p.partition}</td><td>"
        + " ".join(f"<span class='{'up' if ok else 'down'}'>{_e(n)}</span>"
                   for n, ok in zip(p.replicas, p.up, strict=True))
        + f"</td><td>{p.replicas_up}</td><td>{p.losses_to_quorum_loss}</td></tr>"
        for p in worst)
    return ("<h2>Partitions closest to quorum loss</h2><table><tr><th>partition</th>"
            "<th>primaries</th><th>up</th><th>losses to quorum loss</th></tr>" + rows
            + "</table>")
