"""The records the repair parts report through the admin API: what an
anti-entropy run did (``RepairReport``) and the hints held for a target
(``HintBacklog``). Apart from the parts that fill them, so that the admin
API and the CLI read them without importing anti-entropy and handoff."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Error messages a RepairReport keeps (the count goes on past it).
MAX_ERRORS = 20


@dataclass
class RepairReport:
    partitions: int = 0
    pairs: int = 0
    keys_compared: int = 0  # keys in differing leaf buckets, summed over pairs
    keys_repaired: int = 0  # keys at least one replica of a pair was written for
    bytes_sent: int = 0  # keys and sibling sets pushed to replicas
    errors: list[str] = field(default_factory=list)  # at most MAX_ERRORS
    error_count: int = 0
    pairs_skipped: int = 0  # the peer was down
    buckets_differing: int = 0
    keys_differing: int = 0  # digest differs or missing on one side
    corrupt_fixed: int = 0  # rotten copies replaced after a vote
    bytes_exchanged: int = 0  # tree nodes and bucket digests received
    seconds: float = 0.0

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def add(self, other: RepairReport) -> None:
        for f in dataclasses.fields(self):
            if f.name == "errors":  # the latest are the ones worth showing
                self.errors = (self.errors + other.errors)[-MAX_ERRORS:]
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.seconds = round(self.seconds, 3)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class HintBacklog:
    """Hints held for one target: partitions (and how many of them
    expired), hinted writes and bytes, and the oldest hint's age."""

    partitions: int = 0
    expired: int = 0
    writes: int = 0
    bytes: int = 0
    oldest_s: int = 0
