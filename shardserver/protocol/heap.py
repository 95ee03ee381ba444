"""The garbage collector of a serving process (coordinator or shard worker).

A server's heap is mostly objects that live as long as the process:
modules, classes, functions, the ring, configs, caches. CPython's cyclic
collector walks every tracked object in a generation each time it collects
it, so with the default thresholds (700 allocations) the young generation
is collected every few requests and each full collection walks everything
start-up built. ``settle`` is called once the process serves: it moves
what exists then into the permanent generation (``gc.freeze``, never
walked again) and raises the young threshold so that a collection runs
every few hundred requests instead of every few. Reference counting frees
all acyclic garbage at once either way; only cycles wait for a collection.
"""

from __future__ import annotations

import gc

#: Allocations (minus deallocations) between young collections. 700 by
#: default; requests allocate tens of objects each.
YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Freeze what start-up built and space the young collections out."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
