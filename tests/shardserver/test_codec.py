"""Shard protocol codec: round trips, framing, and garbage from the wire."""

from __future__ import annotations

import contextlib
import struct
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardserver.protocol import codec, merkle
from shardserver.protocol import messages as m
from shardserver.protocol.codec import FrameDecoder
from shardserver.protocol.errors import ProtocolError
from shardserver.protocol.messages import Reply, Status
from shardserver.protocol.vclock import ActorId, VClock
from shardserver.protocol.versions import SiblingSet, Version, as_plain, merge
from tests.shardserver.strategies import actors_st, clocks

HLC = 1_700_000_000_000 << 16
ACTOR = ActorId(b"n1#1")


def ver(value: bytes | None = b"v", hlc: int = HLC) -> Version:
    return Version(VClock.of({ACTOR: hlc}), hlc, ACTOR, value)


def one_frame(data: bytes) -> bytes:
    dec = FrameDecoder()
    dec.feed(data)
    frames = dec.frames()
    assert len(frames) == 1
    return frames[0]


def envelope_frame(envelopes: list[Any]) -> bytes:
    data: bytes = msgpack.packb(envelopes, use_bin_type=True)
    return data


# --- strategies ----------------------------------------------------------------

partitions = st.integers(0, m.MAX_PARTITION)
keys = st.binary(min_size=1, max_size=64)
def _floors(v: Version) -> st.SearchStrategy[Version]:
    """``v`` without a floor, as a plain write, or with a floor below its id."""
    below = st.integers(0, max(v.hlc - 1, 0)).map(
        lambda h: replace(v, floor=(h, ACTOR)) if h < v.hlc else v)
    return st.one_of(st.just(v), st.just(as_plain(v)), below)


versions_st = st.builds(
    Version,
    clock=clocks(1 << 20, max_size=4).filter(lambda c: bool(c.entries)),
    hlc=st.integers(0, (1 << 64) - 1),
    actor=actors_st,
    value=st.none() | st.binary(max_size=32),
).flatmap(_floors)


def _fold(vs: list[Version]) -> SiblingSet:
    out: SiblingSet = ()
    for v in vs:
        out = merge(out, v).siblings
    return out


sibling_sets = st.lists(versions_st, max_size=4).map(_fold)

requests_st: st.SearchStrategy[m.Request] = st.one_of(
    st.just(m.Ping()),
    st.builds(
        m.ReplicaWrite, partitions, keys, versions_st, st.sampled_from(["merge", "lww"]),
        st.none() | st.text(min_size=1, max_size=12),
    ),
    st.builds(m.ReplicaWriteSet, partitions, keys, sibling_sets),
    st.builds(m.ReplicaRead, partitions, keys),
    st.builds(m.ScanPartition, partitions, st.none() | keys, st.integers(1, m.MAX_SCAN_LIMIT)),
    st.builds(m.DropPartition, partitions, st.just(1), st.none() | st.integers(0, codec.MAX_MARK))
    | st.builds(m.DropPartition, st.integers(0, 100), st.integers(1, 100)),
    st.just(m.Flush()),
    st.builds(m.Compact, st.none() | partitions),
    st.just(m.Stats()),
    st.builds(m.SetPartitions, st.lists(partitions, max_size=8).map(tuple)),
    st.builds(m.Gossip, st.dictionaries(st.text(max_size=4), st.integers(0, 9), max_size=3)),
    st.builds(m.Admin, st.dictionaries(st.text(max_size=4), st.integers(0, 9), max_size=3)),
    st.just(m.FlushAll()),
    st.integers(0, merkle.DEPTH).flatmap(lambda d: st.builds(
        m.TreeLevel, partitions, st.just(d),
        st.lists(st.integers(0, merkle.FANOUT**d - 1), min_size=1, max_size=40, unique=True)
        .map(tuple),
    )),
    st.builds(
        m.BucketDigests, partitions,
        st.lists(st.integers(0, merkle.LEAVES - 1), min_size=1, max_size=40, unique=True)
        .map(tuple),
    ),
    st.builds(m.ReplicaRepairSet, partitions, keys, sibling_sets),
)
ids = st.integers(0, (1 << 64) - 1)
plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text(max_size=8)
    | st.binary(max_size=8) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=4),
    max_leaves=10,
)
replies_st = st.builds(Reply, st.just(Status.OK), plain) | st.builds(
    Reply, st.sampled_from([s for s in Status if s is not Status.OK]), st.text(max_size=20)
)


# --- round trips -----------------------------------------------------------------


@pytest.mark.property
@settings(max_examples=200)
@given(st.lists(st.tuples(ids, requests_st), max_size=8))
def test_requests_round_trip(batch: list[tuple[int, m.Request]]) -> None:
    assert codec.decode_requests(one_frame(codec.encode_requests(batch))) == batch


