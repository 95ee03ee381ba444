"""In-process replicas for coordinator tests: a request answered by a real
ShardStore the way a worker answers it, through the wire codec both ways."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from shardserver.handlers import dispatch, error_status
from shardserver.protocol import codec
from shardserver.protocol.messages import Reply, Request, Status
from shardserver.storage import ShardStore


async def call_store(store: ShardStore, request: Request) -> Reply:
    ((_, req),) = codec.decode_requests(codec.encode_requests([(1, request)])[4:])
    try:
        reply = Reply(Status.OK, await asyncio.to_thread(dispatch(store, req)))
    except Exception as exc:
        reply = Reply.error(*error_status(exc))
    ((_, back),) = codec.decode_replies(codec.encode_replies([(1, reply)])[4:])
    return codec.check_payload(request, back)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` with a bound: a hung test fails instead of hanging."""
    return asyncio.run(asyncio.wait_for(coro, 60))
