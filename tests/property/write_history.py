"""What a database may hold after a crash, given the writes made to it.

The engine promises (docs/engine.md, "Write path"):

* an acknowledged write survives a process kill;
* a power cut loses only a *suffix* of the writes: what is left is the state
  after some prefix of them, and that prefix includes every acknowledged
  write whose WAL record an fsync had covered (under ``fsync="always"``,
  every acknowledged write);
* a write that raised may or may not have happened, on its own: it neither
  takes other writes with it nor drags lost ones back.

:class:`WriteHistory` holds a *base* state (known durable: what the last
recovery found) and the writes made since, in order. ``possible(key, upto)``
is the set of values ``key`` may have after the first ``upto`` writes;
``explain_mismatch(state, lowest)`` says why ``state`` is none of the states
the first ``P`` writes can give for any ``P >= lowest``, or returns None when
some ``P`` fits. Pure: the state machine feeds it, the tests of this module
check that it rejects gaps, phantoms and lost acknowledgements.
"""

from __future__ import annotations

from dataclasses import dataclass

Value = bytes | None  # None: absent or deleted


@dataclass(frozen=True, slots=True)
class Write:
    ops: tuple[tuple[bytes, Value], ...]  # the final value per key of one write
    acked: bool
    # Where its WAL record ended (file, offset), for acknowledged writes whose
    # position is known: an fsync of that file past that offset makes it durable.
    wal: str | None = None
    end: int = 0


class WriteHistory:
    def __init__(self) -> None:
        self.base: dict[bytes, bytes] = {}
        self.writes: list[Write] = []

    def add(self, write: Write) -> None:
        self.writes.append(write)

    def keys(self) -> set[bytes]:
        found = set(self.base)
        for w in self.writes:
            found.update(key for key, _ in w.ops)
        return found

    def acked_count(self) -> int:
        """Length of the shortest prefix holding every acknowledged write."""
        last = 0
        for i, w in enumerate(self.writes):
            if w.acked:
                last = i + 1
        return last

    def durable_count(self, synced_upto: dict[str, int]) -> int:
        """Length of the shortest prefix holding every acknowledged write an
        fsync covered; ``synced_upto`` maps WAL path -> bytes ever synced."""
        last = 0
        for i, w in enumerate(self.writes):
            if w.acked and w.wal is not None and synced_upto.get(w.wal, 0) >= w.end:
                last = i + 1
        return last

    def possible(self, key: bytes, upto: int | None = None) -> frozenset[Value]:
        values: set[Value] = {self.base.get(key)}
        for w in self.writes[:upto]:
            for k, v in w.ops:
                if k == key:
                    values = {v} if w.acked else values | {v}
        return frozenset(values)

    def explain_mismatch(self, state: dict[bytes, bytes], lowest: int) -> str | None:
        """None if ``state`` is what the first P writes give for some P in
        [lowest, all]; otherwise what is wrong with the closest P."""
        keys = self.keys() | set(state)
        best: tuple[int, int, list[str]] | None = None
        for upto in range(lowest, len(self.writes) + 1):
            wrong = [
                f"{_short(key)}: found {_short(state.get(key))}, "
                f"possible {sorted(map(_short, poss))}"
                for key in sorted(keys)
                if state.get(key) not in (poss := self.possible(key, upto))
            ]
            if not wrong:
                return None
            if best is None or len(wrong) < len(best[2]):
                best = (upto, len(wrong), wrong)
        if best is None:
            return f"no prefix of {len(self.writes)} writes is at least {lowest} long"
        upto, count, wrong = best
        return (
            f"not the state after any prefix of {lowest}..{len(self.writes)} of "
            f"{len(self.writes)} writes; closest is {upto} with {count} keys wrong: "
            + "; ".join(wrong[:5])
        )

    def settle(self, state: dict[bytes, bytes]) -> None:
        """After a crash was checked: what recovery found is the new base."""
        self.base = dict(state)
        self.writes = []


def _short(value: Value) -> str:
    if value is None or len(value) <= 24:
        return repr(value)
    return f"{value[:16]!r}...({len(value)} bytes)"
