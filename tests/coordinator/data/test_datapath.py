"""``send_after``: how a context write's call to a replica waits for the
previous one of the same key; ``in_chunks``: how multi-key commands run
their keys a chunk at a time (coordinator/datapath.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from coordinator.data.datapath import in_chunks, send_after
from coordinator.errors import CommandError
from shardserver.protocol.messages import Reply, Status


def _sender() -> tuple[list[asyncio.Future[Reply]], Callable[[], asyncio.Future[Reply]]]:
    """A ``send`` that records each call's future, for the test to answer."""
    sent: list[asyncio.Future[Reply]] = []

    def send() -> asyncio.Future[Reply]:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        sent.append(fut)
        return fut

    return sent, send


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)  # let done-callbacks run


def test_the_call_goes_out_only_when_the_previous_one_has_ended() -> None:
    async def main() -> None:
        before: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        sent, send = _sender()
        out = send_after(before, send)
        await _turns()
        assert sent == [] and not out.done()
        before.set_result(Reply(Status.OK, None))
        await _turns()
        assert len(sent) == 1 and not out.done()
        sent[0].set_result(Reply(Status.OK, b"x"))
        await _turns()
        assert out.result().payload == b"x"

    asyncio.run(main())


@pytest.mark.parametrize("end", ["result", "exception", "cancel"])
def test_any_end_of_the_previous_call_lets_it_go(end: str) -> None:
    async def main() -> None:
        before: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        sent, send = _sender()
        out = send_after(before, send)
        if end == "result":
            before.set_result(Reply(Status.TIMEOUT, "slow"))
        elif end == "exception":
            before.set_exception(ConnectionError("gone"))
            before.exception()
        else:
            before.cancel()
        await _turns()
        assert len(sent) == 1
        sent[0].set_exception(ConnectionError("down too"))
        await _turns()
        with pytest.raises(ConnectionError, match="down too"):
            out.result()

    asyncio.run(main())


def test_sent_at_once_when_the_previous_call_has_ended() -> None:
    async def main() -> None:
        before: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        before.set_result(Reply(Status.OK, None))
        sent, send = _sender()
        out = send_after(before, send)
        assert out is sent[0]

    asyncio.run(main())


def test_given_up_while_waiting_it_is_never_sent() -> None:
    async def main() -> None:
        before: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        sent, send = _sender()
        out = send_after(before, send)
        out.cancel()
        before.set_result(Reply(Status.OK, None))
        await _turns()
        assert sent == []

    asyncio.run(main())


def test_given_up_after_sending_cancels_the_call() -> None:
    async def main() -> None:
        before: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        sent, send = _sender()
        out = send_after(before, send)
        before.set_result(Reply(Status.OK, None))
        await _turns()
        out.cancel()
        await _turns()
        assert sent[0].cancelled()

    asyncio.run(main())


def test_a_chain_goes_out_in_order() -> None:
    async def main() -> None:
        sent, send = _sender()
        first = send()
        second = send_after(first, send)
        third = send_after(second, send)
        await _turns()
        assert len(sent) == 1
        first.set_result(Reply(Status.OK, None))
        await _turns()
        assert len(sent) == 2 and not third.done()
        sent[1].set_result(Reply(Status.OK, None))
        await _turns()
        assert len(sent) == 3

    asyncio.run(main())


def test_in_chunks_runs_one_chunk_at_a_time_in_order() -> None:
    async def main() -> list[tuple[list[int], list[int]]]:
        running, peak = 0, 0

        async def run(x: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0)
            running -= 1
            return x * 10

        out = [(list(c), r) async for c, r in in_chunks(list(range(7)), run, 3)]
        assert peak == 3
        return out

    assert asyncio.run(main()) == [
        ([0, 1, 2], [0, 10, 20]), ([3, 4, 5], [30, 40, 50]), ([6], [60])
    ]


def test_in_chunks_raises_the_first_failure_in_order_after_its_chunk_and_stops() -> None:
    """Issue 13 point 6: MSET answers OK only if every key was written, else
    the first failure by key order; a chunk is awaited to its end (nothing
    left running), and no later chunk is started."""
    started: list[int] = []
    finished: list[int] = []

    async def run(x: int) -> int:
        started.append(x)
        await asyncio.sleep(0.01 if x == 4 else 0)  # 4 fails last in time ...
        finished.append(x)
        if x in (4, 5):
            raise CommandError(f"NOQUORUM key {x}")
        return x

    async def main() -> None:
        async for _ in in_chunks(list(range(9)), run, 3):
            pass

    with pytest.raises(CommandError, match="NOQUORUM key 4"):  # ... but comes first
        asyncio.run(main())
    assert sorted(started) == sorted(finished) == [0, 1, 2, 3, 4, 5]
