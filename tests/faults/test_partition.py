"""A node cut off from the other two keeps taking writes, and after the heal
every acknowledged add from both sides is there (issue 7, done point 2).

On 3 nodes with N=3 the cut-off node is alone: its sloppy quorum is itself,
so it acknowledges W=1 writes (storing hints for the two primaries it
cannot reach) and refuses W=2 ones; the two-node majority keeps W=2. Both
sides add to the same keys, so the heal has concurrent versions to merge.
The availability of each side before and after the cut is detected is
printed (and written down in docs/testing.md).

The W=1 clients of the cut-off node keep going across the heal: at R=1 a
read may then come back from a replica that lacks the node's own last
write, and the VSET that follows must not drop that write (it did before
dotted version vectors: 59 and 435 acknowledged adds lost in two runs).
Two writer threads per node share every key: before context writes of one
key through one coordinator went one at a time, that lost 1 add in 13,488
(test_regressions.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.cluster import wait_for
from tests.faults.checker import availability
from tests.faults.harness import settle, verify
from tests.faults.history import History
from tests.faults.nemesis import Nemesis, cut_unavailable
from tests.faults.workload import SetAdds, spread

pytestmark = pytest.mark.integration

MINORITY = 2


def test_cut_off_node_keeps_taking_writes_and_both_sides_survive_the_heal(
        shared: Nemesis, tmp_path: Path) -> None:
    if not shared.can_cut:
        pytest.skip(cut_unavailable() or "nodes share one address")
    cluster = shared.cluster
    settle(cluster, shared)
    history = History()
    shared.history = history
    tag = f"minority-{os.getpid()}-{time.monotonic_ns()}"
    keys = [f"{tag}:{i}" for i in range(30)]
    w2_keys = [f"{tag}:w2:{i}" for i in range(10)]
    majority = SetAdds(cluster, history, spread([0, 1], 2, keys), seed=1)
    minority = SetAdds(cluster, history, spread([MINORITY], 2, keys, 100),
                       seed=2, r=1, w=1)
    minority_w2 = SetAdds(cluster, history, spread([MINORITY], 1, w2_keys, 200), seed=3)
    others = [i for i in range(3) if i != MINORITY]
    try:
        with majority, minority, minority_w2:
            time.sleep(0.5)  # load before the cut (schedule timing)
            cut_at = history.now()
            shared.cut(MINORITY)
            cluster.wait_seen(MINORITY, "down", 30)
            wait_for("the cut-off node sees the others down",
                     lambda: all(cluster.state_seen(MINORITY, j) == "down" for j in others), 30)
            detected_at = history.now()
            time.sleep(3.0)  # both sides under load, each seeing the other down
            healed_at = history.now()
            shared.uncut()
            time.sleep(2.0)  # load on both sides across the heal
        settle(cluster, shared)
        verdict = verify(cluster, history, [*keys, *w2_keys])
    finally:
        history.dump(tmp_path / "history.jsonl")
        shared.history = None
    ops = history.ops
    windows = {"cut, not yet detected": (cut_at, detected_at),
               "cut, detected": (detected_at, healed_at)}
    groups = {"majority n1+n2 (W=2)": range(0, 100), "minority n3 (W=1)": range(100, 200),
              "minority n3 (W=2)": range(200, 300)}
    table = {(g, w): availability(ops, "add", processes=procs, since=span[0], until=span[1])
             for g, procs in groups.items() for w, span in windows.items()}
    for (g, w), (ok, n) in table.items():
        print(f"availability {g}, {w} ({windows[w][1] - windows[w][0]:.1f}s): {ok}/{n} adds ok")
    print(verdict.summary())
    refused = [f"{op.node}: {op.error}" for op in ops
               if op.f == "add" and op.type in ("fail", "info") and op.process < 200
               and cut_at <= op.time < healed_at]
    if refused:
        print(f"{len(refused)} adds refused on n1/n2 or n3 at W=1, e.g. {refused[:3]}")
    # Whole availability is expected; a little slack because a loaded 2-core
    # machine has been seen to make n2 call n1 down for a moment (phi).
    ok, n = table[("minority n3 (W=1)", "cut, detected")]
    assert n > 0 and ok >= 0.95 * n, f"the cut-off node refused W=1 adds: {ok}/{n}, {refused[:5]}"
    ok, n = table[("majority n1+n2 (W=2)", "cut, detected")]
    assert n > 0 and ok >= 0.9 * n, f"the majority refused W=2 adds: {ok}/{n}, {refused[:5]}"
    ok, n = table[("minority n3 (W=2)", "cut, detected")]
    assert n > 0 and ok == 0, f"the cut-off node alone acknowledged {ok} W=2 adds"
    acked_minority = sum(op.type == "ok" and op.process in range(100, 200) for op in ops)
    assert acked_minority, "no acknowledged add from the cut-off side to check"
    assert verdict.valid, verdict.problems()
