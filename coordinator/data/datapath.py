"""Quorum reads and writes: what a data command does on the cluster (DESIGN §6).

Write (SET, DEL, VSET, VDEL, MSET): build the version (reconcile.py), send it
to the plan's N targets at once (a fallback's copy carries ``hint_for``),
answer after W acks of which PW from primaries, or NOQUORUM as soon as that
is out of reach or at the request timeout. Acks after the answer are still
counted.

Multi-key commands run their keys a chunk at a time (``READ_MANY_CHUNK``
for MGET and EXISTS, ``WRITE_MANY_CHUNK`` for MSET and DEL): one command of
30,000 keys must neither hold 30,000 quorum rounds in memory at once nor
queue 90,000 replica calls ahead of every other client's requests (issue
13). A chunk runs to its end before the next starts; the first failure, in
key order, fails the command and no later chunk is started.

Read (GET, VGET, EXISTS, MGET): ask the N targets, answer after R replies (PR
primaries) with the merge of what came back. Every reply, also those that
arrive after the client's answer, is kept until the request timeout; then
replicas whose answer lacked something get the merged set (read repair,
rate-limited by a token bucket).

Every read and write is counted in the heavy-hitters sketch
(``hotkeys.py``); a read may be answered by a read in flight or the
hot-key cache (``shared_reads.py``, which every write of the key through
here tells when it starts and when it is acknowledged); with ``[reads]
fanout = "quorum"`` a read asks R replicas and hedges (``hedge.py``).

Context writes (VSET, VDEL) of one key through this coordinator reach each
replica in the order of their dots: a call to a replica waits until the
previous context write's call of that key to the same replica has ended
(answered, failed, or given up). In a context, a dot ``(actor, hlc)`` stands
for every earlier dot of that actor, so a replica must never hold a later
dot of ours without the earlier ones: it could hand the later one alone to
a reader, whose next write would then cover, and drop, an acknowledged
write nobody saw (found by the fault harness). The client is not held
back: the quorum is counted as the calls end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from coordinator.cluster.ring import NodeId
from coordinator.data import reconcile
from coordinator.data.hedge import HedgedReads
from coordinator.data.hotkeys import HotKeys
from coordinator.data.quorum import (
    Consistency,
    Outcome,
    Plan,
    Tally,
    Target,
    read_tally,
    write_tally,
)
from coordinator.data.shared_reads import Pending, ReadOptions, SharedReads
from coordinator.errors import CommandError, ReadOnlyError
from coordinator.histogram import Histograms
from coordinator.ratelimit import TokenBucket
from shardserver.protocol.errors import ShardUnavailable, VersionFormatError
from shardserver.protocol.messages import (
    ReplicaRead,
    ReplicaWrite,
    ReplicaWriteSet,
    Request,
    Status,
    WriteMode,
)
from shardserver.protocol.messages import Reply as ShardReply
from shardserver.protocol.vclock import ActorId
from shardserver.protocol.versions import (
    DEFAULT_SIBLING_CAP,
    Context,
    SiblingSet,
    Version,
    decode_siblings,
)

log = logging.getLogger("ringkv.datapath")

#: MGET and EXISTS read this many distinct keys at once: as many as one
#: connection may pipeline, as for writes below. With 1,000, eight clients
#: looping MGETs of 512 64 KiB values kept every worker's queue so long
#: that other clients' GETs timed out behind them.
READ_MANY_CHUNK = 256
#: MSET and DEL write this many keys at once: as many as one connection may
#: pipeline (server.MAX_PENDING), so an MSET weighs on the replicas no more
#: than a client pipelining SETs. With 1,000, a 10,000-pair MSET on a loaded
#: machine still timed out (each chunk must be written within the request
#: timeout) and other clients waited longer behind each chunk.
WRITE_MANY_CHUNK = 256
#: Calls still open this long after the request timeout are given up.
GIVE_UP_S = 1.0

K = TypeVar("K")
T = TypeVar("T")


class Routes(Protocol):
    """Whom to ask and how (``coordinator.data.router.Router``)."""

    def plan_for(self, key: bytes) -> tuple[int, Plan]: ...

    async def call(self, node: NodeId, request: Request, timeout: float) -> ShardReply: ...

    def submit(self, node: NodeId, request: Request) -> asyncio.Future[ShardReply]: ...


class Clock(Protocol):
    """The node's HLC (``coordinator.data.clock.Clock``)."""

    def now(self) -> int: ...

    def saw(self, ts: int, source: str = ...) -> None: ...

    def issue(self, key: bytes, context: bytes) -> bytes: ...  # sealed for the client

    def context(self, key: bytes, token: bytes) -> Context: ...  # CommandError if refused


