"""One fault schedule end to end: load on, faults, load off, heal, check.

The load is three workloads at once, each over its own keys:

* set adds (VGET/VSET) from two threads per node, at the cluster's R/W,
  every thread over every key: six writers per key, two through each node;
* plain SET registers at R=2/W=2 (R+W>N) and at R=1/W=1, two threads each,
  one writer per key, for the stale-read counts.

Used by the CI schedules, the replay of one schedule and the soak; also
importable from benchmarks/.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from tests.faults.harness import Verdict, settle, verify
from tests.faults.history import History
from tests.faults.nemesis import Nemesis
from tests.faults.schedule import Schedule, run_steps
from tests.faults.workload import Registers, SetAdds, spread

SET_KEYS = 60
REGISTER_KEYS = 20
_runs = itertools.count(1)


@dataclass
class Outcome:
    schedule: Schedule
    verdict: Verdict
    stale: dict[str, tuple[int, int]]  # "R2W2"/"R1W1" -> (reads, stale)
    seconds: float
    history: Path

    def line(self) -> str:
        stale = ", ".join(f"{k} stale {s}/{r}" for k, (r, s) in self.stale.items())
        return (f"[{self.seconds:.1f}s] {self.schedule.text()}: "
                f"{self.verdict.summary()}; {stale}")


def reproduce(schedule: Schedule) -> str:
    return (f"RINGKV_FAULT_SCHEDULE='{schedule.text()}' python -m pytest "
            "tests/faults/test_schedules.py::test_replay_schedule -p no:cacheprovider")


def run_schedule(nemesis: Nemesis, schedule: Schedule, out_dir: Path) -> Outcome:
    """Run ``schedule`` on the (healed) cluster with fresh keys; the history
    is dumped to ``out_dir`` whatever happens."""
    started = time.monotonic()
    cluster = nemesis.cluster
    settle(cluster, nemesis)  # whatever an earlier schedule left behind
    tag = f"s{schedule.seed}-{next(_runs)}"
    history = History()
    nemesis.history = history
    nodes = range(len(cluster.members))
    set_keys = [f"{tag}:set:{i}" for i in range(SET_KEYS)]
    quorum_keys = [f"{tag}:q:{i}" for i in range(REGISTER_KEYS)]
    one_keys = [f"{tag}:one:{i}" for i in range(REGISTER_KEYS)]
    adds = SetAdds(cluster, history, spread(nodes, 2, set_keys),
                   seed=schedule.seed)
    quorum = Registers(cluster, history, spread([0], 2, quorum_keys, 100, split=True),
                       seed=schedule.seed, r=2, w=2)
    ones = Registers(cluster, history, spread([0], 2, one_keys, 200, split=True),
                     seed=schedule.seed, r=1, w=1)
    path = out_dir / f"history-{tag}.jsonl"
    try:
        with adds, quorum, ones:
            run_steps(schedule, nemesis, time.sleep)
        settle(cluster, nemesis)
        verdict = verify(cluster, history, set_keys, [*quorum_keys, *one_keys])
    finally:
        history.dump(path)
        nemesis.history = None
    stale = {"R2W2": (quorum.count.reads, quorum.count.stale),
             "R1W1": (ones.count.reads, ones.count.stale)}
    return Outcome(schedule, verdict, stale, time.monotonic() - started, path)
