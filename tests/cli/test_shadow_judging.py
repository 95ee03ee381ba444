"""The pure parts of `ringkv shadow`: which requests are mirrored (policy),
how a pair of replies is judged (compare), and that the counts of a run
add up (stats through Pair)."""

from __future__ import annotations

import hiredis
import pytest

from cli.shadow.compare import Outcome, judge, read_replies, show
from cli.shadow.pair import Pair
from cli.shadow.policy import Action, plan
from cli.shadow.stats import ShadowStats


def words(text: str) -> list[bytes]:
    return [w.encode() for w in text.split()]


@pytest.mark.parametrize(("request_", "action", "label", "keys", "write"), [
    ("GET k", Action.MIRROR, "GET", (b"k",), False),
    ("set k v", Action.MIRROR, "SET", (b"k",), True),
    ("MSET a 1 b 2", Action.MIRROR, "MSET", (b"a", b"b"), True),
    ("MGET a b c", Action.MIRROR, "MGET", (b"a", b"b", b"c"), False),
    ("DEL a b", Action.MIRROR, "DEL", (b"a", b"b"), True),
    ("PING", Action.MIRROR, "PING", (), False),
    ("GET", Action.MIRROR, "GET", (), False),  # wrong arity: both refuse, compared
    ("SET k v EX 10", Action.UNSUPPORTED, "SET EX", (), False),
    ("SET k v NX", Action.UNSUPPORTED, "SET NX", (), False),
    ("EVAL x 0", Action.UNSUPPORTED, "EVAL", (), False),
    ("INCR n", Action.UNSUPPORTED, "INCR", (), False),
    ("HSET h f v", Action.UNSUPPORTED, "HSET", (), False),
    ("MULTI", Action.UNSUPPORTED, "MULTI", (), False),
    ("INFO", Action.NOT_COMPARED, "INFO", (), False),
    ("AUTH pw", Action.NOT_COMPARED, "AUTH", (), False),
    ("CLIENT SETNAME x", Action.NOT_COMPARED, "CLIENT", (), False),
    ("VGET k", Action.NOT_COMPARED, "VGET", (), False),
    ("SUBSCRIBE ch", Action.UNOBSERVABLE, "SUBSCRIBE", (), False),
    ("CLIENT REPLY OFF", Action.UNOBSERVABLE, "CLIENT", (), False),
])
def test_plan(request_: str, action: Action, label: str, keys: tuple[bytes, ...],
              write: bool) -> None:
    p = plan(words(request_))
    assert (p.action, p.label, p.keys, p.write) == (action, label, keys, write)


def test_inside_a_transaction_nothing_is_mirrored() -> None:
    p = plan(words("SET k v"), in_transaction=True)
    assert (p.action, p.label) == (Action.UNSUPPORTED, "MULTI")


def error(text: str) -> hiredis.ReplyError:
    return hiredis.ReplyError(text)


def test_judge_compares_values_and_error_codes() -> None:
    assert judge("GET", [b"k"], b"v", b"v").outcome is Outcome.MATCH
    assert judge("GET", [b"k"], None, None).outcome is Outcome.MATCH
    v = judge("GET", [b"k"], b"v", b"w")
    assert (v.outcome, v.label, v.keys) == (Outcome.MISMATCH, "GET", (b"k",))
    # same code, other wording: a match; other code: a mismatch
    assert judge("GET", [], error("ERR wrong number of arguments for 'get' command"),
                 error("ERR wrong number of args")).outcome is Outcome.MATCH
    assert judge("GET", [b"k"], error("WRONGTYPE x"), b"v").outcome is Outcome.MISMATCH
    assert judge("GET", [b"k"], error("WRONGTYPE x"), error("ERR y")).outcome \
        is Outcome.MISMATCH


def test_judge_names_the_differing_keys_of_an_mget() -> None:
    v = judge("MGET", [b"a", b"b", b"c"], [b"1", b"2", None], [b"1", b"X", b"3"])
    assert v.keys == (b"b", b"c")
    v = judge("MGET", [b"a", b"b"], [b"1", b"2"], error("ERR value too large"))
    assert (v.outcome, v.keys) == (Outcome.MISMATCH, (b"a", b"b"))


