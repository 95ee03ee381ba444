from __future__ import annotations

import pytest

from coordinator.client.commands import REPLY_SLACK, parse, reply_bound
from coordinator.client.parsing import Limits
from coordinator.data.quorum import Consistency
from coordinator.errors import CommandError
from shardserver.protocol.versions import DEFAULT_SIBLING_CAP

LIMITS = Limits(max_value_bytes=100, max_reply_bytes=64 << 20)


def p(*words: bytes) -> object:
    return parse(list(words), LIMITS)


def err(*words: bytes) -> str:
    with pytest.raises(CommandError) as info:
        parse(list(words), LIMITS)
    return str(info.value)


def test_get_set_with_levels() -> None:
    c = parse([b"get", b"k", b"R", b"3", b"pr", b"1"], LIMITS)
    assert (c.name, c.keys, c.consistency) == ("GET", (b"k",), Consistency(r=3, pr=1))
    s = parse([b"SET", b"k", b"v", b"W", b"3"], LIMITS)
    assert (s.values, s.consistency) == ((b"v",), Consistency(w=3))


def test_redis_wording_for_unknown_and_arity() -> None:
    assert err(b"FOO", b"a", b"b") == (
        "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    )
    assert err(b"GET") == "ERR wrong number of arguments for 'get' command"
    assert err(b"MSET", b"a", b"1", b"b") == "ERR wrong number of arguments for 'mset' command"
    assert err(b"PING", b"a", b"b") == "ERR wrong number of arguments for 'ping' command"


def test_unsupported_set_options_say_why() -> None:
    assert err(b"SET", b"k", b"v", b"EX", b"10") == (
        "ERR SET EX is not supported: ringkv keys do not expire"
    )
    assert "VGET and VSET" in err(b"SET", b"k", b"v", b"NX")
    assert err(b"SET", b"k", b"v", b"W") == "ERR syntax error"
    assert err(b"SET", b"k", b"v", b"W", b"two") == "ERR value is not an integer or out of range"


def test_sizes() -> None:
    assert err(b"SET", b"k", b"x" * 101) == "ERR value too large (101 > 100 bytes)"
    assert err(b"GET", b"") == "ERR invalid key length (0 bytes, allowed 1..1024)"
    assert err(b"GET", b"k" * 1025).startswith("ERR invalid key length (1025 bytes")


def test_multi_key_commands_take_trailing_levels_only_when_numeric() -> None:
    c = parse([b"DEL", b"a", b"W", b"b"], LIMITS)  # "W" here is a key
    assert c.keys == (b"a", b"W", b"b") and c.consistency == Consistency()
    c = parse([b"DEL", b"a", b"b", b"W", b"3"], LIMITS)
    assert c.keys == (b"a", b"b") and c.consistency == Consistency(w=3)
    m = parse([b"MSET", b"a", b"1", b"b", b"2"], LIMITS)
    assert m.keys == (b"a", b"b") and m.values == (b"1", b"2")


def test_vset_vdel_and_consistency() -> None:
    v = parse([b"VSET", b"k", b"ctx", b"val", b"PW", b"2", b"W", b"2"], LIMITS)
    assert (v.context, v.values, v.consistency) == (b"ctx", (b"val",), Consistency(w=2, pw=2))
    d = parse([b"VDEL", b"k", b""], LIMITS)
    assert d.context == b""
    c = parse([b"CONSISTENCY", b"R", b"1", b"W", b"3"], LIMITS)
    assert c.consistency == Consistency(r=1, w=3)
    assert parse([b"CONSISTENCY"], LIMITS).consistency == Consistency()
    assert err(b"SELECT", b"1") == "ERR DB index is out of range"
    assert parse([b"SELECT", b"0"], LIMITS).name == "SELECT"


def test_reply_bound_covers_the_largest_reply_a_read_can_have() -> None:
    """What the server counts against a connection's byte budget before a
    command runs (issue 13): a value per GET, sibling_cap values per VGET,
    a value per MGET key up to max_reply_bytes, a little for the rest."""
    limits = Limits(max_value_bytes=100, max_reply_bytes=10_000)
    value = 100 + REPLY_SLACK
    assert reply_bound([b"get", b"k"], limits) == value
    assert reply_bound([b"VGET", b"k"], limits) == DEFAULT_SIBLING_CAP * value
    assert reply_bound([b"MGET", b"a", b"b"], limits) == 2 * value
    assert reply_bound([b"MGET", *[b"k"] * 1000], limits) == 10_000 + value
    assert reply_bound([b"SET", b"k", b"v"], limits) == REPLY_SLACK
    assert reply_bound([b"PING"], limits) == REPLY_SLACK
