"""Pictures for a terminal: ``ringkv status`` and ``ringkv ring`` show each
node's share of the ring and a partition map, one character per partition
per node, wrapped at the terminal's width::

    partitions  0       8       16      24
    n1          P..rr..rP..r.P..r..rP...
    n2          rP...rP..rr..PrrP..r..P.
    n3          .rP.P..r.....rP.rrP..r..
    under-rep   ........................

The map reads the ring the node asked sends (``RingReply``: the owner of
each partition and the members' states as that node's failure detector sees
them) through the status page's model (``ops.health``: each partition's
primaries, in preference order, and which of them are up). Colour only when
stdout is a terminal; the characters alone carry the meaning.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Iterator, Sequence
from typing import Any

import click

from coordinator.cluster.ring import NodeId, NodeInfo, Ring
from coordinator.ops import admin_api as api
from coordinator.ops.health import PartitionHealth, RingHealth, ring_health

PRIMARY, REPLICA, NONE = "P", "r", "."
DOWN_PRIMARY, DOWN_REPLICA = "X", "x"
UNDER, KEY = "!", "^"
TICK = 8  # a partition number on the ruler every TICK partitions
LEGEND = (f"{PRIMARY} primary (first in the preference list), {REPLICA} replica, {NONE} none; "
          f"{DOWN_PRIMARY}/{DOWN_REPLICA} the same on a down node; "
          f"{UNDER} fewer than N replicas up")
_STYLES: dict[str, dict[str, Any]] = {
    PRIMARY: {"fg": "green", "bold": True}, REPLICA: {"fg": "green"}, NONE: {"dim": True},
    DOWN_PRIMARY: {"fg": "red", "bold": True}, DOWN_REPLICA: {"fg": "red"},
    UNDER: {"fg": "red", "bold": True}, KEY: {"fg": "yellow", "bold": True}}


def ring_of(reply: api.RingReply) -> Ring:
    """The ring the reply describes; RingError if it does not hold together."""
    return Ring(epoch=reply.epoch, q=reply.q, n=reply.n,
                owners=tuple(NodeId(o) for o in reply.owners),
                nodes=tuple(NodeInfo(NodeId(m.node), m.zone) for m in reply.nodes))


def health_of(reply: api.RingReply) -> RingHealth:
    """Each partition's primaries and which are up, as the node asked sees them."""
    up = {m.node: m.state == "up" for m in reply.nodes}
    # W and R are each node's own settings, which the reply does not carry:
    # the map shows replicas up, never losses to quorum loss.
    return ring_health(ring_of(reply), lambda n: up.get(n, False), 1, 1)


def share(count: int, q: int) -> str:
    """``count`` partitions of ``q`` as a percentage of the ring."""
    return f"{100 * count / q:.1f}%" if q else "-"


def terminal_width() -> int:
    """Columns of the terminal (``COLUMNS`` when set), 80 when unknown."""
    return shutil.get_terminal_size((80, 24)).columns


def colour_wanted() -> bool:
    return sys.stdout.isatty()


def cell(p: PartitionHealth, node: str) -> str:
    """``node``'s character for partition ``p``."""
    if node not in p.replicas:
        return NONE
    i = p.replicas.index(node)
    if p.up[i]:
        return PRIMARY if i == 0 else REPLICA
    return DOWN_PRIMARY if i == 0 else DOWN_REPLICA


def partition_map(health: RingHealth, nodes: Sequence[str], *, width: int, colour: bool,
                  key_partition: int | None = None) -> list[str]:
    """The map's lines: a legend, then blocks of a ruler and one row per
    node (and ``under-rep``, and ``key`` with ``key_partition``), each
    block as many partitions as fit in ``width`` columns."""
    rows = {n: "".join(cell(p, n) for p in health.partitions) for n in nodes}
    rows["under-rep"] = "".join(UNDER if p.replicas_up < health.n else NONE
                                for p in health.partitions)
    legend = LEGEND
    if key_partition is not None:
        rows["key"] = "".join(KEY if p.partition == key_partition else " "
                              for p in health.partitions)
        legend += f"; {KEY} the key's partition"
    label = max(len("partitions"), *map(len, rows)) + 1
    q = len(health.partitions)
    room = max(TICK, width - label)
    step = q if q <= room else room - room % TICK
    lines = textwrap.wrap(legend, max(width, 20))
    for start in range(0, q, step):
        end = min(q, start + step)
        lines += ["", f"{'partitions':<{label}}{_ruler(start, end)}".rstrip()]
        lines += [f"{name:<{label}}{_paint(row[start:end], colour)}".rstrip()
                  for name, row in rows.items()]
    return lines


def _ruler(start: int, end: int) -> str:
    """Partition numbers at their columns, every TICK partitions where they fit."""
    out = [" "] * (end - start)
    free = 0  # first column not yet written
    for p in range(start - start % TICK, end, TICK):
        col, text = p - start, str(p)
        if col >= free and col + len(text) <= len(out):
            out[col:col + len(text)] = text
            free = col + len(text) + 1
    return "".join(out)


def _paint(row: str, colour: bool) -> str:
    if not colour:
        return row
    return "".join(click.style(run, **_STYLES.get(run[0], {})) for run in _runs(row))


def _runs(row: str) -> Iterator[str]:
    """``row`` cut into runs of one character."""
    start = 0
    for i in range(1, len(row) + 1):
        if i == len(row) or row[i] != row[start]:
            yield row[start:i]
            start = i
