"""ShardClient against a real worker process, and against scripted fake
workers for the cases a real one will not produce (garbage, late replies)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shardserver.config import WorkerConfig, WorkerSettings
from shardserver.protocol import codec
from shardserver.protocol import messages as m
from shardserver.protocol.client import ShardClient
from shardserver.protocol.errors import ShardUnavailable
from shardserver.protocol.hlc import make_hlc
from shardserver.protocol.messages import Reply, Status
from shardserver.protocol.vclock import ActorId, VClock
from shardserver.protocol.versions import Version
from tests.processes import start_worker, stop

REPO = Path(__file__).resolve().parents[2]
ACTOR = ActorId(b"client-test#1")


def ver(i: int, value: bytes | None) -> Version:
    hlc = make_hlc(1_700_000_000_000 + i)
    return Version(VClock.of({ACTOR: hlc}), hlc, ACTOR, value)


def run(coro: Coroutine[Any, Any, None], timeout_s: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout_s))


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # tmp_path can exceed the ~108-byte limit of unix socket paths.
    d = Path(tempfile.mkdtemp(prefix="rkc", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class WorkerProc:
    sock: str
    data: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        settings = WorkerSettings(fsync="never", log_level="WARNING")
        self.proc = start_worker(WorkerConfig(self.sock, self.data, (0, 8), settings=settings),
                                 str(REPO))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
def worker(sock_dir: Path) -> Iterator[WorkerProc]:
    w = WorkerProc(str(sock_dir / "w.sock"), str(sock_dir / "data"))
    w.start()
    try:
        yield w
    finally:
        w.kill()


async def ready_client(w: WorkerProc, **kwargs: Any) -> ShardClient:
    client = ShardClient(w.sock, **kwargs)
    await client.wait_ready(30.0)
    return client


# --- against the real worker ---------------------------------------------------------


@pytest.mark.integration
def test_write_read_scan_stats_round_trip(worker: WorkerProc) -> None:
    async def body() -> None:
        async with await ready_client(worker) as c:
            reply = await c.call(m.ReplicaWrite(3, b"k1", ver(1, b"one"), "lww"), timeout=5.0)
            assert reply.status is Status.OK and reply.payload is None
            assert [v.value for v in await c.read(3, b"k1")] == [b"one"]
            assert await c.read(3, b"absent") == ()
            # Two concurrent context writes become siblings; a tombstone is a version too.
            a = Version(VClock.of({ActorId(b"a#1"): 5}), 5, ActorId(b"a#1"), b"a")
            b = Version(VClock.of({ActorId(b"b#1"): 6}), 6, ActorId(b"b#1"), None)
            await c.write(3, b"k2", a)
            got = await c.write_set(3, b"k2", (b,))
            assert [v.value for v in got] == [b"a", None]
            items, nxt = await c.scan(3, None, 10)
            assert [k for k, _ in items] == [b"k1", b"k2"] and nxt is None
            stats = await c.stats()
            assert stats.partitions == (0, 8) and stats.engine.memtable_entries >= 2
            await c.flush()
            assert [v.value for v in await c.read(3, b"k2")] == [b"a", None]

    run(body())


@pytest.mark.integration
def test_calls_in_one_loop_turn_share_one_frame(worker: WorkerProc) -> None:
    async def body() -> None:
        async with await ready_client(worker) as c:
            before = c.frames_sent
            replies = await asyncio.gather(
                *(c.call(m.ReplicaWrite(i % 8, b"b%d" % i, ver(i, b"x"), "lww"), timeout=10.0)
                  for i in range(500))
            )
            assert all(r.status is Status.OK for r in replies), {r.status for r in replies}
            assert c.frames_sent - before == 1
            before = c.frames_sent
            for i in range(3):  # sequential calls: one frame each
                await c.call(m.ReplicaRead(0, b"b%d" % i), timeout=5.0)
            assert c.frames_sent - before == 3

    run(body())


@pytest.mark.integration
def test_timeout_on_stopped_worker_then_late_reply_is_ignored(worker: WorkerProc) -> None:
    async def body() -> None:
        async with await ready_client(worker) as c:
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                reply = await c.call(m.ReplicaRead(0, b"k"), timeout=0.3)
                elapsed = time.monotonic() - started
                assert reply.status is Status.TIMEOUT and c.path in reply.message
                assert 0.25 <= elapsed < 1.5
                assert c.inflight == 0
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            received = c.frames_received
            reply = await c.call(m.ReplicaRead(0, b"k"), timeout=5.0)
            assert reply == Reply(Status.OK, None)
            # The reply of the timed-out call arrived too and was dropped quietly.
            assert c.frames_received >= received + 1

    run(body())


@pytest.mark.integration
def test_full_inflight_window_answers_overloaded_within_the_timeout(worker: WorkerProc) -> None:
    async def body() -> None:
        async with await ready_client(worker, max_inflight=2) as c:
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                replies = await asyncio.gather(
                    *(c.call(m.ReplicaRead(0, b"k%d" % i), timeout=0.3) for i in range(3))
                )
                assert time.monotonic() - started < 1.5
                assert sorted(r.status for r in replies) == [
                    Status.OVERLOADED, Status.TIMEOUT, Status.TIMEOUT,
                ]
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            assert (await c.call(m.Ping(), timeout=5.0)).status is Status.OK

    run(body())


@pytest.mark.integration
def test_killed_worker_fails_pending_calls_and_restart_is_reconnected(
    worker: WorkerProc,
) -> None:
    async def body() -> None:
        async with await ready_client(worker) as c:
            await c.write(1, b"kept", ver(1, b"v"), "lww")
            os.kill(worker.pid, signal.SIGSTOP)
            calls = [asyncio.ensure_future(c.call(m.ReplicaRead(1, b"kept"), timeout=30.0))
                     for _ in range(5)]
            await asyncio.sleep(0.1)
            started = time.monotonic()
            os.kill(worker.pid, signal.SIGKILL)
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert time.monotonic() - started < 5.0
            for r in results:
                assert isinstance(r, ShardUnavailable) and worker.sock in str(r), r
            with pytest.raises(ShardUnavailable, match=worker.sock):
                await c.call(m.Ping(), timeout=1.0)
            assert worker.proc is not None
            worker.proc.wait(10)
            worker.start()  # same socket path, like the supervisor's restart
            await c.wait_ready(30.0)
            assert [v.value for v in await c.read(1, b"kept")] in ([b"v"], [])  # fsync never

    run(body())


# --- scripted fake workers -----------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def fake_worker(path: str, handler: Handler) -> asyncio.AbstractServer:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()  # also when asyncio.run cancels us at the end

    return await asyncio.start_unix_server(serve, path=path)


async def read_requests(reader: asyncio.StreamReader) -> list[tuple[int, m.Request]]:
    dec = codec.FrameDecoder()
    while True:
        data = await asyncio.wait_for(reader.read(65536), 5.0)
        if not data:
            return []
        dec.feed(data)
        frames = dec.frames()
        if frames:
            return [r for f in frames for r in codec.decode_requests(f)]


def test_connect_to_missing_socket_names_the_path(sock_dir: Path) -> None:
    path = str(sock_dir / "nobody.sock")

    async def body() -> None:
        with pytest.raises(ShardUnavailable, match=r"nobody\.sock"):
            await ShardClient.connect(path, 1.0)
        c = ShardClient(path)
        with pytest.raises(ShardUnavailable, match=r"nobody\.sock"):
            await c.call(m.Ping(), timeout=1.0)
        await c.close()

    run(body())


def test_garbage_from_worker_fails_pending_calls(sock_dir: Path) -> None:
    path = str(sock_dir / "g.sock")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_requests(reader)
        writer.write(b"\x00\x00\x00\x03abc")  # framed, but not msgpack envelopes
        await writer.drain()
        await asyncio.sleep(1)

    async def body() -> None:
        server = await fake_worker(path, handler)
        async with server, await ShardClient.connect(path, 1.0) as c:
            with pytest.raises(ShardUnavailable, match="bad frame"):
                await c.call(m.Ping(), timeout=2.0)
            assert not c.connected

    run(body())


def test_late_and_unknown_replies_are_ignored_and_bad_payload_is_internal(
    sock_dir: Path,
) -> None:
    path = str(sock_dir / "l.sock")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while reqs := await read_requests(reader):
            await asyncio.sleep(0.2 if any(isinstance(r, m.Flush) for _, r in reqs) else 0)
            out = [(rid, Reply(Status.OK, 7 if isinstance(r, m.ReplicaRead) else None))
                   for rid, r in reqs]
            writer.write(codec.encode_replies([(999_999, Reply(Status.OK, None)), *out]))
            await writer.drain()

    async def body() -> None:
        server = await fake_worker(path, handler)
        async with server, await ShardClient.connect(path, 1.0) as c:
            assert (await c.call(m.Flush(), timeout=0.05)).status is Status.TIMEOUT
            await asyncio.sleep(0.3)  # the late reply lands on a dropped slot
            reply = await c.call(m.ReplicaRead(0, b"k"), timeout=1.0)
            assert reply.status is Status.INTERNAL and "read reply" in reply.message
            assert (await c.call(m.Compact(None), timeout=1.0)) == Reply(Status.OK, None)

    run(body())


def test_close_fails_pending_calls_and_later_calls(sock_dir: Path) -> None:
    path = str(sock_dir / "c.sock")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_requests(reader)
        await asyncio.sleep(5)  # never answers

    async def body() -> None:
        server = await fake_worker(path, handler)
        async with server:
            c = await ShardClient.connect(path, 1.0)
            pending = asyncio.ensure_future(c.call(m.Ping(), timeout=10.0))
            await asyncio.sleep(0.05)
            await c.close()
            with pytest.raises(ShardUnavailable, match="closed"):
                await asyncio.wait_for(pending, 1.0)
            with pytest.raises(ShardUnavailable, match="closed"):
                await c.call(m.Ping(), timeout=1.0)

    run(body())


def test_oversized_request_is_refused_locally_and_batches_are_split(sock_dir: Path) -> None:
    path = str(sock_dir / "s.sock")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dec = codec.FrameDecoder()
        while data := await asyncio.wait_for(reader.read(65536), 5.0):
            dec.feed(data)
            for f in dec.frames():
                writer.write(codec.encode_replies(
                    [(rid, Reply(Status.OK, b"\x01\x90")) for rid, _ in codec.decode_requests(f)]
                ))

    async def body() -> None:
        server = await fake_worker(path, handler)
        async with server, await ShardClient.connect(path, 1.0, max_send_frame=4096) as c:
            big = m.ReplicaWrite(0, b"k", ver(1, b"x" * 5000), "lww")
            assert (await c.call(big, timeout=1.0)).status is Status.BAD_REQUEST
            small = [m.ReplicaWrite(0, b"k%d" % i, ver(i, b"x" * 500), "lww") for i in range(20)]
            before = c.frames_sent
            replies = await asyncio.gather(*(c.call(r, timeout=2.0) for r in small))
            assert all(r.status is Status.OK for r in replies)
            assert c.frames_sent - before > 1

    run(body())


def test_an_unencodable_request_fails_alone_and_its_batch_goes_out(sock_dir: Path) -> None:
    """A dot past uint64 cannot be packed: before, the encoder's error
    dropped the whole batch and every request in it waited for its timeout
    (issue 13, done point 5)."""
    path = str(sock_dir / "s.sock")
    got: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dec = codec.FrameDecoder()
        while data := await asyncio.wait_for(reader.read(65536), 5.0):
            dec.feed(data)
            for f in dec.frames():
                reqs = codec.decode_requests(f)
                got.append(len(reqs))
                writer.write(codec.encode_replies(
                    [(rid, Reply(Status.OK, b"\x01\x90")) for rid, _ in reqs]))

    async def body() -> None:
        server = await fake_worker(path, handler)
        async with server, await ShardClient.connect(path, 1.0) as c:
            bad = Version(VClock.of({ACTOR: 1}), 1 << 64, ACTOR, b"overflow")
            calls = [m.ReplicaWrite(0, b"k%d" % i, ver(i, b"v"), "lww") for i in range(10)]
            calls.insert(5, m.ReplicaWrite(0, b"bad", bad, "merge"))
            before = c.frames_sent
            started = time.monotonic()
            replies = await asyncio.gather(*(c.call(r, timeout=5.0) for r in calls))
            assert time.monotonic() - started < 1.0
            assert replies[5].status is Status.BAD_REQUEST
            assert "unencodable request (OverflowError" in replies[5].message
            assert [r.status for r in replies[:5] + replies[6:]] == [Status.OK] * 10
            assert c.frames_sent - before == 1 and got == [10]

    run(body())
