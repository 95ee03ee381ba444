"""Leveled compaction policy: pure functions over a :class:`LsmVersion`.

Nothing here does I/O; ``db`` executes the tasks these functions return, and
tests exercise the policy directly.

Scores (RocksDB's): level 0 scores ``files / l0_compaction_trigger``; level
n >= 1 scores ``bytes / target(n)`` with ``target(1) = level1_bytes`` and a
fan-out of ``level_fanout`` per level below. The highest score >= 1 is
compacted. A level-0 compaction takes every level-0 file (so whatever stays
in level 0 is always newer than level 1); a level-n compaction takes one file,
chosen round-robin after the level's compaction pointer, plus the files of
level n+1 it overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass

from lsm.manifest import FileMeta, VersionEdit
from lsm.options import Options
from lsm.version import LsmVersion


@dataclass(frozen=True, slots=True)
class CompactionTask:
    level: int  # input level; output goes to level + 1
    inputs: tuple[FileMeta, ...]  # files of ``level``, newest first for level 0
    next_inputs: tuple[FileMeta, ...]  # overlapping files of ``level + 1``
    bottommost: bool  # no deeper level holds any key of the range
    reason: str
    # Rewrite the files where they are (the bottom level), so that the
    # compaction filter and tombstone rules see data that has nowhere
    # further down to go (RocksDB's bottommost_level_compaction=kForce).
    in_place: bool = False

    @property
    def output_level(self) -> int:
        return self.level if self.in_place else self.level + 1

    @property
    def is_trivial_move(self) -> bool:
        """One file with nothing to merge against moves down by a manifest edit."""
        return (
            not self.in_place
            and self.level > 0
            and len(self.inputs) == 1
            and not self.next_inputs
        )

    def all_inputs(self) -> tuple[tuple[int, FileMeta], ...]:
        return tuple((self.level, f) for f in self.inputs) + tuple(
            (self.level + 1, f) for f in self.next_inputs
        )

    def input_bytes(self) -> int:
        return sum(f.size for _, f in self.all_inputs())


def level_target_bytes(options: Options, level: int) -> int:
    return int(options.level1_bytes * options.level_fanout ** max(0, level - 1))


def scores(version: LsmVersion, options: Options) -> list[float]:
    """Compaction score per level (the last level never compacts further)."""
    out = [len(version.levels[0]) / options.l0_compaction_trigger]
    for level in range(1, len(version.levels) - 1):
        out.append(version.level_bytes(level) / level_target_bytes(options, level))
    return out


def compaction_debt_bytes(version: LsmVersion, options: Options) -> int:
    """Bytes that must be rewritten before every level is within its target
    (an estimate, like RocksDB's estimated-pending-compaction-bytes)."""
    debt = 0
    if len(version.levels[0]) >= options.l0_compaction_trigger:
        debt += version.level_bytes(0) + version.level_bytes(1)
    for level in range(1, len(version.levels) - 1):
        excess = version.level_bytes(level) - level_target_bytes(options, level)
        if excess > 0:
            debt += excess * (options.level_fanout + 1)
    return debt


def _range(files: tuple[FileMeta, ...] | list[FileMeta]) -> tuple[bytes, bytes]:
    return min(f.smallest for f in files), max(f.largest for f in files)


def is_bottommost(version: LsmVersion, output_level: int, smallest: bytes, largest: bytes) -> bool:
    return all(
        not version.overlapping(level, smallest, largest)
        for level in range(output_level + 1, len(version.levels))
    )


def pick_compaction(
    version: LsmVersion, options: Options, pointers: dict[int, bytes] | None = None
) -> CompactionTask | None:
    """The most urgent compaction, or ``None`` when every level is in shape."""
    level_scores = scores(version, options)
    best = max(range(len(level_scores)), key=lambda n: level_scores[n])
    if level_scores[best] < 1.0:
        return None
    reason = f"level {best} score {level_scores[best]:.2f}"
    if best == 0:
        inputs = version.levels[0]
    else:
        inputs = (_next_after_pointer(version.levels[best], (pointers or {}).get(best)),)
    return _task(version, best, inputs, reason)


def _next_after_pointer(files: tuple[FileMeta, ...], pointer: bytes | None) -> FileMeta:
    if pointer is not None:
        for f in files:
            if f.smallest > pointer:
                return f
    return files[0]


def _task(
    version: LsmVersion, level: int, inputs: tuple[FileMeta, ...], reason: str
) -> CompactionTask:
    smallest, largest = _range(inputs)
    next_inputs = tuple(version.overlapping(level + 1, smallest, largest))
    if next_inputs:
        smallest, largest = _range(inputs + next_inputs)
    return CompactionTask(
        level=level,
        inputs=tuple(inputs),
        next_inputs=next_inputs,
        bottommost=is_bottommost(version, level + 1, smallest, largest),
        reason=reason,
    )


def manual_step(
    version: LsmVersion, level: int, start: bytes | None, end: bytes | None,
    *, after: bytes | None, max_bytes: int,
) -> CompactionTask | None:
    """One bounded step of ``compact_range`` at ``level``, or ``None`` when
    the level is done. Level 0 goes whole: a level-0 file left behind could
    hold an older version of a key whose newer one moved down. Level n >= 1
    takes its files overlapping [start, end] that reach past ``after`` (the
    largest key the previous step took), in key order, as many as fit in
    ``max_bytes`` together with the level-(n+1) files they overlap (at least
    one), and merges them into level n + 1."""
    if level == 0:
        inputs = version.levels[0]
        return _task(version, 0, inputs, "manual compaction of level 0") if inputs else None
    ahead = _ahead(version.overlapping(level, start, end), after)
    if not ahead:
        return None
    taken = [ahead[0]]
    for f in ahead[1:]:
        grown = [*taken, f]
        _, largest = _range(grown)
        below = version.overlapping(level + 1, grown[0].smallest, largest)
        if sum(g.size for g in grown) + sum(b.size for b in below) > max_bytes:
            break
        taken = grown
    return _task(version, level, tuple(taken), f"manual compaction of level {level}")


def bottom_step(
    version: LsmVersion, start: bytes | None, end: bytes | None, *, after: bytes | None,
    max_bytes: int,
) -> CompactionTask | None:
    """One bounded step of ``compact_range(..., bottommost=True)``'s rewrite
    of the deepest non-empty level (>= 1) in place: its files overlapping
    the range that reach past ``after``, in key order, up to ``max_bytes``
    (at least one). Their outputs end at or before the largest key taken,
    so the next step, after that key, never takes them again."""
    level = version.last_nonempty_level()
    if level < 1:
        return None
    ahead = _ahead(version.overlapping(level, start, end), after)
    if not ahead:
        return None
    taken = [ahead[0]]
    for f in ahead[1:]:
        if sum(g.size for g in taken) + f.size > max_bytes:
            break
        taken.append(f)
    return CompactionTask(
        level=level, inputs=tuple(taken), next_inputs=(), bottommost=True,
        reason=f"bottom-level rewrite of level {level}", in_place=True,
    )


def _ahead(files: list[FileMeta], after: bytes | None) -> list[FileMeta]:
    # A file straddling ``after`` (made meanwhile by a level-0 compaction)
    # still holds keys past it, so it is taken again.
    return sorted(
        (f for f in files if after is None or f.largest > after), key=lambda f: f.smallest
    )


def level0_task(version: LsmVersion, options: Options) -> CompactionTask | None:
    """Level 0 into level 1, if level 0 reached its compaction trigger."""
    inputs = version.levels[0]
    if len(inputs) < options.l0_compaction_trigger:
        return None
    return _task(version, 0, inputs, f"level 0 has {len(inputs)} files")


def result_edit(
    task: CompactionTask, outputs: list[FileMeta], last_seq: int | None = None
) -> VersionEdit:
    """The version edit that installs a finished compaction."""
    return VersionEdit(
        last_seq=last_seq,
        deleted=tuple((level, f.number) for level, f in task.all_inputs()),
        added=tuple((task.output_level, f) for f in outputs),
        compact_pointers=((task.level, max(f.largest for f in task.inputs)),)
        if task.level > 0
        else (),
    )


def trivial_move_edit(task: CompactionTask) -> VersionEdit:
    (f,) = task.inputs
    return VersionEdit(
        deleted=((task.level, f.number),),
        added=((task.output_level, f),),
        compact_pointers=((task.level, f.largest),),
    )
