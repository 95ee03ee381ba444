"""RESP2 request parsing (multibulk and inline) and reply encoding."""

from __future__ import annotations

import itertools

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.client.replies import (
    NULL_ARRAY,
    OK,
    PONG,
    Error,
    SimpleString,
    array,
    bulk,
    encode_reply,
    error,
    integer,
    simple,
)
from coordinator.client.resp import Discarded, RequestParser, split_inline
from coordinator.errors import (
    CommandError,
    CoordinatorError,
    NoAuthError,
    NoProtoError,
    NoQuorumError,
    RespError,
    RespProtocolError,
    UnknownCommandError,
    ValueTooLargeError,
    WrongArityError,
)


def pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def drain(parser: RequestParser) -> list[object]:
    out: list[object] = []
    while (item := parser.gets()) is not None:
        out.append(item)
        if isinstance(item, RespProtocolError):
            break
    return out


def parse_all(data: bytes, **limits: int) -> list[object]:
    parser = RequestParser(**limits)
    parser.feed(data)
    return drain(parser)


def error_text(data: bytes, **limits: int) -> str:
    out = parse_all(data, **limits)
    assert out and isinstance(out[-1], RespProtocolError), out
    return str(out[-1])


# -- multibulk ---------------------------------------------------------------


def test_multibulk_round_trip_binary_safe() -> None:
    args = [b"SET", b"k\r\n\x00", b"\xff" * 300, b""]
    assert parse_all(pack(*args)) == [args]


def test_pipelined_requests_come_out_in_order() -> None:
    data = pack(b"PING") + b"GET a\r\n" + pack(b"ECHO", b"x") + b"\r\n" + b"*0\r\n" + pack(b"Q")
    assert parse_all(data) == [[b"PING"], [b"GET", b"a"], [b"ECHO", b"x"], [b"Q"]]


def test_incomplete_request_waits() -> None:
    parser = RequestParser()
    data = pack(b"SET", b"key", b"value")
    for cut in range(len(data)):
        parser = RequestParser()
        parser.feed(data[:cut])
        assert parser.gets() is None
        parser.feed(data[cut:])
        assert parser.gets() == [b"SET", b"key", b"value"]
        assert parser.gets() is None


def test_deep_pipeline_in_one_feed() -> None:
    parser = RequestParser()
    parser.feed(pack(b"GET", b"k") * 5000 + b"PING\r\n" * 5000)
    out = drain(parser)
    assert out == [[b"GET", b"k"]] * 5000 + [[b"PING"]] * 5000
    assert parser.buffered == 0


def test_parses_what_redis_py_sends() -> None:
    from redis.connection import Connection

    # redis-py's packing is untyped; the result is checked below anyway.
    conn = Connection()  # type: ignore[no-untyped-call]
    commands = [("SET", "k", b"\x00v", "EX", 10), ("GET", "k")]
    wire = b"".join(conn.pack_commands(commands))  # type: ignore[no-untyped-call]
    wire += b"".join(conn.pack_command("PING"))  # type: ignore[no-untyped-call]
    assert parse_all(wire) == [
        [b"SET", b"k", b"\x00v", b"EX", b"10"],
        [b"GET", b"k"],
        [b"PING"],
    ]


def test_bulk_trickled_byte_by_byte() -> None:
    parser = RequestParser()
    data = pack(b"SET", b"k", b"v" * 1000)
    results = []
    for c in data:
        parser.feed(bytes([c]))
        results.append(parser.gets())
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == [b"SET", b"k", b"v" * 1000]


def test_empty_and_negative_multibulk_are_skipped_like_redis() -> None:
    assert parse_all(b"*0\r\n*-1\r\n*-10\r\n" + pack(b"PING")) == [[b"PING"]]


request_args = st.lists(st.binary(max_size=40), min_size=1, max_size=5)
inline_words = st.lists(
    st.text(alphabet="abcXYZ019:_-", min_size=1, max_size=8), min_size=1, max_size=4
)