@pytest.mark.property
@settings(max_examples=200)
@given(st.lists(st.tuples(ids, replies_st), max_size=8))
def test_replies_round_trip(batch: list[tuple[int, Reply]]) -> None:
    assert codec.decode_replies(one_frame(codec.encode_replies(batch))) == batch


def test_every_request_type_has_an_op() -> None:
    assert len(set(m.OP_OF.values())) == len(m.OP_OF) == 18
    assert m.op_of(m.ReplicaRead(1, b"k")) == "read"


def test_write_of_the_four_field_form_still_decodes() -> None:
    env = codec.encode_requests([(1, m.ReplicaWrite(2, b"k", ver(b"v"), "lww"))])
    body = msgpack.unpackb(env[4:])
    body[0][2] = body[0][2][:4]  # a frame from before hint_for existed
    short = msgpack.packb(body)
    ((_, req),) = codec.decode_requests(short)
    assert isinstance(req, m.ReplicaWrite) and req.hint_for is None and req.key == b"k"


def test_drop_of_the_shorter_forms_still_decodes_and_a_marked_one_names_one_partition() -> None:
    for args, want in (([5], m.DropPartition(5)), ([5, 3], m.DropPartition(5, 3)),
                       ([5, 1, 42], m.DropPartition(5, 1, 42))):
        frame = msgpack.packb([[1, "drop", args]])
        assert codec.decode_requests(frame) == [(1, want)]
    with pytest.raises(ProtocolError, match=r"drop\.if_mark: a conditional drop names one"):
        codec.decode_requests(msgpack.packb([[1, "drop", [5, 2, 42]]]))


def test_a_version_travels_with_its_floor_and_without_one_as_before() -> None:
    plain = as_plain(ver(b"v"))
    env = codec.encode_requests([(1, m.ReplicaWrite(2, b"k", plain, "lww"))])
    wire = msgpack.unpackb(env[4:])[0][2][2]
    assert wire[4] == [HLC, ACTOR]
    ((_, req),) = codec.decode_requests(env[4:])
    assert isinstance(req, m.ReplicaWrite) and req.version == plain
    old = codec.encode_requests([(1, m.ReplicaWrite(2, b"k", ver(b"v"), "lww"))])
    assert len(msgpack.unpackb(old[4:])[0][2][2]) == 4  # no floor: the 4-field form


def test_frame_layout_is_length_prefixed_msgpack_array() -> None:
    data = codec.encode_requests([(7, m.ReplicaRead(3, b"k"))])
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert msgpack.unpackb(data[4:]) == [[7, "read", [3, b"k"]]]


def test_unencodable_reply_payload_becomes_internal_for_its_id_only() -> None:
    data = codec.encode_replies([(1, Reply(Status.OK, object())), (2, Reply(Status.OK, 5))])
    (r1, r2) = codec.decode_replies(one_frame(data))
    assert r1[0] == 1 and r1[1].status is Status.INTERNAL and "unencodable" in r1[1].message
    assert r2 == (2, Reply(Status.OK, 5))


# --- framing ---------------------------------------------------------------------


@pytest.mark.property
@settings(max_examples=100)
@given(st.lists(st.tuples(ids, requests_st), min_size=1, max_size=4), st.data())
def test_frames_survive_any_split(batch: list[tuple[int, m.Request]], data: st.DataObject) -> None:
    stream = codec.encode_requests(batch) * 3
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = FrameDecoder()
    got: list[bytes] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        dec.feed(stream[a:b])
        got.extend(dec.frames())
    assert [codec.decode_requests(f) for f in got] == [batch] * 3
    assert dec.buffered == 0


def test_partial_frame_waits_for_more_bytes() -> None:
    data = codec.encode_requests([(1, m.Ping())])
    dec = FrameDecoder()
    dec.feed(data[:-1])
    assert dec.frames() == []
    dec.feed(data[-1:])
    assert len(dec.frames()) == 1


@pytest.mark.parametrize("length", [0, 1025])
def test_oversized_or_empty_frame_is_refused_and_decoder_stays_failed(length: int) -> None:
    dec = FrameDecoder(max_frame=1024)
    dec.feed(struct.pack(">I", length) + b"\x90")
    with pytest.raises(ProtocolError, match="frame length"):
        dec.frames()
    with pytest.raises(ProtocolError):
        dec.frames()


# --- malformed envelopes name the field ------------------------------------------

GOOD_VERSION = codec.encode_version(ver())


