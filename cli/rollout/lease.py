"""The rollout's hold on the cluster-wide rollout lease
(``coordinator.ops.rollout_lease``): taken from a strict majority of ring
nodes before anything is drained, renewed while the rollout runs (every
wait renews it), given back at the end, on an error or on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from cli.rollout.plan import lease_refusal, majority
from coordinator.ops import admin_api as api

TTL_S = 30.0  # a rollout killed outright blocks the next one this long at most
RENEW_S = 5.0  # renewals this far apart; a renewal may take its calls' timeouts

#: ``(node, request) -> reply or why none``: one lease request to one node.
AskLease = Callable[[str, api.LeaseRequest], Awaitable[api.LeaseReply | str]]


class LeaseLost(Exception):
    """Another rollout holds the lease now, or no majority renewed it in time."""


class LeaseHold:
    def __init__(self, members: list[str], ask: AskLease) -> None:
        self.members, self._ask = members, ask
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._held_at: float | None = None  # monotonic time of the last majority

    async def _all(self, request: api.LeaseRequest) -> dict[str, api.LeaseReply | str]:
        got = await asyncio.gather(*(self._ask(n, request) for n in self.members))
        return dict(zip(self.members, got, strict=True))

    async def take(self) -> str | None:
        """Take the lease from a majority: None, or why not (nothing held then)."""
        replies = await self._all(api.LeaseRequest(self.holder, TTL_S))
        why = lease_refusal(self.members, replies, int(time.time() * 1000))
        if why is not None:
            await self.release()
            return why
        self._held_at = time.monotonic()
        return None

    async def renew(self) -> None:
        """Renew it when due; LeaseLost when another rollout took a node's
        lease or no majority granted it for most of a TTL (nodes being
        restarted keep our lease in their data directory meanwhile)."""
        if self._held_at is None or time.monotonic() - self._held_at < RENEW_S:
            return
        replies = await self._all(api.LeaseRequest(self.holder, TTL_S))
        others = sorted({r.holder for r in replies.values()
                         if isinstance(r, api.LeaseReply) and not r.granted and r.holder})
        if others:
            raise LeaseLost(f"lost the rollout lease to {', '.join(others)}")
        granted = sum(1 for r in replies.values() if isinstance(r, api.LeaseReply) and r.granted)
        if granted >= majority(self.members):
            self._held_at = time.monotonic()
        elif time.monotonic() - self._held_at > TTL_S * 0.8:
            raise LeaseLost(f"could not renew the rollout lease on {majority(self.members)} of "
                            f"{len(self.members)} nodes for {TTL_S * 0.8:g}s")

    async def release(self) -> None:
        """Give it back on every node that answers (the rest let it expire)."""
        self._held_at = None
        await self._all(api.LeaseRequest(self.holder, TTL_S, release=True))