@dataclass(slots=True)
class DataStats:
    reads: int = 0
    writes: int = 0
    noquorum_reads: int = 0
    noquorum_writes: int = 0
    late_acks: int = 0
    read_repairs: int = 0
    read_repairs_skipped: int = 0
    fallback_writes: int = 0
    coalesced_reads: int = 0  # reads that joined one in flight (shared_reads.py)
    cache_hits: int = 0
    cache_misses: int = 0  # reads of hot keys the cache did not have
    hedged_reads: int = 0  # replicas asked because one was slow (hedge.py)


def _reason(reply: ShardReply) -> str:
    name = reply.status.name.lower().replace("_", "-")
    return f"{name}: {reply.message}" if reply.message else name


class Round:
    """One request's calls to its targets and what came back, driven by
    done-callbacks (no task per call, no coroutine per request).

    ``on_decided(round)`` runs once, as soon as the tally succeeds or fails,
    or at the request timeout (open calls then count as ``timeout``).
    Callbacks given to :meth:`when_finished` run once every call has ended;
    calls still open a second after the request timeout are given up
    (cancelled). One timer per round covers both."""

    __slots__ = ("_hops", "_loop", "_on_decided", "_open", "_started", "_then", "_timer",
                 "agreed", "calls", "decided", "decoded", "finished", "late", "on_short",
                 "read_only", "replies", "tally")

    def __init__(self, tally: Tally, calls: dict[asyncio.Future[ShardReply], Target],
                 timeout_s: float, on_decided: Callable[[Round], None],
                 hops: Histograms[str] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._hops = hops  # replica call latency by node, for the metrics
        self.tally = tally
        self.calls = calls
        self.replies: dict[NodeId, ShardReply] = {}
        self.decoded: dict[str, SiblingSet | None] = {}  # replies' payloads, decoded once
        #: A read's answers at its decision were the same bytes, already merged.
        self.agreed = False
        self.read_only: list[str] = []
        self.late = 0  # successful replies after the decision
        self.decided = False
        self.finished = False
        self._on_decided: Callable[[Round], None] | None = on_decided
        #: Called when a call ends while the round is undecided (hedge.py asks
        #: a spare replica if the open calls can no longer make the quorum).
        self.on_short: Callable[[], None] | None = None
        self._then: list[Callable[[], None]] = []
        self._open = len(calls)
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(timeout_s, self._expire)
        on_done = self._on_done
        for fut in calls:
            fut.add_done_callback(on_done)

    def _on_done(self, fut: asyncio.Future[ShardReply]) -> None:
        self._open -= 1
        outcome = Outcome.PENDING
        if not fut.cancelled():
            if self.decided:
                before = len(self.replies)
                self._take(fut)
                self.late += len(self.replies) - before
            else:
                outcome = self._take(fut)
                if self.on_short is not None:
                    self.on_short()
                    outcome = self.tally.outcome()  # it may have asked one more
        if not self.decided and (self._open == 0 or outcome is not Outcome.PENDING):
            self._decide()
        if self._open == 0:
            self._finish()

    def _take(self, fut: asyncio.Future[ShardReply]) -> Outcome:
        """Count the call's answer; the tally's outcome after it."""
        target = self.calls[fut]
        exc = fut.exception()
        if exc is None and self._hops is not None:
            self._hops.observe(target.node, self._loop.time() - self._started)
        if isinstance(exc, ShardUnavailable):
            return self.tally.fail(target.node, f"down ({exc.reason})")
        if exc is not None:  # a bug in a call must not hang the request
            log.error("call to %s failed", target.node, exc_info=exc)
            return self.tally.fail(target.node, f"error: {exc}")
        reply = fut.result()
        if reply.ok:
            self.replies[target.node] = reply
            return self.tally.ack(target.node)
        if reply.status is Status.READ_ONLY:
            self.read_only.append(f"{target.node}: {reply.message}")
        return self.tally.fail(target.node, _reason(reply))

    def add(self, fut: asyncio.Future[ShardReply], target: Target) -> None:
        """One more call (a spare replica asked late)."""
        self.calls[fut] = target
        self._open += 1
        fut.add_done_callback(self._on_done)

    def _decide(self) -> None:
        self.decided = True
        decided, self._on_decided = self._on_decided, None
        if decided is not None:
            decided(self)

    def _expire(self) -> None:
        """The request timeout: decide now if still undecided, and give the
        calls one more second to end."""
        if not self.decided:
            for fut, target in self.calls.items():
                if not fut.done():
                    self.tally.fail(target.node, "timeout")
            self._decide()
        self._timer = None if self.finished else self._loop.call_later(GIVE_UP_S, self.cancel)

    def _finish(self) -> None:
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        then, self._then = self._then, []
        for callback in then:
            callback()

    def when_finished(self, then: Callable[[], None]) -> None:
        """Run ``then`` once every call has ended (now, if they have)."""
        if self.finished:
            then()
        else:
            self._then.append(then)

    def cancel(self) -> None:
        for fut in self.calls:
            fut.cancel()


def send_after(
    before: asyncio.Future[Any], send: Callable[[], asyncio.Future[ShardReply]]
) -> asyncio.Future[ShardReply]:
    """``send()`` once ``before`` has ended (at once if it has), as one
    future: its outcome is the call's; cancelling it before the call went
    out means the call never goes out, after that it cancels the call."""
    if before.done():
        return send()
    out: asyncio.Future[ShardReply] = asyncio.get_running_loop().create_future()

    def copy(call: asyncio.Future[ShardReply]) -> None:
        if out.done():
            return
        if call.cancelled():
            out.cancel()
        elif (exc := call.exception()) is not None:
            out.set_exception(exc)
        else:
            out.set_result(call.result())

    def go(_: object) -> None:
        if out.done():  # given up while waiting: never sent
            return
        call = send()
        call.add_done_callback(copy)
        out.add_done_callback(lambda _: call.cancel())

    before.add_done_callback(go)
    return out


async def in_chunks(
    items: Sequence[K], run: Callable[[K], Awaitable[T]], size: int
) -> AsyncIterator[tuple[Sequence[K], list[T]]]:
    """``run`` every item, ``size`` at a time, yielding each chunk with its
    results. A chunk is awaited to its end (every call answered or failed),
    then its first failure in item order is raised and no later chunk starts."""
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        results = await asyncio.gather(*(run(x) for x in chunk), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        yield chunk, cast(list[T], results)  # no exceptions left


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


class DataPath:
    """Quorum reads and writes. :meth:`read` and :meth:`write` start their
    round at once and return its future (no coroutine, no task): the
    client server fills a reply slot from its done-callback; coroutines
    await it as they would a coroutine. Errors arrive through the future,
    also those known before anything is sent."""

    def __init__(self, routes: Routes, clock: Clock, actor: ActorId, *, timeout_s: float,
                 max_reply_bytes: int, sibling_cap: int = DEFAULT_SIBLING_CAP,
                 hinted_handoff: bool = True, read_repair_per_s: float = 1000.0,
                 reads: ReadOptions | None = None) -> None:
        self.routes = routes
        self.clock = clock
        self.actor = actor
        self.timeout_s = timeout_s
        self.max_reply_bytes = max_reply_bytes
        self.sibling_cap = sibling_cap
        self.hinted_handoff = hinted_handoff  # off: fallbacks take writes but keep no hints
        self.stats = DataStats()
        # Counting hooks for the metrics (ops.metrics reads them at scrape time).
        self.noquorum: dict[tuple[str, str], int] = {}  # (op, Tally.cause()) -> count
        self.partition_requests: dict[int, int] = {}  # keys read or written, by partition
        self.hops: Histograms[str] = Histograms()  # replica call latency, by node
        reads = reads or ReadOptions()
        self.hotkeys = HotKeys(reads.tracked, reads.window_s)
        self._shared = SharedReads(reads, self.hotkeys, self.stats)
        self._hedged = None if reads.fanout == "all" else HedgedReads(
            NodeId(reads.me), reads.hedge, reads.hedge_max_ratio, self._hedged_read)
        self._repair_bucket = TokenBucket(read_repair_per_s, read_repair_per_s)
        self._background: set[asyncio.Task[Any]] = set()
        # key -> the calls, by replica, of the last context write of that key
        self._context_calls: dict[bytes, dict[NodeId, asyncio.Future[ShardReply]]] = {}

    def _hedged_read(self) -> None:
        self.stats.hedged_reads += 1

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=5)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- reads --------------------------------------------------------------
    def read(self, key: bytes, levels: Consistency) -> asyncio.Future[SiblingSet]:
        """Merged sibling set of ``key`` from R replicas (PR primaries)."""
        self.stats.reads += 1
        self.hotkeys.read(key)
        if (shared := self._shared.find(key, levels)) is not None:
            return shared
        try:
            partition, p = self.routes.plan_for(key)
        except CommandError as exc:
            return _failed(exc)
        self.partition_requests[partition] = self.partition_requests.get(partition, 0) + 1
        tally = read_tally(p, levels.r or 1, levels.pr or 0)
        if (error := tally.unreachable()) is not None:
            self.stats.noquorum_reads += 1
            self._failed_quorum("read", tally)
            return _failed(error)
        out: asyncio.Future[SiblingSet] = asyncio.get_running_loop().create_future()
        request = ReplicaRead(partition, key)
        decided = functools.partial(self._read_decided, partition, key,
                                    self._shared.start(key, levels, out))
        if self._hedged is None:
            self._send(p, tally, lambda t: request, decided)
        else:
            self._hedged.send(p.targets, tally, lambda t: self.routes.submit(t.node, request),
                              lambda calls: Round(tally, calls, self.timeout_s, decided))
        return out

    def _read_decided(self, partition: int, key: bytes, pending: Pending, rnd: Round) -> None:
        tally = rnd.tally
        if tally.outcome() is not Outcome.SUCCEEDED:
            self.stats.noquorum_reads += 1
            self._failed_quorum("read", tally)
            self._shared.failed(key, pending, tally.error())
            return
        merged = self._unanimous(rnd)
        rnd.agreed = merged is not None
        if merged is None:
            merged = reconcile.reconcile(self._answers(rnd), self.sibling_cap).merged
        if merged:
            self.clock.saw(max(v.hlc for v in merged))
        self._shared.answered(key, pending, merged)
        rnd.when_finished(functools.partial(self._check_replicas, partition, key, rnd))

    async def read_many(
        self, keys: Sequence[bytes], levels: Consistency, sized: bool
    ) -> dict[bytes, bytes | None]:
        """The visible value of each key, read once however often it is
        named, ``READ_MANY_CHUNK`` keys at a time. ``sized``: refuse once the
        reply (repeats counted) would pass ``max_reply_bytes``, before the
        rest is read, so one command cannot fill the coordinator's memory."""
        counts = collections.Counter(keys)
        unique = list(counts)
        found: dict[bytes, bytes | None] = {}
        size = 0
        async for chunk, sets in in_chunks(unique, lambda k: self.read(k, levels),
                                           READ_MANY_CHUNK):
            for key, siblings in zip(chunk, sets, strict=True):
                value = reconcile.get_reply(siblings)
                found[key] = value
                size += counts[key] * len(value or b"")
            if sized and size > self.max_reply_bytes:
                raise CommandError(
                    f"ERR reply of {len(keys)} keys is over {self.max_reply_bytes} bytes "
                    "(max_reply_bytes); ask for fewer keys")
        return found

    def _unanimous(self, rnd: Round) -> SiblingSet | None:
        """``reconcile.unanimous`` of the round's answers (bad bytes: None,
        and ``_answers`` names them as reconcile does)."""
        try:
            return reconcile.unanimous((r.payload for r in rnd.replies.values()),
                                       self.sibling_cap)
        except VersionFormatError:
            return None

    def _answers(self, rnd: Round) -> dict[str, SiblingSet | None]:
        for node, reply in rnd.replies.items():
            if node not in rnd.decoded:
                rnd.decoded[node] = (None if reply.payload is None
                                     else decode_siblings(reply.payload))
        return dict(rnd.decoded)

    def _check_replicas(self, partition: int, key: bytes, rnd: Round) -> None:
        """Once every replica answered (or the time is up): send the merged
        set to the replicas whose answer lacked part of it (read repair)."""
        if len(rnd.replies) < 2 or (rnd.agreed and len(
                {r.payload for r in rnd.replies.values()}) == 1):
            return  # one answer, or all alike as the first ones were: nothing to repair
        result = reconcile.reconcile(self._answers(rnd), self.sibling_cap)
        if result.stale:
            self._spawn(self._repair(partition, key, result.merged, result.stale))

    async def _repair(
        self, partition: int, key: bytes, merged: SiblingSet, stale: Iterable[str]
    ) -> None:
        for node in stale:
            if not self._repair_bucket.take():
                self.stats.read_repairs_skipped += 1
                continue
            self.stats.read_repairs += 1
            req = ReplicaWriteSet(partition, key, merged)
            with contextlib.suppress(ShardUnavailable):  # gone: anti-entropy gets it
                await self.routes.call(NodeId(node), req, self.timeout_s)

    async def vget(self, key: bytes, levels: Consistency) -> list[bytes]:
        """VGET: ``[context, value...]`` of ``key``, the context sealed so
        that VSET/VDEL take back only what this cluster issued."""
        context, *values = reconcile.vget_reply(await self.read(key, levels))
        return [self.clock.issue(key, context), *values]

    # -- writes -------------------------------------------------------------
    def write(
        self, key: bytes, value: bytes | None, levels: Consistency, *, lww: bool,
        context: bytes | None = None,
    ) -> asyncio.Future[Version]:
        """Write ``value`` (None: a tombstone) to ``key``: last-writer-wins
        (``lww``, SET/DEL) or superseding the client's ``context``."""
        try:
            if lww:
                version = reconcile.plain_write(self.actor, self.clock.now(), value)
                return self._start_write(key, version, "lww", levels)
            # The clock adopts the context first: the dot then lies past it.
            ctx = self.clock.context(key, context or b"")
            version = reconcile.context_write(ctx, self.actor, self.clock.now(), value)
        except CommandError as exc:
            return _failed(exc)
        return self._start_write(key, version, "merge", levels, self._context_calls.get(key))

    async def delete(self, key: bytes, levels: Consistency) -> int:
        """DEL of one key: 1 if it had a visible value at R replicas just
        before, else 0 (Redis's count). The read must finish before the
        tombstone is sent: a replica applying the tombstone first would hide
        the value, so DEL costs two round trips."""
        try:
            before = await self.read(key, Consistency(r=levels.r or 1))
        except CommandError:
            before = None  # cannot tell; the delete still goes ahead
        await self.write(key, None, levels, lww=True)
        return 0 if before is not None and reconcile.get_reply(before) is None else 1

    async def write_many(
        self, pairs: Sequence[tuple[bytes, bytes]], levels: Consistency
    ) -> None:
        """MSET: a plain write of each pair, ``WRITE_MANY_CHUNK`` at a time."""
        async for _ in in_chunks(pairs, lambda kv: self.write(*kv, levels, lww=True),
                                 WRITE_MANY_CHUNK):
            pass

    async def delete_many(self, keys: Sequence[bytes], levels: Consistency) -> int:
        """DEL: how many of ``keys`` had a value, ``WRITE_MANY_CHUNK`` at a time."""
        deleted = 0
        async for _, counts in in_chunks(keys, lambda k: self.delete(k, levels),
                                         WRITE_MANY_CHUNK):
            deleted += sum(counts)
        return deleted

    def _start_write(
        self, key: bytes, version: Version, mode: WriteMode, levels: Consistency,
        after: dict[NodeId, asyncio.Future[ShardReply]] | None = None,
    ) -> asyncio.Future[Version]:
        """Send ``version`` to the plan's targets (to a node in ``after``
        once that call has ended), or fail with NOQUORUM and nothing sent
        when too few are up. A context write (``mode`` merge) becomes the
        key's latest, which the next one waits for (module doc)."""
        self.stats.writes += 1
        self.hotkeys.write(key)
        self._shared.wrote(key)
        try:
            partition, p = self.routes.plan_for(key)
        except CommandError as exc:
            return _failed(exc)
        self.partition_requests[partition] = self.partition_requests.get(partition, 0) + 1
        tally = write_tally(p, levels.w or 1, levels.pw or 0)
        if (error := tally.unreachable()) is not None:
            self.stats.noquorum_writes += 1
            self._failed_quorum("write", tally)
            return _failed(error)
        hinted = self.hinted_handoff

        def request(t: Target) -> Request:
            return ReplicaWrite(partition, key, version, mode, t.hint_for if hinted else None)

        self.stats.fallback_writes += p.fallbacks
        out: asyncio.Future[Version] = asyncio.get_running_loop().create_future()
        rnd = self._send(p, tally, request,
                         functools.partial(self._write_decided, key, version, out), after)
        if mode == "merge":
            calls = {t.node: fut for fut, t in rnd.calls.items()}
            self._context_calls[key] = calls

            def forget() -> None:
                if self._context_calls.get(key) is calls:
                    del self._context_calls[key]

            rnd.when_finished(forget)
        return out

    def _write_decided(self, key: bytes, version: Version, out: asyncio.Future[Version],
                       rnd: Round) -> None:
        """W acks (PW primaries) came, or the answer that they will not."""
        self._shared.wrote(key)
        tally = rnd.tally
        if tally.outcome() is not Outcome.SUCCEEDED:
            self.stats.noquorum_writes += 1
            self._failed_quorum("write", tally)
            # Read-only refusals alone made the quorum impossible (whether or
            # not the others had answered yet): READONLY, as Redis names it.
            if rnd.read_only and len(rnd.read_only) == len(tally.failed):
                error: CommandError = ReadOnlyError(
                    "disk full or I/O error on " + "; ".join(rnd.read_only))
            else:
                error = tally.error()
            if not out.done():
                out.set_exception(error)
            return
        if not out.done():
            out.set_result(version)
        rnd.when_finished(functools.partial(self._count_late, rnd))

    def _count_late(self, rnd: Round) -> None:
        self.stats.late_acks += rnd.late

    # -- rounds -------------------------------------------------------------
    def _send(
        self, p: Plan, tally: Tally, request: Callable[[Target], Request],
        on_decided: Callable[[Round], None],
        after: dict[NodeId, asyncio.Future[ShardReply]] | None = None,
    ) -> Round:
        submit = self.routes.submit
        calls: dict[asyncio.Future[ShardReply], Target] = {}
        for t in p.targets:
            before = after.get(t.node) if after else None
            if before is None:
                calls[submit(t.node, request(t))] = t
            else:
                calls[send_after(before, functools.partial(submit, t.node, request(t)))] = t
        return Round(tally, calls, self.timeout_s, on_decided, self.hops)

    def _failed_quorum(self, op: str, tally: Tally) -> None:
        key = (op, tally.cause())
        self.noquorum[key] = self.noquorum.get(key, 0) + 1
