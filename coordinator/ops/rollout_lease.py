"""The rollout lease: which ``ringkv rollout`` may take nodes down now.

A rollout asks every ring node for the lease (its holder id and a TTL) and
goes on only with grants from a strict majority, so two rollouts started
together (or an operator re-running one) cannot both drain nodes: at most
one holds a majority. A node grants the lease when nobody holds it, when
its holder's time ran out, or to its holder again (a renewal). It lives in
the data directory as ``rollout_lease.msgpack`` (``{"v": 1, "holder": str,
"expires_ms": int}``, wall clock), replaced whole, durably, before the
grant is answered: a node keeps the lease across its own restart, which is
what a rollout does to it.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from coordinator import files

LEASE_FILE = "rollout_lease.msgpack"
MAX_TTL_S = 600.0
MAX_HOLDER = 200


@dataclass(frozen=True, slots=True)
class Lease:
    holder: str
    expires_ms: int  # wall clock


class RolloutLease:
    """Owns the node's rollout lease and its file."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, LEASE_FILE)
        self._lock = asyncio.Lock()  # one grant or release (and file write) at a time

    def current(self, now_ms: int) -> Lease | None:
        """The lease in force at ``now_ms`` (None: free or expired)."""
        doc = files.read_doc(self.path)
        if doc is None or not doc.get("holder"):
            return None
        holder, expires = doc.get("holder"), doc.get("expires_ms")
        if not isinstance(holder, str) or not isinstance(expires, int):
            raise files.StateFileError(f"{self.path}: holder must be a string and expires_ms "
                                       "an integer")
        return Lease(holder, expires) if expires > now_ms else None

    async def acquire(self, holder: str, ttl_s: float) -> tuple[bool, Lease]:
        """Grant (or renew) the lease to ``holder`` for ``ttl_s``: (True,
        the new lease), or (False, the lease someone else holds)."""
        async with self._lock:
            now = int(time.time() * 1000)
            held = await asyncio.to_thread(self.current, now)
            if held is not None and held.holder != holder:
                return False, held
            lease = Lease(holder, now + int(ttl_s * 1000))
            await asyncio.to_thread(files.write_doc, self.path,
                                    {"v": 1, "holder": lease.holder,
                                     "expires_ms": lease.expires_ms})
            return True, lease

    async def release(self, holder: str) -> Lease | None:
        """Give the lease up if ``holder`` holds it; the lease left in force."""
        async with self._lock:
            held = await asyncio.to_thread(self.current, int(time.time() * 1000))
            if held is None or held.holder != holder:
                return held
            await asyncio.to_thread(files.write_doc, self.path, {"v": 1, "holder": ""})
            return None