@pytest.mark.parametrize(
    ("envelopes", "field"),
    [
        ({"a": 1}, "expected an array"),
        ([[1, "read"]], "envelope 0"),
        ([[-1, "read", [1, b"k"]]], "request_id"),
        ([[True, "ping", []]], "request_id"),
        ([[1 << 64 - 1, "nope", []]], "unknown op"),
        ([[1, "read", {}]], "args"),
        ([[1, "read", [1]]], "read: expected 2 args"),
        ([[1, "read", [1 << 16, b"k"]]], "partition"),
        ([[1, "read", [1, "k"]]], "key"),
        ([[1, "read", [1, b""]]], "key"),
        ([[1, "read", [1, b"k" * 1025]]], "key"),
        ([[1, "write", [1, b"k", GOOD_VERSION, "max"]]], "write.mode"),
        ([[1, "write", [1, b"k", GOOD_VERSION[:3], "lww"]]], "write.version"),
        ([[1, "write", [1, b"k", [[[b"a", 0]], 1, b"a", b"v"], "lww"]]], "write.version.clock"),
        ([[1, "write", [1, b"k", [[], -1, b"a", b"v"], "lww"]]], "write.version.hlc"),
        ([[1, "write", [1, b"k", [[], 1, b"", b"v"], "lww"]]], "write.version.actor"),
        ([[1, "write", [1, b"k", [[], 1, b"a", "v"], "lww"]]], "write.version.value"),
        ([[1, "write", [1, b"k", [[], 1, b"a", b"v", [1]], "lww"]]], "write.version.floor"),
        ([[1, "write", [1, b"k", [[], 1, b"a", b"v", [2, b"a"]], "lww"]]],
         "write.version.floor: floor .* lies above the version's id"),
        ([[1, "write", [1, b"k", [[], 1, b"a", b"v", None, 5], "lww"]]], "write.version"),
        ([[1, "write_set", [1, b"k", b"\x02"]]], "write_set.siblings"),
        ([[1, "write_set", [1, b"k", []]]], "write_set.siblings"),
        ([[1, "scan", [1, None, 0]]], "scan.limit"),
        ([[1, "scan", [1, 5, 10]]], "scan.after"),
        ([[1, "set_partitions", [[1, "2"]]]], "set_partitions.partitions"),
        ([[1, "compact", [b"x"]]], "compact.partition"),
        ([[1, "ping", [1]]], "ping: expected 0 args"),
        ([[1, "tree_level", [1, 3, [0]]]], "tree_level.depth"),
        ([[1, "tree_level", [1, 0, [1]]]], "tree_level.indices"),
        ([[1, "tree_level", [1, 1, []]]], "tree_level.indices"),
        ([[1, "tree_level", [1, 1, [3, 3]]]], "tree_level.indices: duplicate"),
        ([[1, "tree_level", [1, 2, list(range(1025))]]], "tree_level.indices"),
        ([[1, "tree_level", [1, 1, [True]]]], "tree_level.indices"),
        ([[1, "bucket_digests", [1, [1024]]]], "bucket_digests.buckets"),
        ([[1, "bucket_digests", [1, 5]]], "bucket_digests.buckets"),
        ([[1, "bucket_digests", [1]]], "bucket_digests: expected 2 args"),
        ([[1, "repair_set", [1, b"k", b"\x02"]]], "repair_set.siblings"),
        ([[1, "repair_set", [1, b"", b"\x01\x90"]]], "key"),
    ],
)
def test_malformed_request_names_the_field(envelopes: Any, field: str) -> None:
    with pytest.raises(ProtocolError, match=field):
        codec.decode_requests(envelope_frame(envelopes))


def test_lenient_decode_fails_only_the_bad_envelope() -> None:
    payload = envelope_frame([[1, "read", [1, b"k"]], [2, "nope", []], [3, "ping", []]])
    got = codec.decode_requests_lenient(payload)
    assert got[0] == (1, m.ReplicaRead(1, b"k"))
    assert got[1][0] == 2 and isinstance(got[1][1], ProtocolError)
    assert got[2] == (3, m.Ping())


@pytest.mark.parametrize(
    ("envelopes", "field"),
    [
        ([[1, 0]], "reply 0"),
        ([["1", 0, None]], "request_id"),
        ([[1, 99, None]], "unknown status"),
        ([[1, 3, b"not text"]], "error message"),
        ([[1, 0, msgpack.ExtType(5, b"x")]], "payload"),
    ],
)
def test_malformed_reply_names_the_field(envelopes: Any, field: str) -> None:
    with pytest.raises(ProtocolError, match=field):
        codec.decode_replies(envelope_frame(envelopes))