def test_judge_tells_ringkv_unavailability_and_refusals_from_mismatches() -> None:
    v = judge("SET", [b"k"], b"OK", error("NOQUORUM needed 2 acks, got 1 (replicas: n1)"))
    assert (v.outcome, v.label) == (Outcome.SHADOW_ERROR, "NOQUORUM")
    v = judge("SET", [b"k"], b"OK", error("ERR SET KEEPTTL is not supported: no expiry"))
    assert (v.outcome, v.label) == (Outcome.UNSUPPORTED, "SET KEEPTTL")


def test_show_renders_like_redis_cli_and_cuts() -> None:
    assert show([b"a", None, 3, error("ERR x")], 100) == '["a", (nil), (integer) 3, (error) ERR x]'
    assert show(b"\xff" + b"x" * 50, 10) == '"\\xffxxxx…'
    assert len(show(b"x" * 500, 200)) == 200


def test_read_replies_skips_pushes_and_reports_protocol_errors() -> None:
    reader = hiredis.Reader()
    assert read_replies(reader, b"+OK\r\n>2\r\n+a\r\n+b\r\n:1\r\n$3\r\nab") == [b"OK", 1]
    assert read_replies(reader, b"c\r\n") == [b"abc"]
    assert read_replies(hiredis.Reader(), b"?bad\r\n") is None


def test_every_mirrored_request_ends_once() -> None:
    stats = ShadowStats(samples=2, reply_chars=50)
    set_k, get_k = plan(words("SET k v")), plan(words("GET k"))
    pairs = [Pair(set_k, 0), Pair(get_k, 0), Pair(get_k, 0), Pair(get_k, 0)]
    for p in pairs:
        stats.sent(p.plan)
    pairs[0].primary_in(b"OK", stats)
    pairs[0].ringkv_in(b"OK", 5, stats)  # match
    pairs[1].ringkv_in(b"other", 7, stats)
    pairs[1].primary_in(b"v", stats)  # mismatch, ringkv first
    pairs[2].primary_in(b"v", stats)
    pairs[2].abandon("ringkv timeout", stats)
    pairs[2].ringkv_in(b"late", 9, stats)  # after abandoning: ignored
    pairs[3].abandon("client closed", stats)
    pairs[3].abandon("pending at stop", stats)  # counted once
    assert stats.matched == 1 and stats.mismatched == {"GET": 1}
    assert stats.abandoned == {"ringkv timeout": 1, "client closed": 1}
    assert stats.mirrored == 4 == stats.matched + sum(stats.mismatched.values()) + sum(
        stats.abandoned.values())
    assert stats.pending == 0 and stats.ringkv.total == 2
    assert [(m.command, m.keys, m.primary, m.ringkv) for m in stats.samples] == [
        ("GET", ("k",), '"v"', '"other"')]


def test_a_mismatch_after_a_dropped_or_abandoned_write_is_stale() -> None:
    stats = ShadowStats(samples=5, reply_chars=50)
    stats.drop(plan(words("SET k v")), "max pending")
    stats.drop(plan(words("SET j v")), "max pending")
    stats.sent(plan(words("SET j w")))  # a later write of j reached ringkv
    timed_out = Pair(plan(words("MSET m 1 n 2")), 0)
    stats.sent(timed_out.plan)
    timed_out.abandon("ringkv timeout", stats)
    refused = Pair(plan(words("SET r v")), 0)
    stats.sent(refused.plan)
    refused.primary_in(b"OK", stats)
    refused.ringkv_in(hiredis.ReplyError("ERR value too large (9 > 8 bytes)"), 1, stats)
    for key in (b"k", b"j", b"n", b"r"):
        pair = Pair(plan([b"GET", key]), 0)
        stats.sent(pair.plan)
        pair.primary_in(b"v", stats)
        pair.ringkv_in(None, 1, stats)
    assert stats.dropped == {"max pending": 2}
    assert [(m.command, m.stale) for m in stats.samples] == [
        ("SET", False), ("GET", True), ("GET", False), ("GET", True), ("GET", True)]
    assert stats.stale == 3