@pytest.mark.property
@settings(max_examples=200)
@given(
    requests=st.lists(st.one_of(request_args, inline_words), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_pipelined_requests_split_at_any_boundary(
    requests: list[list[bytes] | list[str]], cuts: list[int]
) -> None:
    wire = bytearray()
    expected: list[list[bytes]] = []
    for req in requests:
        if req and isinstance(req[0], str):
            words = [w.encode() for w in req if isinstance(w, str)]
            wire += b" ".join(words) + b"\r\n"
            expected.append(words)
        else:
            args = [a for a in req if isinstance(a, bytes)]
            wire += pack(*args)
            expected.append(args)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    parser = RequestParser()
    got: list[object] = []
    for a, b in itertools.pairwise(points):
        parser.feed(bytes(wire[a:b]))
        got.extend(drain(parser))
    assert got == expected


class GeneralOnly(RequestParser):
    """The parser without its one-pass fast path for whole requests."""

    def _whole_request(self) -> int:
        return 0


def outcome(parser: RequestParser, wire: bytes, points: list[int], auth_at: int) -> list[object]:
    """What ``parser`` makes of ``wire`` fed in the pieces between ``points``,
    restricted (unauthenticated) until the ``auth_at``-th request is out."""
    got: list[object] = []
    if auth_at:
        parser.restrict()
    for a, b in itertools.pairwise(points):
        parser.feed(wire[a:b])
        while (item := parser.gets()) is not None:
            got.append(repr(item) if isinstance(item, RespProtocolError | Discarded) else item)
            if len(got) == auth_at:
                parser.lift()
            if isinstance(item, RespProtocolError):
                return got
    return got


# Byte strings that change a request's framing where they land: signs,
# leading zeros, odd digits, lone CR/LF, other type bytes.
framing_noise = st.sampled_from(
    [b"0", b"00", b"-", b"-1", b"+", b" ", b"\r", b"\n", b"\r\n", b"*", b"$", b":", b"x",
     b"99999999999999999999", b"\x00"]
)


@pytest.mark.property
@settings(max_examples=400)
@given(
    requests=st.lists(
        st.lists(st.binary(max_size=40), min_size=1, max_size=5), min_size=1, max_size=6),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.booleans(), framing_noise,
                             st.integers(0, 3)), max_size=3),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    max_bulk=st.sampled_from([8, 16, 1024]),
    auth_at=st.integers(0, 3),
)
def test_the_fast_path_answers_as_the_general_scan(
    requests: list[list[bytes]], edits: list[tuple[int, bool, bytes, int]], cuts: list[int],
    max_bulk: int, auth_at: int,
) -> None:
    """Valid and damaged pipelines, cut anywhere, big bulks discarded, limits
    before AUTH: the parser with its whole-request fast path gives the same
    requests, discards and error texts, in the same order, as without it."""
    wire = bytearray(b"".join(pack(*args) for args in requests))
    for spot, in_header, noise, drop in edits:  # noise over a few bytes
        heads = [i + 1 for i in range(len(wire)) if wire[i : i + 1] in (b"$", b"*")]
        at = heads[spot % len(heads)] if in_header and heads else spot % (len(wire) + 1)
        wire[at : at + drop] = noise
    data = bytes(wire)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    limits = {"max_bulk": max_bulk, "max_request": 4 * max_bulk + 64}
    fast = outcome(RequestParser(**limits), data, points, auth_at)
    general = outcome(GeneralOnly(**limits), data, points, auth_at)
    assert fast == general


# -- inline ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "args"),
    [
        (b"GET k", [b"GET", b"k"]),
        (b"  SET   a  b  ", [b"SET", b"a", b"b"]),
        (b"SET \"a b\" 'c d'", [b"SET", b"a b", b"c d"]),
        (b'"\\x41"', [b"A"]),
        (b'"\\x4a\\x4B"', [b"JK"]),
        (b'"\\xZZ"', [b"xZZ"]),
        (b'"a\\n\\r\\t\\b\\ab"', [b"a\n\r\t\b\x07b"]),
        (b'"q\\"q" "back\\\\slash"', [b'q"q', b"back\\slash"]),
        (b"'it\\'s' 'no\\nescape'", [b"it's", b"no\\nescape"]),
        (b'""', [b""]),
        (b"''", [b""]),
        (b'ab"cd ef"', [b"abcd ef"]),
        (b"\t\x0bx\x0cy z", [b"x\x0cy", b"z"]),
        (b'"\\X41"', [b"X41"]),
        (b"GET a\x00b c", [b"GET", b"a"]),
        (b"x\r\ny", [b"x", b"y"]),
        (b"", []),
        (b"   ", []),
    ],
)
def test_split_inline_follows_redis(line: bytes, args: list[bytes]) -> None:
    assert split_inline(line) == args


@pytest.mark.parametrize(
    "line", [b'"abc', b"'abc", b'"a"b', b"'a'b", b'SET "x', b'"trailing\\"']
)
def test_split_inline_rejects_unbalanced(line: bytes) -> None:
    assert split_inline(line) is None


