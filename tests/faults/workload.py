"""Client workloads that run while faults are injected, recording a history.

* :class:`SetAdds` - unique-element adds to sets spread over many keys, as a
  read-modify-write with contexts: ``VGET key`` returns ``[context,
  sibling...]``; the client unions the siblings (each a newline-separated set
  of elements), adds its element and ``VSET``s the union with that context.
  Concurrent adds become siblings that the next reader unions, so no add is
  lost as long as the store keeps every concurrent write.
* :class:`Registers` - plain last-writer-wins ``SET`` of unique values, one
  writer per key, each write read back through another node: counts stale
  reads at the given R/W.

Every client thread talks to one node (Jepsen's clients are bound to a node
as well). Set-add threads share their keys, so one key sees concurrent adds
through one coordinator as well as through several.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.cluster import Cluster
from tests.faults.history import History, Op, Outcome, classify

#: Pause after an error before a thread's next op, so a thread bound to a
#: dead node does not spin on refused connections (client pacing, not a wait).
ERROR_PAUSE_S = 0.05


def client(cluster: Cluster, i: int, timeout_s: float = 3.0) -> redis.Redis:
    """A redis-py client that never retries on its own: a retried write could
    be sent twice and a timeout could be reported as a failed connect."""
    return cluster.client(i, socket_timeout=timeout_s, socket_connect_timeout=1.0,
                          retry=Retry(NoBackoff(), 0))


def cmd(r: redis.Redis, *args: Any) -> Any:
    return r.execute_command(*args)  # type: ignore[no-untyped-call]


def levels(r: int | None = None, w: int | None = None) -> tuple[list[Any], list[Any]]:
    """Consistency options for reads and writes (None: the node's default)."""
    return ([] if r is None else ["R", r]), ([] if w is None else ["W", w])


def decode_set(value: bytes) -> set[str]:
    return {e for e in value.decode().split("\n") if e}


def encode_set(elements: set[str]) -> bytes:
    return "\n".join(sorted(elements)).encode()


def union_of(siblings: Sequence[bytes]) -> set[str]:
    out: set[str] = set()
    for value in siblings:
        out |= decode_set(value)
    return out


@dataclass
class Thread:
    process: int
    node: int
    keys: list[str]


@dataclass
class Workload:
    """Threads started by :meth:`start`, stopped and joined by :meth:`stop`."""

    cluster: Cluster
    history: History
    threads: list[Thread]
    seed: int = 0
    r: int | None = None
    w: int | None = None
    timeout_s: float = 3.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _running: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def start(self) -> None:
        for t in self.threads:
            th = threading.Thread(target=self._guarded, args=(t,), daemon=True,
                                  name=f"{type(self).__name__}-{t.process}")
            self._running.append(th)
            th.start()

    def stop(self) -> None:
        self._stop.set()
        for th in self._running:
            # An op is bounded by the client's socket timeout.
            th.join(self.timeout_s * 3 + 5)
            if th.is_alive():
                raise AssertionError(f"workload thread {th.name} did not stop")
        self._running.clear()
        if self.errors:
            raise AssertionError(f"workload thread crashed: {self.errors[0]!r}")

    def __enter__(self) -> Workload:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _guarded(self, t: Thread) -> None:
        try:
            self.run_thread(t, random.Random(self.seed * 1000 + t.process))
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    def run_thread(self, t: Thread, rng: random.Random) -> None:
        raise NotImplementedError

    def _failed(self, op: Op, outcome: Outcome, error: str) -> None:
        """End ``op`` as ``fail`` or ``info``, then back off a little."""
        self.history.complete(op, outcome, error=error)
        self._stop.wait(ERROR_PAUSE_S)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


def spread(nodes: Sequence[int], per_node: int, keys: Sequence[str],
           first_process: int = 0, split: bool = False) -> list[Thread]:
    """``per_node`` threads on each node, every one over all ``keys``, or
    with ``split`` over its share of them (one writer per key per node)."""
    out = []
    for j, node in enumerate(nodes):
        for t in range(per_node):
            mine = [k for n, k in enumerate(keys) if not split or n % per_node == t]
            out.append(Thread(first_process + j * per_node + t, node, mine))
    return out


class SetAdds(Workload):
    def run_thread(self, t: Thread, rng: random.Random) -> None:
        r = client(self.cluster, t.node, self.timeout_s)
        node = self.cluster.members[t.node].name
        read_opts, write_opts = levels(self.r, self.w)
        seq = 0
        try:
            while not self.stopping:
                seq += 1
                key = rng.choice(t.keys)
                element = f"{t.process}.{seq}"
                op = self.history.invoke(t.process, "add", key, element, node)
                try:
                    context, *siblings = cmd(r, "VGET", key, *read_opts)
                except redis.RedisError as exc:
                    # Nothing was written: the add ends before its VSET.
                    self._failed(op, "fail", f"VGET: {exc}")
                    continue
                value = encode_set(union_of(siblings) | {element})
                try:
                    cmd(r, "VSET", key, context, value, *write_opts)
                except redis.RedisError as exc:
                    self._failed(op, classify(exc), str(exc))
                    continue
                self.history.complete(op, "ok")
        finally:
            r.close()


@dataclass
class StaleCount:
    reads: int = 0
    stale: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, stale: bool) -> None:
        with self.lock:
            self.reads += 1
            self.stale += stale


class Registers(Workload):
    """Sole writer per key: SET through one node, then GET through another;
    a read that does not return the acknowledged value is stale."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.count = StaleCount()

    def run_thread(self, t: Thread, rng: random.Random) -> None:
        nodes = list(range(len(self.cluster.members)))  # writes and reads go anywhere
        clients = {i: client(self.cluster, i, self.timeout_s) for i in nodes}
        read_opts, write_opts = levels(self.r, self.w)
        seq = 0
        try:
            while not self.stopping:
                seq += 1
                key = rng.choice(t.keys)
                value = f"{t.process}.{seq}"
                writer = rng.choice(nodes)
                op = self.history.invoke(t.process, "set", key, value,
                                         self.cluster.members[writer].name)
                try:
                    cmd(clients[writer], "SET", key, value, *write_opts)
                except redis.RedisError as exc:
                    self._failed(op, classify(exc), str(exc))
                    continue
                self.history.complete(op, "ok")
                reader = rng.choice([i for i in nodes if i != writer])
                op = self.history.invoke(t.process, "read", key, None,
                                         self.cluster.members[reader].name)
                try:
                    got = cmd(clients[reader], "GET", key, *read_opts)
                except redis.RedisError as exc:
                    self._failed(op, "fail", str(exc))
                    continue
                seen = None if got is None else got.decode()
                self.history.complete(op, "ok", value=seen or "")
                self.count.add(seen != value)
        finally:
            for c in clients.values():
                c.close()
