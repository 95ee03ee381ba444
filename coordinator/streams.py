"""What every connection handler of the coordinator does around its work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def handler_scope(
    writer: asyncio.StreamWriter, close_timeout_s: float
) -> AsyncIterator[None]:
    """Close the stream (bounded) however the handler ends, and end quietly
    on cancellation: shutdown cancels handler tasks nobody awaits, and
    Python 3.11's start_server callback calls ``task.exception()`` on them,
    which logs a traceback for a cancelled task."""
    try:
        yield
    except asyncio.CancelledError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), close_timeout_s)