def test_inline_requests_through_the_parser() -> None:
    data = b"SET \"a b\" 'c d'\r\nPING\n\r\n   \r\nECHO \"\\x41\"\r\n"
    assert parse_all(data) == [[b"SET", b"a b", b"c d"], [b"PING"], [b"ECHO", b"A"]]


def quote(arg: bytes) -> bytes:
    """Quote like redis-cli's sdscatrepr: printable bytes as is, the rest as \\xHH."""
    out = bytearray(b'"')
    for c in arg:
        if c in b'"\\':
            out += b"\\" + bytes([c])
        elif 0x20 <= c < 0x7F:
            out.append(c)
        else:
            out += b"\\x%02x" % c
    return bytes(out + b'"')


@pytest.mark.property
@settings(max_examples=200)
@given(args=st.lists(st.binary(max_size=20), min_size=1, max_size=5))
def test_split_inline_inverts_quoting(args: list[bytes]) -> None:
    assert split_inline(b" ".join(quote(a) for a in args)) == args


def test_inline_trickled_byte_by_byte() -> None:
    parser = RequestParser()
    for c in b"SET k 'v w'\r\n":
        parser.feed(bytes([c]))
        result = parser.gets()
    assert result == [b"SET", b"k", b"v w"]


def test_inline_line_at_the_limit_is_accepted() -> None:
    word = b"x" * (64 * 1024 - 5)
    assert parse_all(b"ECHO " + word + b"\r\n") == [[b"ECHO", word]]


# -- protocol errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b'SET "a\r\n', "ERR Protocol error: unbalanced quotes in request"),
        (b"x" * (64 * 1024 + 1), "ERR Protocol error: too big inline request"),
        (b"ECHO " + b"x" * (64 * 1024) + b"\r\n", "ERR Protocol error: too big inline request"),
        (b"*20000000\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*3000000000\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*abc\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*+1\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*01\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*1\r\n$-1\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$x\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$ 1\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$999999999999\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$536870913\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n", "ERR Protocol error: expected '$', got 'f'"),
        (b"*1\r\n+PING\r\n", "ERR Protocol error: expected '$', got '+'"),
        (b"*1\r\n:1\r\n", "ERR Protocol error: expected '$', got ':'"),
        (b"*1" + b"1" * (64 * 1024), "ERR Protocol error: invalid multibulk length"),
        (b"*1\r\n$" + b"1" * 30, "ERR Protocol error: invalid bulk length"),
        (b"*1" + b" " * (64 * 1024), "ERR Protocol error: too big mbulk count string"),
        (b"*1\r\n$" + b" " * (64 * 1024), "ERR Protocol error: too big bulk count string"),
        # hiredis raised out of the parser on these (issue 13).
        (b"*1\rX", "ERR Protocol error: multibulk length must end with CRLF"),
        (b"*1\rX$4\r\nPING\r\n", "ERR Protocol error: multibulk length must end with CRLF"),
        (b"*1\r\n$4\rXPING\r\n", "ERR Protocol error: bulk length must end with CRLF"),
    ],
    ids=lambda v: repr(v[:24]) if isinstance(v, bytes) else "",
)
def test_protocol_error_texts(data: bytes, text: str) -> None:
    assert error_text(data) == text


def test_bulk_limit_is_configurable() -> None:
    assert parse_all(pack(b"x" * 10), max_bulk=10) == [[b"x" * 10]]
    [discarded] = parse_all(pack(b"x" * 11), max_bulk=10)
    assert isinstance(discarded, Discarded) and discarded.size == 11


def test_a_bulk_past_the_limit_is_dropped_as_it_streams() -> None:
    """Past max_bulk (up to 512 MiB) a bulk is dropped as it arrives, never
    buffered, and its request comes out as Discarded; the requests around
    it are intact, however the bytes are cut."""
    data = (pack(b"SET", b"k", b"x" * 100) + pack(b"PING")
            + pack(b"SET", b"y" * 50, b"v") + pack(b"ECHO", b"ok"))
    for step in (1, 7, 64, len(data)):
        parser = RequestParser(max_bulk=10)
        out: list[object] = []
        for i in range(0, len(data), step):
            parser.feed(data[i:i + step])
            assert parser.buffered <= step + 40  # never the 100-byte body
            while (item := parser.gets()) is not None:
                out.append(item)
        assert [x.size if isinstance(x, Discarded) else x for x in out] == [
            100, [b"PING"], 50, [b"ECHO", b"ok"]], step


