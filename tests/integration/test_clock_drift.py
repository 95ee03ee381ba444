"""Clocks cannot be dragged (issue 13, done point 5), against real processes.

Before the fix a VSET whose context held a counter ten years ahead for the
node's own actor won over every later plain SET, one GET of it moved the
node's HLC ten years ahead, and a counter near 2**64 made the encoder fail
and drop every request batched with it (NOQUORUM ... timeout). Now a
timestamp more than ``max_clock_drift_ms`` (default 60 s) ahead of the
node's clock is refused where it enters (contexts: ``ERR invalid context``)
or ignored and counted (replica answers), and INFO's ``clock`` section shows
both the counters and how far the node's HLC runs ahead of its wall clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from coordinator.cluster.ring import partition_of
from coordinator.data.contexts import TAG_BYTES, ContextSeal
from shardserver.protocol.client import ShardClient
from shardserver.protocol.hlc import hlc_wall_ms, make_hlc
from shardserver.protocol.pool import partition_ranges
from shardserver.protocol.vclock import MAX_COUNTER, ActorId, VClock
from shardserver.protocol.versions import Context, decode_context, encode_context, plain_version
from tests.cluster import SECRET, Cluster, wait_for
from tests.faults.nemesis import set_option
from tests.integration.test_admin import scrape

pytestmark = pytest.mark.integration

TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000
#: How far a node's HLC may honestly run ahead of its wall clock here: the
#: three nodes share one machine's clock, so only the logical carry and
#: a little scheduling (well under a second) could show.
HONEST_LEAD_MS = 2000
#: What a node of the cluster seals contexts with: the tests below that
#: reach the drift checks play an insider (or a node whose clock ran ahead).
SEAL = ContextSeal(SECRET.encode())
DRIFT_ERROR = (r"^invalid context: counter for n1#\d+ is \d+ ms ahead of this node's clock "
               r"\(max_clock_drift_ms = 60000\)$")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("drift")), nodes=3, n=3)
    try:
        c.start()
        yield c
    finally:
        c.close()


def vget(r: redis.Redis, key: str) -> list[bytes]:
    out: list[bytes] = r.execute_command("VGET", key)  # type: ignore[no-untyped-call]
    return out


def vset(r: redis.Redis, key: str, context: bytes, value: str) -> object:
    return r.execute_command("VSET", key, context, value)  # type: ignore[no-untyped-call]


def own_counter(r: redis.Redis, key: str, node: str) -> tuple[ActorId, int]:
    """The actor of ``node`` and its counter in ``key``'s context."""
    clock = decode_context(vget(r, key)[0][:-TAG_BYTES]).clock
    [(actor, counter)] = [(a, c) for a, c in clock.entries if a.startswith(node.encode() + b"#")]
    return actor, counter


def forged(key: str, actor: ActorId, counter: int) -> bytes:
    """A context for ``key`` sealed with the cluster secret."""
    return SEAL.seal(key.encode(), encode_context(Context(VClock.of({actor: counter}))))


def clock_info(cluster: Cluster, i: int) -> dict[str, int]:
    return {k: int(v) for k, v in cluster.info(i, "clock").items()}


def assert_not_dragged(cluster: Cluster, i: int, key: str) -> None:
    """Node ``i``'s HLC sits at its wall clock: INFO says so, and a write it
    coordinates now carries a counter of now, not of the future."""
    assert clock_info(cluster, i)["hlc_ahead_ms"] < HONEST_LEAD_MS
    r = cluster.client(i)
    before_ms = int(time.time() * 1000)
    assert r.set(key, "probe") is True
    _, counter = own_counter(r, key, cluster.members[i].name)
    assert hlc_wall_ms(counter) - before_ms < HONEST_LEAD_MS


