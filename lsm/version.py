"""Versions of the engine: immutable snapshots of which SSTables make up
each level (LevelDB's Version; named ``LsmVersion`` here, apart from the
key-value ``Version`` of ``shardserver.protocol.versions``).

An :class:`LsmVersion` is never changed; applying a :class:`VersionEdit`
yields a new one. Readers grab the current version with a single attribute read and
keep using it while flushes and compactions install newer ones. The same
``apply`` replays the manifest on open, so recovery and the live engine share
one code path (mini-lsm's ``apply_compaction_result``).

Level 0 is ordered newest first and its files may overlap. Levels 1+ are
sorted by smallest key and never overlap.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lsm.errors import CorruptionError
from lsm.manifest import FileMeta, VersionEdit


@dataclass(frozen=True, slots=True)
class LsmVersion:
    levels: tuple[tuple[FileMeta, ...], ...]
    # Largest key of each file per level (levels 1+), for bisecting a lookup.
    _largest: tuple[tuple[bytes, ...], ...] = field(default=(), compare=False, repr=False)
    # Levels >= 1 that hold files, so point lookups skip empty levels.
    deep_levels: tuple[int, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def empty(cls, num_levels: int) -> LsmVersion:
        return cls.build([() for _ in range(num_levels)])

    @classmethod
    def build(cls, levels: Sequence[Iterable[FileMeta]]) -> LsmVersion:
        out: list[tuple[FileMeta, ...]] = []
        for n, files in enumerate(levels):
            if n == 0:
                # Newest first: a flush always carries higher sequence numbers.
                out.append(tuple(sorted(files, key=lambda f: (-f.largest_seq, -f.number))))
            else:
                out.append(tuple(sorted(files, key=lambda f: f.smallest)))
        largest = tuple(tuple(f.largest for f in files) for files in out)
        deep = tuple(n for n in range(1, len(out)) if out[n])
        return cls(tuple(out), largest, deep)

    def apply(self, edit: VersionEdit, source: str = "version edit") -> LsmVersion:
        levels = [dict((f.number, f) for f in files) for files in self.levels]
        for level, number in edit.deleted:
            if level >= len(levels) or number not in levels[level]:
                raise CorruptionError(
                    source, None, f"edit deletes file {number} which is not at level {level}"
                )
            del levels[level][number]
        for level, meta in edit.added:
            if level >= len(levels):
                raise CorruptionError(
                    source, None, f"edit adds file {meta.number} at level {level}"
                )
            levels[level][meta.number] = meta
        return LsmVersion.build([d.values() for d in levels])

    def check_levels(self, source: str) -> None:
        """Levels 1+ must not overlap (the inspection tool reports the same)."""
        for n, files in enumerate(self.levels[1:], start=1):
            for a, b in itertools.pairwise(files):
                if a.largest >= b.smallest:
                    raise CorruptionError(
                        source,
                        None,
                        f"level {n} files {a.number} and {b.number} overlap "
                        f"({a.largest!r} >= {b.smallest!r})",
                    )

    def file_numbers(self) -> set[int]:
        return {f.number for files in self.levels for f in files}

    def level_bytes(self, level: int) -> int:
        return sum(f.size for f in self.levels[level])

    def total_bytes(self) -> int:
        return sum(f.size for files in self.levels for f in files)

    def find_in_level(self, level: int, key: bytes) -> FileMeta | None:
        """The one file of level >= 1 whose range may hold ``key``."""
        files = self.levels[level]
        i = bisect.bisect_left(self._largest[level], key)
        if i < len(files) and files[i].smallest <= key:
            return files[i]
        return None

    def overlapping(
        self, level: int, smallest: bytes | None, largest: bytes | None
    ) -> list[FileMeta]:
        """Files of ``level`` whose key range meets [smallest, largest];
        ``None`` means unbounded."""
        return [
            f
            for f in self.levels[level]
            if (largest is None or f.smallest <= largest)
            and (smallest is None or f.largest >= smallest)
        ]

    def last_nonempty_level(self) -> int:
        for n in range(len(self.levels) - 1, -1, -1):
            if self.levels[n]:
                return n
        return -1