def test_a_huge_bulk_is_dropped_without_buffering() -> None:
    parser = RequestParser(max_bulk=1 << 20)
    parser.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (300 << 20))
    chunk = b"v" * (1 << 20)
    for _ in range(300):
        parser.feed(chunk)
        assert parser.gets() is None and parser.buffered == 0
    parser.feed(b"\r\n*1\r\n$4\r\nPING\r\n")
    first = parser.gets()
    assert isinstance(first, Discarded) and first.size == 300 << 20
    assert parser.gets() == [b"PING"]


def test_request_size_limit() -> None:
    data = pack(*[b"x" * 100] * 20)
    assert error_text(data, max_request=1000) == "ERR Protocol error: request too large"


def test_oversized_bulk_header_rejected_before_body_arrives() -> None:
    parser = RequestParser()
    parser.feed(b"*2\r\n$3\r\nSET\r\n$999999999999\r\n")
    result = parser.gets()
    assert isinstance(result, RespProtocolError)
    assert str(result) == "ERR Protocol error: invalid bulk length"
    assert parser.buffered == 0


def test_oversized_bulk_digits_rejected_before_the_cr() -> None:
    parser = RequestParser()
    parser.feed(b"*1\r\n$999999999")  # 9 digits: past 512 MiB already
    assert isinstance(parser.gets(), RespProtocolError)


def test_error_is_sticky_and_earlier_requests_come_first() -> None:
    parser = RequestParser()
    parser.feed(pack(b"PING") + b"*1\r\n+X\r\n" + pack(b"ECHO", b"after"))
    assert parser.gets() == [b"PING"]
    first = parser.gets()
    assert isinstance(first, RespProtocolError)
    assert first.code == "ERR"
    parser.feed(pack(b"PING"))
    assert parser.gets() is first
    assert parser.dead
    assert parser.buffered == 0


def restricted(data: bytes) -> list[object]:
    parser = RequestParser()
    parser.restrict()
    parser.feed(data)
    return drain(parser)


def test_before_auth_redis_limits_apply() -> None:
    """Redis's limits for unauthenticated clients: 10 arguments, 16 KiB per
    bulk, with Redis's texts (issue 13)."""
    assert restricted(pack(*[b"a"] * 10)) == [[b"a"] * 10]
    assert str(restricted(pack(*[b"a"] * 11))[-1]) == (
        "ERR Protocol error: unauthenticated multibulk length")
    assert restricted(pack(b"AUTH", b"x" * 16384)) == [[b"AUTH", b"x" * 16384]]
    assert str(restricted(pack(b"AUTH", b"x" * 16385))[-1]) == (
        "ERR Protocol error: unauthenticated bulk length")
    # Refused as soon as the digits pass the limit, before the CR.
    assert str(restricted(b"*2\r\n$4\r\nAUTH\r\n$999999")[-1]) == (
        "ERR Protocol error: unauthenticated bulk length")
    assert str(restricted(b"*2\r\n$4\r\nAUTH\r\n$9999999999")[-1]) == (
        "ERR Protocol error: invalid bulk length")


def test_a_request_after_auth_in_the_same_feed_gets_the_full_limits() -> None:
    parser = RequestParser()
    parser.restrict()
    big = pack(b"SET", b"k", b"v" * 20000, *[b"W", b"1"] * 5)
    parser.feed(pack(b"AUTH", b"pw") + big + pack(b"PING"))
    assert parser.gets() == [b"AUTH", b"pw"]
    parser.lift()  # the server lifts the limits once AUTH succeeded
    assert parser.gets() == [b"SET", b"k", b"v" * 20000, *[b"W", b"1"] * 5]
    assert parser.gets() == [b"PING"]
    assert parser.gets() is None and parser.buffered == 0


def test_a_deep_pipeline_while_restricted_is_scanned_one_request_at_a_time() -> None:
    parser = RequestParser()
    parser.restrict()
    parser.feed(pack(b"PING") * 20000 + b"PING\r\n" * 20000)
    assert parser.buffered == 20000 * (14 + 6)
    out = drain(parser)
    assert out == [[b"PING"]] * 40000
    assert parser.buffered == 0


def test_hiredis_would_accept_what_redis_refuses() -> None:
    # Why we frame ourselves: hiredis takes a status reply inside the array.
    reader = hiredis.Reader()
    reader.feed(b"*1\r\n+PING\r\n")
    assert reader.gets() == [b"PING"]


