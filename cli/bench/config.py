"""What a run is asked to do, and how it is split over generator processes."""

from __future__ import annotations

from dataclasses import dataclass

from cli.bench.conn import ServerAddr
from cli.bench.share import SharePlan
from cli.bench.workload import Workload


@dataclass(frozen=True, slots=True)
class BenchConfig:
    targets: tuple[ServerAddr, ...]
    rate: float  # requests/s over all connections; 0: closed loop, as fast as answered
    duration_s: float
    connections: int
    pipeline: int
    workload: Workload
    warmup_s: float = 1.0
    grace_s: float = 2.0
    seed: int = 1
    password: str | None = None
    processes: int = 1
    connect_timeout_s: float = 5.0
    preload: bool = False

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("no target to load")
        if self.rate < 0 or self.duration_s <= 0 or self.warmup_s < 0 or self.grace_s < 0:
            raise ValueError("rate, warmup and grace must be >= 0 and the duration > 0")
        if self.connections < 1 or self.pipeline < 1 or self.processes < 1:
            raise ValueError("connections, pipeline and processes must be >= 1")
        if self.processes > self.connections:
            raise ValueError(f"{self.processes} processes need at least as many connections "
                             f"(not {self.connections})")

    def plans(self) -> list[SharePlan]:
        """Connection c goes to target c mod targets and to process c mod
        processes; each process gets the rate in proportion to its
        connections, its schedule offset so the processes' batches
        interleave evenly."""
        out = []
        for i in range(self.processes):
            mine = range(i, self.connections, self.processes)
            out.append(SharePlan(
                index=i, processes=self.processes,
                targets=tuple(self.targets[c % len(self.targets)] for c in mine),
                rate=self.rate * len(mine) / self.connections, phase=i / self.processes,
                pipeline=self.pipeline, workload=self.workload, seed=self.seed,
                warmup_s=self.warmup_s, duration_s=self.duration_s, grace_s=self.grace_s,
                password=self.password, connect_timeout_s=self.connect_timeout_s,
                preload=self.preload))
        return out
