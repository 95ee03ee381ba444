"""Heal a cluster after faults and check it: hints drained, repair run,
every key read at R=all from every node, replicas compared one by one.

``settle`` brings every node back and waits (bounded) until each sees all
the others up and no node holds hints any more; ``repair`` asks every node
for an anti-entropy pass; ``verify`` does the reads and runs the set-full
checker.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.cluster import ring as ringmod
from coordinator.cluster.peer import peer_client
from shardserver.protocol import messages as m
from shardserver.protocol.errors import ShardUnavailable
from tests.cluster import SECRET, Cluster, local_read_many, ring_of, wait_for
from tests.faults.checker import SetFull, set_full
from tests.faults.history import History
from tests.faults.nemesis import Nemesis
from tests.faults.workload import client, union_of

HINTS_TIMEOUT_S = 90.0
REPAIR_TIMEOUT_S = 300.0


def hint_partitions(cluster: Cluster) -> dict[str, int]:
    return {node.name: int(cluster.info(i, "replication")["hint_partitions"])
            for i, node in enumerate(cluster.members) if node.running}


def settle(cluster: Cluster, nemesis: Nemesis, timeout: float = HINTS_TIMEOUT_S) -> None:
    """Undo every fault, then wait until every node sees every other up,
    every worker is ready and no node has hints left to hand off."""
    nemesis.heal(timeout)
    cluster.wait_all_up(timeout)
    for i, node in enumerate(cluster.members):
        try:
            wait_for(f"every worker of {node.name} ready (a killed one is restarted)",
                     functools.partial(_workers_ready, cluster, i), timeout)
        except TimeoutError as exc:  # CI keeps no node logs: say what the workers went through
            exc.add_note(f"{node.name}'s supervisor and workers, last:\n"
                         + _worker_lines(cluster, i))
            raise
    wait_for("hints drained on every node (INFO replication hint_partitions == 0)",
             lambda: not any(hint_partitions(cluster).values()), timeout)


def _workers_ready(cluster: Cluster, i: int) -> bool:
    storage = cluster.info(i, "storage")
    return int(storage["workers_ready"]) == int(storage["workers"])


def _worker_lines(cluster: Cluster, i: int, lines: int = 30) -> str:
    log = cluster.log_tail(i, 100_000).splitlines()
    return "\n".join([t for t in log if "ringkv.supervisor" in t or "ringkv.worker" in t][-lines:])


async def _admin(addr: str, payload: dict[str, Any]) -> m.Reply:
    async with peer_client(addr, "fault-harness", SECRET.encode(), timeout_s=10) as peer:
        return await peer.call(m.Admin(payload), timeout=REPAIR_TIMEOUT_S)


def repair(cluster: Cluster) -> str:
    """Run anti-entropy on every node now (what ``ringkv repair`` sends);
    returns the summary for the report."""
    compared = repaired = 0
    for node in cluster.members:
        addr = f"{node.host}:{node.peer_port}"
        try:
            reply = asyncio.run(_admin(addr, {"cmd": "repair"}))
        except ShardUnavailable as exc:
            raise AssertionError(f"repair on {node.name}: {exc.reason}") from None
        if not reply.ok:
            raise AssertionError(f"repair on {node.name}: {reply.status.name} {reply.message}")
        report = reply.payload if isinstance(reply.payload, dict) else {}
        if report.get("error_count"):
            raise AssertionError(f"repair on {node.name} had errors: {report.get('errors')}")
        compared += int(report.get("keys_compared", 0))
        repaired += int(report.get("keys_repaired", 0))
    return f"ran on every node, {compared} keys compared, {repaired} repaired"


def read_all(cluster: Cluster, i: int, keys: Sequence[str], command: str = "VGET",
             r: int = 3) -> dict[str, Any]:
    """Every key through node ``i`` at R=``r``, pipelined."""
    out: dict[str, Any] = {}
    c = client(cluster, i, timeout_s=30)
    try:
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            pipe = c.pipeline(transaction=False)
            for key in chunk:
                pipe.execute_command(command, key, "R", r)  # type: ignore[no-untyped-call]
            out.update(zip(chunk, pipe.execute(), strict=True))
    finally:
        c.close()
    return out


def replica_differences(cluster: Cluster, keys: Sequence[str]) -> list[str]:
    """Keys whose primaries do not store identical sibling sets."""
    ring = ring_of(cluster)
    names = [m.name for m in cluster.members]
    raw = [k.encode() for k in keys]
    held = [local_read_many(cluster, i, raw, ring.q) for i in range(len(names))]
    differ = []
    for key in raw:
        owners = [names.index(n) for n in ringmod.primaries(ring, ring.partition_of(key))]
        if len({held[i][key] for i in owners}) > 1:
            differ.append(key.decode())
    return differ


@dataclass
class Verdict:
    checked: SetFull
    repair: str
    divergent_before_reads: int
    divergent_after_reads: list[str] = field(default_factory=list)
    disagreeing_reads: list[str] = field(default_factory=list)
    registers: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return (self.checked.valid and not self.divergent_after_reads
                and not self.disagreeing_reads and not self.unrepaired)

    @property
    def unrepaired(self) -> int:
        """Replicas still differing after the repair (with the load off)."""
        return self.divergent_before_reads

    def summary(self) -> str:
        return (f"{self.checked.summary()}; replicas differing after hints+repair: "
                f"{self.divergent_before_reads}, after R=3 reads: "
                f"{len(self.divergent_after_reads)}; nodes disagreeing at R=3: "
                f"{len(self.disagreeing_reads)}; repair: {self.repair}")

    def problems(self) -> str:
        parts = [self.checked.problems()]
        if self.unrepaired:
            parts.append(f"{self.unrepaired} keys still differ between replicas after repair")
        if self.divergent_after_reads:
            parts.append(f"replicas differ for {self.divergent_after_reads[:10]}")
        if self.disagreeing_reads:
            parts.append(f"nodes answer R=3 differently for {self.disagreeing_reads[:10]}")
        return "; ".join(p for p in parts if p)


def verify(cluster: Cluster, history: History, set_keys: Sequence[str],
           register_keys: Sequence[str] = (), timeout: float = 30.0) -> Verdict:
    """After :func:`settle`: repair, compare replicas (identical now), read
    everything at R=3 from every node (every node must answer the same), run
    set-full on node 0's answers, and wait (bounded) until every replica is
    identical."""
    how = repair(cluster)
    keys = [*set_keys, *register_keys]
    before = len(replica_differences(cluster, keys))
    answers = [read_all(cluster, i, set_keys) for i in range(len(cluster.members))]
    plain = [read_all(cluster, i, register_keys, "GET") for i in range(len(cluster.members))]
    disagree = sorted({k for a in answers[1:] for k in set_keys if a[k] != answers[0][k]}
                      | {k for p in plain[1:] for k in register_keys if p[k] != plain[0][k]})
    final = {k: union_of(answers[0][k][1:]) for k in set_keys}
    checked = set_full(history.ops, final)
    try:
        wait_for("replicas identical after R=3 reads",
                 lambda: not replica_differences(cluster, keys), timeout, interval=0.5)
        after: list[str] = []
    except TimeoutError:
        after = replica_differences(cluster, keys)
    return Verdict(checked, how, before, after, disagree,
                   last_write_kept(history, plain[0]))


def last_write_kept(history: History, final: dict[str, Any]) -> dict[str, int]:
    """Plain SET keys whose final value is (or is not) their last acked write.
    One writer per key, sequential, so with equal clocks the last acked
    write must win; anything else is what last-writer-wins lost."""
    last: dict[str, str] = {}
    unsure: set[str] = set()  # an indeterminate write after the last ok may win
    for op in history.ops:
        if op.f == "set" and op.type == "ok" and op.value is not None:
            last[op.key] = op.value
            unsure.discard(op.key)
        elif op.f == "set" and op.type == "info":
            unsure.add(op.key)
    sure = {k: v for k, v in last.items() if k not in unsure}
    kept = sum(1 for k, v in sure.items() if final.get(k) == v.encode())
    return {"keys": len(sure), "last_write_kept": kept, "last_write_lost": len(sure) - kept}
