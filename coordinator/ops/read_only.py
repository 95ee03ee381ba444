"""The operator's kill switch: a node in read-only mode (``ringkv readonly``).

While it is on, the node refuses every client write (the command table's
``write`` commands: SET, MSET, DEL, VSET, VDEL, FLUSHALL ...) with
``-READONLY writes are off on n1 (operator) ...`` and keeps serving reads.
Replica writes a peer coordinates, hinted handoff and anti-entropy still
reach its storage: the switch stops new writes at the edge of the cluster,
not the cluster's own repair of what it already acknowledged (so turning
it on everywhere leaves nothing half replicated).

The state survives restarts until turned off: it lives in the node's data
directory as ``read_only.msgpack`` (``{"v": 1, "on": bool, "reason": str,
"since_ms": int}``), replaced whole, durably, before the switch answers.
"""

from __future__ import annotations

import asyncio
import os
import time
import unicodedata
from dataclasses import dataclass

from coordinator import files

READ_ONLY_FILE = "read_only.msgpack"
MAX_REASON = 200


def reason_problem(reason: str) -> str | None:
    """Why ``reason`` cannot be the switch's reason, or None. It is shown in
    INFO's ``key:value`` lines and in the READONLY error line, so a line
    break or another control character would forge fields there."""
    if len(reason) > MAX_REASON:
        return f"the reason is at most {MAX_REASON} characters"
    bad = next((c for c in reason if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")),
               None)
    if bad is not None:
        return (f"the reason may not hold control characters or line breaks (found "
                f"{bad!r}): it is shown in INFO lines and in the READONLY error")
    return None


@dataclass(frozen=True, slots=True)
class ReadOnlyState:
    reason: str  # what the operator said, "" when nothing
    since_ms: int  # wall clock when it was turned on


class ReadOnlySwitch:
    """Owns the node's read-only mode and its file."""

    def __init__(self, node_id: str, data_dir: str) -> None:
        self.node_id = node_id
        self.path = os.path.join(data_dir, READ_ONLY_FILE)
        self.state: ReadOnlyState | None = None
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the file (at open; a missing file means off)."""
        doc = files.read_doc(self.path)
        if doc is None or not doc.get("on"):
            self.state = None
            return
        reason, since = doc.get("reason", ""), doc.get("since_ms", 0)
        if not isinstance(reason, str) or not isinstance(since, int):
            raise files.StateFileError(f"{self.path}: reason must be a string and since_ms "
                                       "an integer")
        self.state = ReadOnlyState(reason, since)

    @property
    def refusal(self) -> str | None:
        """Why client writes are refused now (the READONLY error's text), or None."""
        state = self.state
        if state is None:
            return None
        why = f": {state.reason}" if state.reason else ""
        return f"writes are off on {self.node_id} (operator){why}; reads still work"

    async def set(self, on: bool, reason: str = "") -> bool:
        """Turn the mode on or off, durably before it takes effect (on) or
        after the file says off; True when this changed it."""
        async with self._lock:  # two operators at once: one file write at a time
            current = self.state
            if (current is None) if not on else (current is not None
                                                  and current.reason == reason):
                return False
            state = ReadOnlyState(reason, int(time.time() * 1000)) if on else None
            doc = ({"v": 1, "on": True, "reason": state.reason, "since_ms": state.since_ms}
                   if state is not None else {"v": 1, "on": False})
            await asyncio.to_thread(files.write_doc, self.path, doc)
            self.state = state
            return True
