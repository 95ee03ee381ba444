"""A Jepsen-style history of client operations.

Every operation a workload thread performs is recorded twice: an ``invoke``
entry when it starts and a completion when it ends, one of

* ``ok``   - the cluster acknowledged it;
* ``fail`` - it definitely did not take effect (nothing was sent to any
  replica: ``NOQUORUM ... nothing sent``, or the client could not connect);
* ``info`` - indeterminate: a timeout, a lost connection, ``NOQUORUM ...
  got k`` or ``READONLY`` after the write went out. It may or may not have
  taken effect, and checkers must accept both.

Times are seconds since the history began (monotonic clock), so a history
can be dumped as JSON lines next to the cluster's logs and read side by
side with them.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import redis

OpType = Literal["invoke", "ok", "fail", "info"]
Outcome = Literal["ok", "fail", "info"]


@dataclass(frozen=True, slots=True)
class Op:
    process: int  # the client thread
    type: OpType
    f: str  # "add", "set", "read"
    key: str
    value: str | None
    node: str  # the coordinator the client talked to
    time: float
    error: str | None = None


def classify(exc: BaseException) -> Outcome:
    """``fail`` only when the error proves nothing was written, else ``info``.

    Calling an indeterminate error a failure would make a checker flag a
    write that did land as a phantom, so anything unclear is ``info``.
    """
    text = str(exc)
    if isinstance(exc, redis.ResponseError):
        if text.startswith("NOQUORUM") and "nothing sent" in text:
            return "fail"
        if text.startswith("UNAVAILABLE the ring is not formed"):
            return "fail"
        return "info"
    if isinstance(exc, redis.ConnectionError) and not isinstance(exc, redis.TimeoutError):
        # redis-py words a failed connect "Error N connecting to host:port";
        # a request is only sent over an established connection.
        return "fail" if "connecting to" in text else "info"
    return "info"


class History:
    """Thread-safe append-only list of :class:`Op`."""

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def invoke(self, process: int, f: str, key: str, value: str | None, node: str) -> Op:
        op = Op(process, "invoke", f, key, value, node, self.now())
        with self._lock:
            self._ops.append(op)
        return op

    def complete(self, invoked: Op, outcome: Outcome, value: str | None = None,
                 error: str | None = None) -> Op:
        op = Op(invoked.process, outcome, invoked.f, invoked.key,
                invoked.value if value is None else value, invoked.node, self.now(), error)
        with self._lock:
            self._ops.append(op)
        return op

    def note(self, what: str) -> None:
        """A nemesis event (fault injected or healed), kept in the same timeline."""
        with self._lock:
            self._ops.append(Op(-1, "info", "nemesis", "", what, "", self.now()))

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def completions(self, f: str) -> list[Op]:
        return [op for op in self.ops if op.f == f and op.type != "invoke"]

    def counts(self, f: str) -> dict[str, int]:
        out = {"ok": 0, "fail": 0, "info": 0}
        for op in self.completions(f):
            out[op.type] += 1
        return out

    def dump(self, path: Path) -> None:
        with path.open("w") as out:
            for op in self.ops:
                out.write(json.dumps(asdict(op)) + "\n")
