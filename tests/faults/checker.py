"""Checkers over a history and a final read (pure: no processes, no sockets).

set-full (Jepsen's name): every add acknowledged before the final read must
be in it; an indeterminate add may or may not be; a definitely failed add
must not be; and no element may appear that was never attempted, or that
appears under another key than its own.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

from tests.faults.history import Op


@dataclass
class SetFull:
    attempted: int = 0
    acked: int = 0
    failed: int = 0
    indeterminate: int = 0
    info_present: int = 0
    lost: list[tuple[str, str]] = field(default_factory=list)  # acked, absent
    phantom: list[tuple[str, str]] = field(default_factory=list)  # never attempted
    failed_present: list[tuple[str, str]] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not (self.lost or self.phantom or self.failed_present)

    def summary(self) -> str:
        return (f"{self.attempted} adds: {self.acked} ok, {self.failed} failed, "
                f"{self.indeterminate} indeterminate ({self.info_present} of them present); "
                f"lost {len(self.lost)}, phantom {len(self.phantom)}, "
                f"failed-but-present {len(self.failed_present)}")

    def problems(self, limit: int = 10) -> str:
        parts = []
        for name, items in (("lost (acked, absent)", self.lost),
                            ("phantom (never attempted)", self.phantom),
                            ("failed but present", self.failed_present)):
            if items:
                parts.append(f"{name}: {items[:limit]}")
        return "; ".join(parts)


def set_full(ops: Iterable[Op], final: Mapping[str, set[str]]) -> SetFull:
    """``ops``: a history's ``add`` operations; ``final``: key -> elements."""
    outcome: dict[str, tuple[str, str]] = {}  # element -> (key, ok|fail|info)
    for op in ops:
        if op.f != "add" or op.value is None:
            continue
        if op.type == "invoke":
            outcome.setdefault(op.value, (op.key, "pending"))
        else:
            outcome[op.value] = (op.key, op.type)
    result = SetFull(attempted=len(outcome))
    present = {(key, e) for key, elements in final.items() for e in elements}
    for element, (key, kind) in sorted(outcome.items()):
        here = (key, element) in present
        if kind == "ok":
            result.acked += 1
            if not here:
                result.lost.append((key, element))
        elif kind == "fail":
            result.failed += 1
            if here:
                result.failed_present.append((key, element))
        else:  # info, or still pending when the history ended
            result.indeterminate += 1
            result.info_present += here
    for key, element in sorted(present):
        if outcome.get(element, ("", ""))[0] != key:
            result.phantom.append((key, element))
    return result


def availability(ops: Iterable[Op], f: str, *, nodes: Container[str] | None = None,
                 processes: Container[int] | None = None, since: float = 0.0,
                 until: float = math.inf) -> tuple[int, int]:
    """(acknowledged, completed) ``f`` operations, optionally only those
    through ``nodes``, of ``processes``, completed in [since, until)."""
    ok = total = 0
    for op in ops:
        if (op.f == f and op.type != "invoke" and since <= op.time < until
                and (nodes is None or op.node in nodes)
                and (processes is None or op.process in processes)):
            total += 1
            ok += op.type == "ok"
    return ok, total
