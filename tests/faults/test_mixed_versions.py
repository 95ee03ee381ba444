"""A mixed-version cluster (issue 17.1): n3 is held at peer protocol 3
(``[cluster] max_peer_protocol = 3``), n1 and n2 speak the newest (5: their
replica traffic to each other goes straight to the workers). The two talk
it to each other and 3 to n3 (their gossip to it has no protocol-4 fields,
their replica traffic to it takes its relay),
every node shows every node's version, and the cluster serves reads and
writes with every fault-schedule property holding: one schedule of each
required fault (kill -9, graceful restart, pause, cut), n3 killed and
restarted in it, then more drawn by hypothesis; zero acknowledged adds
lost, no phantoms, replicas identical."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as seed_of

from coordinator.cluster.peer_versions import PEER_PROTOCOL_MAX
from tests.cluster import wait_for
from tests.faults.conftest import SETTINGS
from tests.faults.nemesis import Nemesis, fault_cluster
from tests.faults.runner import Outcome
from tests.faults.schedule import Schedule, Step, schedules
from tests.faults.test_schedules import REQUIRED, _faults, check

pytestmark = pytest.mark.integration

OLD = 2  # n3
DRAWN = 6
SEED = random.SystemRandom().randrange(2**32)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nemesis]:
    held: dict[int, dict[str, dict[str, int | str]]] = {
        OLD: {"cluster": {"max_peer_protocol": 3}}}
    with fault_cluster(Path(tmp_path_factory.mktemp("mixed")), node_settings=held,
                       settings=SETTINGS) as nemesis:
        yield nemesis


def versions_seen(nemesis: Nemesis, i: int) -> dict[str, tuple[str, str]]:
    info = nemesis.cluster.info(i, "cluster")
    out = {}
    for m in nemesis.cluster.members:
        entry = info[f"node_{m.name}"]
        out[m.name] = (str(entry["peer_protocol"]), str(entry["release"]))
    return out


def test_each_node_runs_and_shows_its_version(mixed: Nemesis) -> None:
    assert_versions(mixed)


def assert_versions(mixed: Nemesis) -> None:
    c = mixed.cluster
    new = PEER_PROTOCOL_MAX
    assert [c.info(i, "server")["peer_protocol"] for i in range(3)] == [new, new, 3]
    for i in range(3):
        # n3 cannot gossip its version; the others know it from their own
        # handshake with it, and n3 learns theirs only from those handshakes.
        wait_for(f"n{i + 1} knows every node's peer protocol",
                 lambda i=i: [v[0] for v in versions_seen(mixed, i).values()]
                 == [str(new), str(new), "3"],
                 15)
    c.client(OLD).set("written-via-n3", "x")
    assert c.client(0).get("written-via-n3") == b"x"
    c.client(0).set("written-via-n1", "y")
    assert c.client(OLD).get("written-via-n1") == b"y"


def test_fault_schedules_on_a_mixed_cluster(mixed: Nemesis, tmp_path: Path) -> None:
    outcomes: list[Outcome] = []
    kinds = sorted(REQUIRED & set(_faults()))
    # Each required fault once, on the old node; a kill -9 of it first.
    fixed = [Schedule(SEED + k, (Step(f, OLD, 0.3, 1.0),), 0.5) for k, f in enumerate(kinds)]
    for schedule in fixed:
        outcomes.append(check(mixed, schedule, tmp_path))

    @seed_of(SEED)
    @settings(max_examples=DRAWN, deadline=None, database=None,
              phases=(Phase.generate,), suppress_health_check=list(HealthCheck))
    @given(schedule=schedules(faults=_faults(), max_steps=3, max_after_s=0.8, max_hold_s=1.5))
    def drawn(schedule: Schedule) -> None:
        outcomes.append(check(mixed, schedule, tmp_path))

    drawn()
    acked = sum(o.verdict.checked.acked for o in outcomes)
    lost = sum(len(o.verdict.checked.lost) for o in outcomes)
    print(f"mixed versions (n3 at protocol 3), seed {SEED}: {len(outcomes)} schedules, "
          f"faults {sorted(set().union(*(o.schedule.faults for o in outcomes)))}, "
          f"{acked} acknowledged adds, {lost} lost", flush=True)
    assert acked > 0 and lost == 0
    assert_versions(mixed)  # still so after the faults