def test_a_context_ten_years_ahead_is_refused_and_a_later_set_wins(cluster: Cluster) -> None:
    n1, n2 = cluster.client(0), cluster.client(1)
    assert n1.set("drift:k", "before") is True
    actor, _ = own_counter(n1, "drift:k", "n1")
    refused = clock_info(cluster, 0)["contexts_refused"]
    ahead = make_hlc(int(time.time() * 1000) + TEN_YEARS_MS)
    with pytest.raises(redis.ResponseError, match=DRIFT_ERROR):
        vset(n1, "drift:k", forged("drift:k", actor, ahead), "from the future")
    info = clock_info(cluster, 0)
    assert info["contexts_refused"] == refused + 1
    # The bound as configured, and how far ahead the refused context was
    # (max_ahead_ms stayed 0 when only contexts had been refused).
    assert info["max_clock_drift_ms"] == 60_000
    assert TEN_YEARS_MS - 60_000 < info["max_ahead_ms"] <= TEN_YEARS_MS
    # A floor (the newest plain write the client saw) is an HLC too.
    honest, now = vget(n1, "drift:k")[0][:-TAG_BYTES], make_hlc(int(time.time() * 1000))
    floored = SEAL.seal(b"drift:k", encode_context(
        Context(decode_context(honest).clock, (ahead, actor))))
    with pytest.raises(redis.ResponseError, match=r"^invalid context: floor of n1#\d+ is \d+ ms"):
        vset(n1, "drift:k", floored, "from the future")
    assert clock_info(cluster, 0)["contexts_refused"] == refused + 2
    assert decode_context(honest).floor is not None and decode_context(honest).floor <= (now, actor)
    # Through n2 it is another node's counter, checked the same way.
    with pytest.raises(redis.ResponseError, match=DRIFT_ERROR):
        vset(n2, "drift:k", forged("drift:k", actor, ahead), "from the future")
    assert n2.set("drift:k", "after") is True
    assert n1.get("drift:k") == b"after"
    assert_not_dragged(cluster, 0, "drift:probe1")
    metrics = scrape(cluster, 0)
    assert metrics['ringkv_clock_drift_refusals_total{source="client_context"}'] >= 1
    assert metrics["ringkv_hlc_ahead_ms"] < HONEST_LEAD_MS


def test_a_context_not_issued_by_the_cluster_is_refused_within_the_bound(
        cluster: Cluster) -> None:
    """Before contexts were sealed, a forged context just inside the bound
    (50 s ahead) was adopted: each VSET dragged the node's HLC up to a
    minute forward, and the forged version outranked later writes."""
    n1, n2 = cluster.client(0), cluster.client(1)
    assert n1.set("seal:k", "honest") is True
    actor, _ = own_counter(n1, "seal:k", "n1")
    refused = clock_info(cluster, 0)["contexts_refused"]
    near = encode_context(Context(VClock.of({actor: make_hlc(int(time.time() * 1000) + 50_000)})))
    for token in (near, forged("seal:k", actor, 1)[:-1] + b"\0", vget(n1, "seal:other")[0]):
        with pytest.raises(redis.ResponseError,
                           match=r"^invalid context: not issued by this cluster$"):
            vset(n1, "seal:k", token, "forged")
    assert clock_info(cluster, 0)["contexts_refused"] == refused + 3
    assert n1.get("seal:k") == b"honest"
    assert_not_dragged(cluster, 0, "seal:probe")
    # What one node issued, every node of the cluster takes back.
    assert vset(n2, "seal:k", vget(n1, "seal:k")[0], "through n2") == b"OK"
    assert n1.get("seal:k") == b"through n2"


def test_a_far_future_version_from_a_replica_does_not_drag_the_clock(cluster: Cluster) -> None:
    """A version ten years ahead already stored on one replica (written
    straight into n2's worker) is still read (data is never refused), but
    the node that reads it does not adopt its timestamp; it counts it."""
    key = b"drift:stored"
    q, workers = 64, cluster.workers
    p = partition_of(key, q)
    w = next(w for w, r in enumerate(partition_ranges(q, workers)) if p in r)
    sock = cluster.members[1].data_dir / "run" / f"worker-{w}.sock"
    far = make_hlc(int(time.time() * 1000) + TEN_YEARS_MS)
    version = plain_version(ActorId(b"intruder#1"), far, b"stored ahead")

    async def write() -> None:
        async with ShardClient(str(sock), timeout_s=10) as client:
            await client.write(p, key, version, "lww")

    asyncio.run(write())
    ignored = clock_info(cluster, 0)["peer_timestamps_ignored"]
    r = cluster.client(0)
    assert r.execute_command("GET", key, "R", "3") == b"stored ahead"  # type: ignore[no-untyped-call]
    assert clock_info(cluster, 0)["peer_timestamps_ignored"] > ignored
    assert_not_dragged(cluster, 0, "drift:probe2")