def test_deeply_nested_payload_is_refused() -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ProtocolError, match="nested"):
        codec.decode_replies(envelope_frame([[1, 0, deep]]))
    with pytest.raises(ProtocolError):
        codec.decode_replies(b"\x91" * 100_000)


@pytest.mark.parametrize(
    ("request_", "payload", "ok"),
    [
        (m.ReplicaRead(1, b"k"), None, True),
        (m.ReplicaRead(1, b"k"), b"\x01\x90", True),
        (m.ReplicaRead(1, b"k"), 5, False),
        (m.ReplicaWrite(1, b"k", ver()), None, True),
        (m.ReplicaWrite(1, b"k", ver()), b"\x01\x90", True),  # a worker before blind writes
        (m.ReplicaWrite(1, b"k", ver()), 5, False),
        (m.ReplicaWriteSet(1, b"k", ()), None, False),
        (m.ScanPartition(1), {"items": [[b"k", b"\x01\x90"]], "next": b"k"}, True),
        (m.ScanPartition(1), {"items": [[b"k"]], "next": None}, False),
        (m.ScanPartition(1), {"next": None}, False),
        (m.Stats(), {"keys": 1}, True),
        (m.Ping(), [], False),
        (m.Flush(), None, True),
        (m.TreeLevel(1, 1, (0, 5)), bytes(32), True),
        (m.TreeLevel(1, 1, (0, 5)), bytes(16), False),
        (m.TreeLevel(1, 0, (0,)), [0], False),
        (m.BucketDigests(1, (3,)), [[b"k", bytes(8)]], True),
        (m.BucketDigests(1, (3,)), [], True),
        (m.BucketDigests(1, (3,)), [[b"k", bytes(7)]], False),
        (m.BucketDigests(1, (3,)), [[b"", bytes(8)]], False),
        (m.BucketDigests(1, (3,)), {"k": 1}, False),
        (m.ReplicaRepairSet(1, b"k", ()), b"\x01\x90", True),
        (m.ReplicaRepairSet(1, b"k", ()), None, False),
    ],
)
def test_check_payload(request_: m.Request, payload: Any, ok: bool) -> None:
    reply = Reply(Status.OK, payload)
    if ok:
        assert codec.check_payload(request_, reply) is reply
    else:
        with pytest.raises(ProtocolError):
            codec.check_payload(request_, reply)
    failed = Reply(Status.OVERLOADED, "busy")
    assert codec.check_payload(request_, failed) is failed


# --- garbage ---------------------------------------------------------------------


def _decode_anything(payload: bytes) -> None:
    for decode in (codec.decode_requests, codec.decode_replies, codec.decode_requests_lenient):
        with contextlib.suppress(ProtocolError):
            decode(payload)


@pytest.mark.property
@settings(max_examples=200)
@given(st.binary(max_size=256))
def test_random_bytes_raise_protocol_error_or_decode(data: bytes) -> None:
    _decode_anything(data)
    dec = FrameDecoder(max_frame=128)
    dec.feed(data)
    try:
        for payload in dec.frames():
            _decode_anything(payload)
    except ProtocolError:
        pass


@pytest.mark.property
@settings(max_examples=200)
@given(st.lists(st.tuples(ids, requests_st), min_size=1, max_size=3), st.data())
def test_mutated_frames_raise_protocol_error_or_decode(
    batch: list[tuple[int, m.Request]], data: st.DataObject
) -> None:
    payload = bytearray(codec.encode_requests(batch)[4:])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    _decode_anything(bytes(payload))


@pytest.mark.property
@settings(max_examples=200)
@given(st.recursive(
    st.none() | st.integers(-(1 << 63), (1 << 64) - 1) | st.binary(max_size=4) | st.text(max_size=4)
    | st.sampled_from(list(m.OPS)),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
))
def test_random_msgpack_structures_raise_protocol_error_or_decode(obj: Any) -> None:
    _decode_anything(envelope_frame(obj))
    _decode_anything(envelope_frame([obj]))
    _decode_anything(envelope_frame([[1, "write", obj]]))


def test_reply_frames_are_split_under_the_limit_and_decode_to_the_same_replies() -> None:
    replies = [(i, Reply(Status.OK, bytes([i % 256]) * 3000)) for i in range(40)]
    frames = codec.encode_reply_frames(replies, max_frame=10_000)
    assert len(frames) > 1
    out = []
    for frame in frames:
        assert len(frame) - 4 <= 10_000
        out += codec.decode_replies(one_frame(frame))
    assert out == replies
    (single,) = codec.encode_reply_frames([(7, Reply(Status.OK, b"x" * 20_000))], 10_000)
    ((rid, reply),) = codec.decode_replies(one_frame(single))
    assert rid == 7 and reply.status is Status.INTERNAL and "frame limit" in reply.message