# -- replies -----------------------------------------------------------------


def decode(data: bytes) -> object:
    reader = hiredis.Reader()
    reader.feed(data)
    value = reader.gets()
    assert reader.gets() is False
    return value


def test_reply_encoders() -> None:
    assert simple("OK") == b"+OK\r\n"
    assert error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"
    assert integer(-42) == b":-42\r\n"
    assert bulk(b"a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert bulk(None) == b"$-1\r\n"
    assert array(None) == b"*-1\r\n"
    assert array([]) == b"*0\r\n"
    assert array([b"a", 1, None, [OK]]) == b"*4\r\n$1\r\na\r\n:1\r\n$-1\r\n*1\r\n+OK\r\n"


def test_encode_reply_dispatch() -> None:
    assert encode_reply(OK) == b"+OK\r\n"
    assert encode_reply(PONG) == b"+PONG\r\n"
    assert encode_reply(SimpleString("x\ny")) == b"+x y\r\n"
    assert encode_reply(Error("ERR no")) == b"-ERR no\r\n"
    assert encode_reply(NoQuorumError(2, 1, ["a", "b"])) == (
        b"-NOQUORUM needed 2 acks, got 1 (replicas: a, b)\r\n"
    )
    assert encode_reply("é") == b"$2\r\n\xc3\xa9\r\n"
    assert encode_reply(True) == b":1\r\n"
    assert encode_reply(NULL_ARRAY) == b"*-1\r\n"
    assert encode_reply((b"a", (b"b",))) == b"*2\r\n$1\r\na\r\n*1\r\n$1\r\nb\r\n"
    with pytest.raises(TypeError):
        encode_reply(1.5)  # type: ignore[arg-type]


reply_values = st.recursive(
    st.one_of(st.binary(max_size=50), st.integers(-(2**63), 2**63 - 1), st.none()),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


@pytest.mark.property
@settings(max_examples=200)
@given(value=reply_values)
def test_replies_decode_with_hiredis(value: object) -> None:
    assert decode(encode_reply(value)) == value  # type: ignore[arg-type]


def test_error_reply_decodes_as_error() -> None:
    value = decode(encode_reply(Error("WRONGTYPE nope")))
    assert isinstance(value, hiredis.ReplyError)
    assert str(value) == "WRONGTYPE nope"


# -- error texts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (
            UnknownCommandError("foo", ["a", "b"]),
            "ERR unknown command 'foo', with args beginning with: 'a' 'b' ",
        ),
        (UnknownCommandError("foo"), "ERR unknown command 'foo', with args beginning with: "),
        (WrongArityError("GET"), "ERR wrong number of arguments for 'get' command"),
        (ValueTooLargeError(70000, 65536), "ERR value too large (70000 > 65536 bytes)"),
        (NoQuorumError(2, 1, ["n1", "n2"]), "NOQUORUM needed 2 acks, got 1 (replicas: n1, n2)"),
        (NoAuthError(), "NOAUTH Authentication required."),
        (NoProtoError(), "NOPROTO sorry, this protocol version is not supported"),
        (RespProtocolError("invalid bulk length"), "ERR Protocol error: invalid bulk length"),
        (CommandError("ERR a\r\nb"), "ERR a  b"),
    ],
)
def test_error_texts(exc: RespError, text: str) -> None:
    assert str(exc) == text
    assert exc.code == text.split(" ", 1)[0]
    assert isinstance(exc, CoordinatorError)
    assert encode_reply(exc) == b"-" + text.encode() + b"\r\n"


def test_resp3_nulls_and_maps_for_hello_3_clients() -> None:
    from coordinator.client.replies import NULL_ARRAY, RespReply, encode_reply

    assert encode_reply(None, 3) == b"_\r\n"
    assert encode_reply(NULL_ARRAY, 3) == b"_\r\n"
    assert encode_reply([b"a", None], 3) == b"*2\r\n$1\r\na\r\n_\r\n"
    hello: dict[str, RespReply] = {"server": "ringkv", "proto": 3}
    assert encode_reply(hello, 3) == b"%2\r\n$6\r\nserver\r\n$6\r\nringkv\r\n$5\r\nproto\r\n:3\r\n"
    assert encode_reply(hello, 2).startswith(b"*4\r\n")
    assert encode_reply(None) == b"$-1\r\n"
