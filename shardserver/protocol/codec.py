"""Sans-IO framing of the shard protocol (coordinator ⇄ worker, DESIGN §2).

A connection carries frames both ways; one frame batches many envelopes::

    +----------------------+------------------------------------------+
    | length: u32 BE       | msgpack array of envelopes (length bytes) |
    +----------------------+------------------------------------------+

    request envelope:  [request_id: uint64, op: str, args: array]
    reply envelope:    [request_id: uint64, status: uint, payload]

Request ids are chosen by the client and echoed by the worker; replies may
come back in any order and in different frames than their requests. The ops,
their args and reply payloads are listed in docs/formats/shard-protocol.md
and in ``messages``. A version travels as ``[clock, hlc, actor, value]``,
with a fifth field ``[hlc, actor]`` when it has a floor (clock as in
``vclock.encode``), a sibling set as ``encode_siblings`` bytes.

Everything that comes off the wire is checked field by field: anything
malformed raises ``ProtocolError`` (a ValueError) naming the field, never
another exception and never an assert.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from shardserver.protocol import merkle, vclock, versions
from shardserver.protocol import messages as m
from shardserver.protocol.errors import ProtocolError, VersionFormatError
from shardserver.protocol.messages import Reply, Request, Status
from shardserver.protocol.vclock import MAX_ACTOR_BYTES, ActorId

__all__ = [
    "DEFAULT_MAX_FRAME", "FrameDecoder", "ProtocolError", "Reply", "Request", "Status",
    "check_payload", "decode_replies", "decode_requests", "decode_requests_lenient",
    "encode_envelopes", "encode_replies", "encode_requests", "frame_of",
]

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 64 << 20
MAX_REQUEST_ID = (1 << 64) - 1
MAX_HLC = (1 << 64) - 1
#: Nesting deeper than this in a free-form payload (stats) is garbage.
MAX_PAYLOAD_DEPTH = 32
#: Write marks (shardserver.fence) are 62-bit counters; leave them room.
MAX_MARK = (1 << 63) - 1


# --- frames ------------------------------------------------------------------


class FrameDecoder:
    """Split a byte stream into frame payloads.

    After a ProtocolError the stream is out of sync: the decoder keeps raising
    and the caller must drop the connection.
    """

    __slots__ = ("_buf", "_error", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError(f"max_frame must be >= 1, got {max_frame}")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def frames(self) -> list[bytes]:
        """Every complete frame payload fed so far, in order."""
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length == 0 or length > self.max_frame:
                self._error = ProtocolError(f"frame length {length} outside 1..{self.max_frame}")
                del buf[:pos]
                raise self._error
            end = pos + HEADER.size + length
            if end > len(buf):
                break
            out.append(bytes(buf[pos + HEADER.size : end]))
            pos = end
        del buf[:pos]
        return out


#: Bytes a frame payload adds to its envelopes (the array header, at most).
FRAME_OVERHEAD = 5


def frame_of(envelopes: list[bytes]) -> bytes:
    """A frame (length prefix included) of already packed envelopes."""
    payload = msgpack.Packer().pack_array_header(len(envelopes)) + b"".join(envelopes)
    if len(payload) > 0xFFFFFFFF:
        raise ProtocolError(f"frame payload too large: {len(payload)} bytes")
    return HEADER.pack(len(payload)) + bytes(payload)


def _unpack(payload: bytes, what: str) -> list[Any]:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False, timestamp=0)
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as e:
        raise ProtocolError(f"{what}: malformed msgpack ({e})") from e
    if not isinstance(obj, list):
        raise ProtocolError(f"{what}: expected an array of envelopes, got {type(obj).__name__}")
    return obj


# --- field checks ------------------------------------------------------------


def _int(v: object, field: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{field}: expected an int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ProtocolError(f"{field}: {v} outside {lo}..{hi}")
    return v


def _partition(v: object, field: str = "partition") -> int:
    return _int(v, field, 0, m.MAX_PARTITION)


def _bytes(v: object, field: str, lo: int, hi: int) -> bytes:
    if not isinstance(v, bytes):
        raise ProtocolError(f"{field}: expected bytes, got {type(v).__name__}")
    if not lo <= len(v) <= hi:
        raise ProtocolError(f"{field}: length {len(v)} outside {lo}..{hi}")
    return v


def _key(v: object, field: str = "key") -> bytes:
    return _bytes(v, field, 1, m.MAX_KEY_BYTES)


def _args(args: list[Any], n: int, op: str) -> list[Any]:
    if len(args) != n:
        raise ProtocolError(f"{op}: expected {n} args, got {len(args)}")
    return args


def encode_version(v: versions.Version) -> list[Any]:
    out = [vclock.encode(v.clock), v.hlc, v.actor, v.value]
    if v.floor is not None:
        out.append(versions.encode_floor(v.floor))
    return out


def decode_version(obj: object, field: str = "version") -> versions.Version:
    """``[clock, hlc, actor, value]`` (no floor) or ``[clock, hlc, actor,
    value, floor]``."""
    if not isinstance(obj, list) or len(obj) not in (4, 5):
        raise ProtocolError(f"{field}: expected [clock, hlc, actor, value(, floor)]")
    raw_clock, hlc, actor, value = obj[:4]
    try:
        clock = vclock.decode(raw_clock, f"{field}.clock")
    except VersionFormatError as e:
        raise ProtocolError(str(e)) from e
    _int(hlc, f"{field}.hlc", 0, MAX_HLC)
    _bytes(actor, f"{field}.actor", 1, MAX_ACTOR_BYTES)
    if value is not None and not isinstance(value, bytes):
        raise ProtocolError(f"{field}.value: expected bytes or nil, got {type(value).__name__}")
    floor = None
    if len(obj) == 5:
        try:
            floor = versions.decode_floor(obj[4], f"{field}.floor", (hlc, ActorId(actor)))
        except VersionFormatError as e:
            raise ProtocolError(str(e)) from e
    return versions.Version(clock, hlc, ActorId(actor), value, floor)


def decode_siblings(obj: object, field: str) -> versions.SiblingSet:
    if not isinstance(obj, bytes):
        raise ProtocolError(f"{field}: expected encoded siblings (bytes), got {type(obj).__name__}")
    try:
        return versions.decode_siblings(obj)
    except VersionFormatError as e:
        raise ProtocolError(f"{field}: {e}") from e


# --- requests ----------------------------------------------------------------


#: Args are the dataclass fields in order; these fields need a wire form.
_FIELD_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "version": encode_version,
    "siblings": versions.encode_siblings,
    "partitions": list,
    "indices": list,
    "buckets": list,
}
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in m.OP_OF}


def _request_args(req: Request) -> list[Any]:
    enc = _FIELD_ENCODERS
    return [enc[f](getattr(req, f)) if f in enc else getattr(req, f) for f in _FIELDS[type(req)]]


def _d_write(a: list[Any]) -> Request:
    # hint_for (5th) is optional so frames of the 4-field form still decode.
    p, key, ver, mode, hint_for = _args([*a, None] if len(a) == 4 else a, 5, "write")
    if mode not in ("merge", "lww"):
        raise ProtocolError(f"write.mode: expected 'merge' or 'lww', got {mode!r}")
    if hint_for is not None and not (isinstance(hint_for, str) and 0 < len(hint_for) <= 256):
        raise ProtocolError("write.hint_for: expected a node id (1..256 chars) or nil")
    version = decode_version(ver, "write.version")
    return m.ReplicaWrite(_partition(p), _key(key), version, mode, hint_for)


def _d_map(cls: Callable[[Any], Request], op: str) -> Callable[[list[Any]], Request]:
    """Decoder of an op whose only arg is a plain map (gossip, admin, hello)."""

    def decode(a: list[Any]) -> Request:
        (payload,) = _args(a, 1, op)
        if not isinstance(payload, dict):
            raise ProtocolError(f"{op}.payload: expected a map")
        _check_plain(payload, f"{op}.payload")
        return cls(payload)

    return decode


def _d_write_set(a: list[Any]) -> Request:
    p, key, sibs = _args(a, 3, "write_set")
    return m.ReplicaWriteSet(_partition(p), _key(key), decode_siblings(sibs, "write_set.siblings"))


def _d_read(a: list[Any]) -> Request:
    p, key = _args(a, 2, "read")
    return m.ReplicaRead(_partition(p), _key(key))


def _d_scan(a: list[Any]) -> Request:
    p, after, limit = _args(a, 3, "scan")
    if after is not None:
        _key(after, "scan.after")
    return m.ScanPartition(_partition(p), after, _int(limit, "scan.limit", 1, m.MAX_SCAN_LIMIT))


def _d_repair_set(a: list[Any]) -> Request:
    p, key, sibs = _args(a, 3, "repair_set")
    siblings = decode_siblings(sibs, "repair_set.siblings")
    return m.ReplicaRepairSet(_partition(p), _key(key), siblings)


def _int_list(v: object, field: str, hi: int) -> tuple[int, ...]:
    """1..hi+1 distinct ints in 0..hi (node indices, leaf buckets)."""
    if not isinstance(v, list) or not 1 <= len(v) <= hi + 1:
        raise ProtocolError(f"{field}: expected an array of 1..{hi + 1} ints")
    out = tuple(_int(x, f"{field}[]", 0, hi) for x in v)
    if len(set(out)) != len(out):
        raise ProtocolError(f"{field}: duplicate entries")
    return out


def _d_tree_level(a: list[Any]) -> Request:
    p, depth, indices = _args(a, 3, "tree_level")
    d = _int(depth, "tree_level.depth", 0, merkle.DEPTH)
    nodes = _int_list(indices, "tree_level.indices", merkle.FANOUT**d - 1)
    return m.TreeLevel(_partition(p), d, nodes)


def _d_bucket_digests(a: list[Any]) -> Request:
    p, buckets = _args(a, 2, "bucket_digests")
    return m.BucketDigests(
        _partition(p), _int_list(buckets, "bucket_digests.buckets", merkle.LEAVES - 1)
    )


def _d_set_partitions(a: list[Any]) -> Request:
    (parts,) = _args(a, 1, "set_partitions")
    if not isinstance(parts, list) or len(parts) > m.MAX_PARTITION + 1:
        raise ProtocolError("set_partitions.partitions: expected an array of partition ids")
    return m.SetPartitions(tuple(_partition(p, "set_partitions.partitions[]") for p in parts))


def _d_compact(a: list[Any]) -> Request:
    (p,) = _args(a, 1, "compact")
    return m.Compact(None if p is None else _partition(p, "compact.partition"))


def _d_drop(a: list[Any]) -> Request:
    # count and if_mark are optional so frames of the shorter forms still decode.
    defaults = (1, None)  # count, if_mark
    p, count, if_mark = _args([*a, *defaults[len(a) - 1:]] if 1 <= len(a) < 3 else a, 3, "drop")
    first = _partition(p, "drop.partition")
    n = _int(count, "drop.count", 1, m.MAX_PARTITION + 1 - first)
    if if_mark is None:
        return m.DropPartition(first, n)
    if n != 1:
        raise ProtocolError("drop.if_mark: a conditional drop names one partition (count 1)")
    return m.DropPartition(first, n, _int(if_mark, "drop.if_mark", 0, MAX_MARK))


def _d_noargs(cls: Callable[[], Request], op: str) -> Callable[[list[Any]], Request]:
    def decode(a: list[Any]) -> Request:
        _args(a, 0, op)
        return cls()

    return decode


_DECODERS: dict[str, Callable[[list[Any]], Request]] = {
    "ping": _d_noargs(m.Ping, "ping"),
    "write": _d_write,
    "write_set": _d_write_set,
    "read": _d_read,
    "scan": _d_scan,
    "drop": _d_drop,
    "flush": _d_noargs(m.Flush, "flush"),
    "compact": _d_compact,
    "stats": _d_noargs(m.Stats, "stats"),
    "set_partitions": _d_set_partitions,
    "gossip": _d_map(m.Gossip, "gossip"),
    "admin": _d_map(m.Admin, "admin"),
    "flush_all": _d_noargs(m.FlushAll, "flush_all"),
    "tree_level": _d_tree_level,
    "bucket_digests": _d_bucket_digests,
    "repair_set": _d_repair_set,
    "hello": _d_map(m.Hello, "hello"),
    "attach": _d_map(m.Attach, "attach"),
}


def encode_requests(requests: Iterable[tuple[int, Request]]) -> bytes:
    """One frame carrying every ``(request_id, request)``; raises
    ProtocolError if one of them cannot be encoded."""
    envs = []
    for _, env in encode_envelopes(requests):
        if isinstance(env, ProtocolError):
            raise env
        envs.append(env)
    return frame_of(envs)


def encode_envelopes(
    requests: Iterable[tuple[int, Request]],
) -> list[tuple[int, bytes | ProtocolError]]:
    """Each request's envelope, or the ProtocolError saying why msgpack
    cannot encode it (an int past 64 bits, a wrong type): a caller batching
    many requests into one frame fails only that one (``frame_of`` joins
    the rest)."""
    packer = msgpack.Packer(use_bin_type=True)
    out: list[tuple[int, bytes | ProtocolError]] = []
    for rid, req in requests:
        op = m.OP_OF[type(req)]
        try:
            out.append((rid, packer.pack([rid, op, _request_args(req)])))
        except (TypeError, ValueError, OverflowError) as e:
            packer.reset()
            out.append((rid, ProtocolError(f"{op}: unencodable request ({type(e).__name__}: {e})")))
    return out


def _request_id(env: object, i: int) -> int:
    if not isinstance(env, list) or len(env) != 3:
        raise ProtocolError(f"envelope {i}: expected [request_id, op, args]")
    return _int(env[0], f"envelope {i}.request_id", 0, MAX_REQUEST_ID)


def _decode_body(env: list[Any], i: int) -> Request:
    op, args = env[1], env[2]
    if not isinstance(op, str) or op not in _DECODERS:
        raise ProtocolError(f"envelope {i}.op: unknown op {op!r}")
    if not isinstance(args, list):
        raise ProtocolError(f"envelope {i}.args: expected an array, got {type(args).__name__}")
    return _DECODERS[op](args)


def decode_requests(payload: bytes) -> list[tuple[int, Request]]:
    """Inverse of ``encode_requests`` (without the length prefix)."""
    envs = _unpack(payload, "request frame")
    return [(_request_id(env, i), _decode_body(env, i)) for i, env in enumerate(envs)]


def decode_requests_lenient(payload: bytes) -> list[tuple[int, Request | ProtocolError]]:
    """Like ``decode_requests``, but a bad op or bad args fail only their envelope.

    A worker answers those with BAD_REQUEST under their id. A frame that is not
    an array, or an envelope without a readable id, still raises.
    """
    envs = _unpack(payload, "request frame")
    out: list[tuple[int, Request | ProtocolError]] = []
    for i, env in enumerate(envs):
        rid = _request_id(env, i)
        try:
            out.append((rid, _decode_body(env, i)))
        except ProtocolError as e:
            out.append((rid, e))
    return out


# --- replies -----------------------------------------------------------------


def encode_replies(replies: Iterable[tuple[int, Reply]]) -> bytes:
    """One frame carrying every ``(request_id, reply)``.

    A payload msgpack cannot encode becomes an INTERNAL reply for its id, so
    one bad handler result never costs the other replies of the frame.
    """
    packer = msgpack.Packer(use_bin_type=True)
    envs: list[bytes] = []
    for rid, reply in replies:
        try:
            envs.append(packer.pack([rid, int(reply.status), reply.payload]))
        except (TypeError, ValueError, OverflowError) as e:
            packer.reset()
            msg = f"unencodable reply payload: {type(e).__name__}: {e}"
            envs.append(packer.pack([rid, int(Status.INTERNAL), msg]))
    return frame_of(envs)


def encode_reply_frames(
    replies: list[tuple[int, Reply]], max_frame: int = DEFAULT_MAX_FRAME
) -> list[bytes]:
    """``encode_replies`` split into frames whose payload stays within
    ``max_frame`` (a client drops the connection on a bigger frame, failing
    everything in flight on it); a single reply too big on its own becomes
    INTERNAL for its id."""
    frame = encode_replies(replies)
    if len(frame) - HEADER.size <= max_frame:
        return [frame]
    if len(replies) == 1:
        msg = f"reply of {len(frame)} bytes exceeds the frame limit {max_frame}"
        return [encode_replies([(replies[0][0], Reply(Status.INTERNAL, msg))])]
    half = len(replies) // 2
    return encode_reply_frames(replies[:half], max_frame) + encode_reply_frames(
        replies[half:], max_frame
    )


_PLAIN = (type(None), bool, int, float, str, bytes)


def _check_plain(obj: object, field: str) -> None:
    """Free-form payloads hold plain msgpack values only (no ext types)."""
    stack: list[tuple[object, int]] = [(obj, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            raise ProtocolError(f"{field}: nested deeper than {MAX_PAYLOAD_DEPTH}")
        if isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, dict):
            for k, x in v.items():
                stack.append((k, depth + 1))
                stack.append((x, depth + 1))
        elif not isinstance(v, _PLAIN):
            raise ProtocolError(f"{field}: unexpected {type(v).__name__} value")


#: Status by wire code, for the common case in ``decode_replies``.
_STATUS_OF = {s.value: s for s in Status}


def decode_replies(payload: bytes) -> list[tuple[int, Reply]]:
    """Inverse of ``encode_replies``; payloads are checked by ``check_payload``."""
    out: list[tuple[int, Reply]] = []
    for i, env in enumerate(_unpack(payload, "reply frame")):
        # The common case first, with the same checks and no field names
        # formatted: [id, known status, nil | bytes | (any status) str].
        if type(env) is list and len(env) == 3:
            rid, code, body = env
            if (type(rid) is int and 0 <= rid <= MAX_REQUEST_ID and type(code) is int
                    and (status := _STATUS_OF.get(code)) is not None
                    and (body is None or type(body) is str
                         or (type(body) is bytes and status is Status.OK))):
                out.append((rid, Reply(status, body)))
                continue
        if not isinstance(env, list) or len(env) != 3:
            raise ProtocolError(f"reply {i}: expected [request_id, status, payload]")
        rid = _int(env[0], f"reply {i}.request_id", 0, MAX_REQUEST_ID)
        code = _int(env[1], f"reply {i}.status", 0, 0xFF)
        try:
            status = Status(code)
        except ValueError:
            raise ProtocolError(f"reply {i}.status: unknown status {code}") from None
        body = env[2]
        if status is not Status.OK and body is not None and not isinstance(body, str):
            raise ProtocolError(f"reply {i}.payload: error message must be a str")
        _check_plain(body, f"reply {i}.payload")
        out.append((rid, Reply(status, body)))
    return out


def check_payload(request: Request, reply: Reply) -> Reply:
    """Check an OK reply's payload has the shape ``request`` calls for.

    Returns the reply unchanged; raises ProtocolError naming the field.
    Sibling bytes are checked for type here and decoded by the caller.
    """
    if reply.status is not Status.OK:
        return reply
    p = reply.payload
    op = m.OP_OF[type(request)]
    match request:
        case m.ReplicaWrite():
            # nil; workers from before blind writes answered with the set
            if p is not None and not isinstance(p, bytes):
                raise ProtocolError(f"write reply: expected nil, got {type(p).__name__}")
        case m.ReplicaWriteSet() | m.ReplicaRepairSet():
            if not isinstance(p, bytes):
                raise ProtocolError(f"{op} reply: expected siblings bytes, got {type(p).__name__}")
        case m.ReplicaRead():
            if p is not None and not isinstance(p, bytes):
                raise ProtocolError(f"read reply: expected bytes or nil, got {type(p).__name__}")
        case m.ScanPartition():
            if not isinstance(p, dict) or not isinstance(p.get("items"), list):
                raise ProtocolError("scan reply: expected {'items': [...], 'next': ...}")
            for j, item in enumerate(p["items"]):
                if not (isinstance(item, list) and len(item) == 2):
                    raise ProtocolError(f"scan reply items[{j}]: expected [key, siblings]")
                _key(item[0], f"scan reply items[{j}].key")
                _bytes(item[1], f"scan reply items[{j}].siblings", 1, DEFAULT_MAX_FRAME)
            if p.get("next") is not None:
                _key(p["next"], "scan reply next")
            if p.get("mark") is not None:
                _int(p["mark"], "scan reply mark", 0, MAX_MARK)
        case m.TreeLevel():
            want = merkle.NODE_BYTES * len(request.indices)
            if not isinstance(p, bytes) or len(p) != want:
                raise ProtocolError(f"tree_level reply: expected {want} bytes of node values")
        case m.BucketDigests():
            if not isinstance(p, list):
                raise ProtocolError("bucket_digests reply: expected [[key, digest], ...]")
            for j, item in enumerate(p):
                if not (isinstance(item, list) and len(item) == 2):
                    raise ProtocolError(f"bucket_digests reply [{j}]: expected [key, digest]")
                _key(item[0], f"bucket_digests reply [{j}].key")
                size = versions.DIGEST_BYTES
                _bytes(item[1], f"bucket_digests reply [{j}].digest", size, size)
        case m.Ping() | m.Stats() | m.Gossip() | m.Admin() | m.Hello() | m.Attach():
            if not isinstance(p, dict):
                raise ProtocolError(f"{op} reply: expected a map, got {type(p).__name__}")
        case _:
            pass
    return reply
