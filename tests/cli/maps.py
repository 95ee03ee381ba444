"""Reading the partition map back out of ``ringkv status`` / ``ring`` text."""

from __future__ import annotations

import re
from collections.abc import Iterable


def map_rows(lines: Iterable[str]) -> dict[str, str]:
    """Each map row's characters (node, ``under-rep``, ``key``), joined across
    the blocks the map was wrapped into. A block starts at its ruler line
    and ends at a blank line; rows lose trailing blanks, so each is padded
    to its block's width."""
    out: dict[str, str] = {}
    block: dict[str, str] = {}
    label = 0

    def flush() -> None:
        width = max(map(len, block.values()), default=0)
        for name, cells in block.items():
            out[name] = out.get(name, "") + cells.ljust(width)
        block.clear()

    for line in [*lines, ""]:
        if ruler := re.match(r"partitions +", line):
            label = ruler.end()
        elif label and line:
            block[line[:label].strip()] = line[label:]
        elif label:
            flush()
            label = 0
    return out
