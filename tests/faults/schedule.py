"""Fault schedules: what to break, when, for how long; one node at a time.

A schedule is a seed (for the workload) and a few steps, each "run the
load for ``after_s``, inject ``fault`` on ``node``, hold it ``hold_s``,
undo it". Its text form is the reproduction handle printed on failure::

    seed=1234 kill:n2@0.5+1.2 pause:n3@0.3+2.0 tail=1.0

(``fault:node@after+hold``). Replaying a text runs the same faults at the
same offsets against a fresh history; the interleaving of client requests
with them is the OS's, so a replay reproduces the situation, not every
byte of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import strategies as st

from tests.faults.nemesis import Nemesis

#: kill: kill -9 of the node, restarted after hold; restart: SIGTERM and start
#: after hold; pause: SIGSTOP for hold; cut: cut off from the other nodes for
#: hold; kill_worker: kill -9 of one shard worker (the node restarts it).
FAULTS = ("kill", "restart", "pause", "cut", "kill_worker")
_STEP = re.compile(r"(\w+):n(\d+)@(\d+(?:\.\d+)?)\+(\d+(?:\.\d+)?)$")


@dataclass(frozen=True, slots=True)
class Step:
    fault: str
    node: int  # index into the cluster's members
    after_s: float
    hold_s: float

    def text(self) -> str:
        return f"{self.fault}:n{self.node + 1}@{self.after_s:g}+{self.hold_s:g}"


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    steps: tuple[Step, ...]
    tail_s: float = 1.0

    def text(self) -> str:
        return " ".join([f"seed={self.seed}", *(s.text() for s in self.steps),
                         f"tail={self.tail_s:g}"])

    @property
    def faults(self) -> set[str]:
        return {s.fault for s in self.steps}

    @classmethod
    def parse(cls, text: str, nodes: int = 3) -> Schedule:
        seed: int | None = None
        tail = 1.0
        steps = []
        for word in text.split():
            if word.startswith("seed="):
                seed = int(word[5:])
            elif word.startswith("tail="):
                tail = float(word[5:])
            elif (m := _STEP.match(word)) is not None:
                fault, node = m.group(1), int(m.group(2)) - 1
                if fault not in FAULTS or not 0 <= node < nodes:
                    raise ValueError(f"bad step {word!r}: faults are {FAULTS}, nodes n1..n{nodes}")
                steps.append(Step(fault, node, float(m.group(3)), float(m.group(4))))
            else:
                raise ValueError(f"cannot parse {word!r} in schedule {text!r}")
        if seed is None:
            raise ValueError(f"schedule {text!r} has no seed=")
        return cls(seed, tuple(steps), tail)


def _tenths(lo: float, hi: float) -> st.SearchStrategy[float]:
    # Tenths of a second, so the text form is exact.
    return st.integers(round(lo * 10), round(hi * 10)).map(lambda t: t / 10)


def schedules(nodes: int = 3, max_steps: int = 3, max_after_s: float = 1.5,
              max_hold_s: float = 2.5, faults: tuple[str, ...] = FAULTS
              ) -> st.SearchStrategy[Schedule]:
    step = st.builds(Step, st.sampled_from(faults), st.integers(0, nodes - 1),
                     _tenths(0.2, max_after_s), _tenths(0.3, max_hold_s))
    return st.builds(Schedule, st.integers(0, 2**32 - 1),
                     st.lists(step, min_size=1, max_size=max_steps).map(tuple),
                     _tenths(0.5, 1.5))


def run_steps(schedule: Schedule, nemesis: Nemesis, sleep: Callable[[float], None],
              settle_timeout: float = 60.0) -> None:
    """Inject and undo each step in turn while the caller's load runs. The
    sleeps are the schedule's own timing, not waits for a condition."""
    c = nemesis.cluster
    for step in schedule.steps:
        sleep(step.after_s)
        i = step.node
        if step.fault == "kill":
            nemesis.kill(i)
            sleep(step.hold_s)
            nemesis.start(i, settle_timeout)
        elif step.fault == "restart":
            nemesis.stop(i)
            sleep(step.hold_s)
            nemesis.start(i, settle_timeout)
        elif step.fault == "pause":
            nemesis.pause(i)
            sleep(step.hold_s)
            nemesis.resume(i)
        elif step.fault == "cut":
            nemesis.cut(i)
            sleep(step.hold_s)
            nemesis.uncut()
        elif step.fault == "kill_worker":
            nemesis.kill_worker(i, schedule.seed + step.node)
            sleep(step.hold_s)
        else:
            raise ValueError(f"unknown fault {step.fault!r}")
        # One node at a time: the next fault starts once the cluster sees
        # this node back.
        c.wait_seen(i, "up", settle_timeout)
    sleep(schedule.tail_s)
