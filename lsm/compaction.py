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


def manual_tasks_for_level(
    version: LsmVersion, level: int, start: bytes | None, end: bytes | None
) -> CompactionTask | None:
    """For ``compact_range``: every file of ``level`` overlapping the range,
    merged into ``level + 1``. Level 0 always goes whole: a level-0 file left
    behind could hold an older version of a key whose newer one moved down."""
    if level == 0:
        inputs = version.levels[0]
    else:
        inputs = tuple(version.overlapping(level, start, end))
    if not inputs:
        return None
    return _task(version, level, inputs, f"manual compaction of level {level}")


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


def bottom_rewrite_task(
    version: LsmVersion, start: bytes | None, end: bytes | None
) -> CompactionTask | None:
    """For ``compact_range(..., bottommost=True)``: the files of the deepest
    non-empty level (>= 1) overlapping the range, rewritten in place."""
    level = version.last_nonempty_level()
    if level < 1:
        return None
    inputs = tuple(version.overlapping(level, start, end))
    if not inputs:
        return None
    return CompactionTask(
        level=level, inputs=inputs, next_inputs=(), bottommost=True,
        reason=f"bottom-level rewrite of level {level}", in_place=True,
    )