def test_a_counter_near_2_64_is_refused_and_its_batch_still_goes_out(cluster: Cluster) -> None:
    """Before the fix the VSET's dot overflowed uint64, the encoder raised
    and every request queued with it for that peer was dropped: the SETs
    pipelined around it failed with NOQUORUM ... timeout."""
    n1 = cluster.client(0)
    assert n1.set("drift:big", "x") is True
    actor, _ = own_counter(n1, "drift:big", "n1")
    pipe = n1.pipeline(transaction=False)
    for i in range(20):
        pipe.set(f"drift:batch:a{i}", i)
    pipe.execute_command(  # type: ignore[no-untyped-call]
        "VSET", "drift:big", forged("drift:big", actor, MAX_COUNTER), "overflow")
    for i in range(20):
        pipe.set(f"drift:batch:b{i}", i)
    started = time.monotonic()
    out = pipe.execute(raise_on_error=False)
    assert time.monotonic() - started < 2.0  # nothing waited for a timeout
    assert out[:20] == [True] * 20 and out[21:] == [True] * 20
    assert isinstance(out[20], redis.ResponseError)
    assert "invalid context: counter for n1#" in str(out[20])
    assert n1.get("drift:big") == b"x"
    assert n1.mget([f"drift:batch:b{i}" for i in range(20)]) == [
        str(i).encode() for i in range(20)]
    assert_not_dragged(cluster, 0, "drift:probe3")


def test_malformed_contexts_get_a_clear_error(cluster: Cluster) -> None:
    n1 = cluster.client(0)
    bad = {
        b"\x03\x90": "unknown format version 3",
        b"\x02\x92\x90\x92\x01\xa4n1#1": "floor: actor must be 1..255 bytes",
        b"\x01\x91\x92\xc4\x04n1#1\xff": "counter -1 out of 1..2\\*\\*64-1",
        b"\x01\x91\x92\xc4\x04n1#1\xca\x3f\x80\x00\x00": "counter must be an int",
        b"\x01\x90\x00": "malformed msgpack",
        b"\x01\x91\x92\xc4\x04n1#1\x01\x00": "malformed msgpack",
    }
    for context, why in bad.items():
        with pytest.raises(redis.ResponseError, match=f"^invalid context: .*{why}"):
            vset(n1, "drift:bad", SEAL.seal(b"drift:bad", context), "v")
    assert n1.set("drift:bad", "fine") is True


def test_a_node_whose_clock_runs_ahead_cannot_get_its_writes_acknowledged(
    tmp_path: Path,
) -> None:
    """n3's clock runs ten minutes ahead, past the default bound: n1 and n2
    refuse its replica writes, so a SET through n3 fails with NOQUORUM
    naming the clock instead of being acknowledged with a timestamp that
    would beat every write for ten minutes; reading the copy n3 kept does
    not drag n1's clock; writes through n1 and n2 go on."""
    c = Cluster(tmp_path, nodes=3, n=3)
    set_option(c, 2, "node", "clock_offset_ms", 600_000)
    try:
        c.start()
        n1, n3 = c.client(0), c.client(2)
        with pytest.raises(redis.ResponseError,
                           match=r"^NOQUORUM needed 2 acks, got [01] .*ms ahead of this node's "
                                 r"clock \(max_clock_drift_ms = 60000\)"):
            n3.set("skew:k", "from n3")
        assert all(clock_info(c, i)["peer_writes_refused"] >= 1 for i in (0, 1))
        wait_for("n1 reads the copy n3 kept",
                 lambda: n1.execute_command(  # type: ignore[no-untyped-call]
                     "GET", "skew:k", "R", "3") == b"from n3", 10)
        assert clock_info(c, 0)["peer_timestamps_ignored"] >= 1
        assert_not_dragged(c, 0, "skew:probe")
        assert n1.set("skew:ok", "v") is True
        assert c.client(1).get("skew:ok") == b"v"
    finally:
        c.close()
