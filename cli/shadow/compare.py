"""Judging a pair of replies to one request, the primary's and ringkv's (pure).

Replies are what ``hiredis.Reader`` gives: bytes (bulk and status alike),
int, None (nil), lists of those, and ``hiredis.ReplyError`` for an error.

- Two errors match when their codes (the first word: ERR, WRONGTYPE …)
  match: a client acts on the code, and the two servers word causes
  differently.
- ringkv refusing an option as not supported is *unsupported*, not a
  mismatch (the primary serves it; see policy.py for those caught before
  they are sent).
- ringkv failing for availability (NOQUORUM, TIMEOUT, UNAVAILABLE …) where
  the primary answered is a *shadow error*: ringkv did not give an answer
  to compare, which is a different finding from a wrong answer.
- Everything else is compared exactly. A mismatch names the keys whose
  answers differ: for MGET the keys at the differing positions, otherwise
  the request's keys.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import hiredis

#: ringkv error codes that say it could not answer, not what the answer is.
AVAILABILITY_CODES = frozenset({
    "NOQUORUM", "TIMEOUT", "UNAVAILABLE", "READONLY", "BUSY", "LOADING", "TRYAGAIN",
})
_UNSUPPORTED = " is not supported: "


class Outcome(enum.Enum):
    MATCH = "match"
    MISMATCH = "mismatch"
    SHADOW_ERROR = "shadow error"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    #: What it is counted under: the error code of a shadow error, the
    #: option of an unsupported one, else the command.
    label: str
    #: Of a mismatch: the keys whose answers differ.
    keys: tuple[bytes, ...] = ()


def read_replies(reader: hiredis.Reader, data: bytes) -> list[object] | None:
    """Feed ``data``; every reply now complete, in order (RESP3 out-of-band
    pushes left out: they answer no request), or None on a protocol error."""
    reader.feed(data)
    out: list[object] = []
    while True:
        try:
            reply = reader.gets()
        except hiredis.ProtocolError:
            return None
        if reply is False:
            return out
        if not isinstance(reply, hiredis.PushNotification):
            out.append(reply)


def error_code(reply: object) -> str | None:
    """The code of an error reply (its first word), None for any other."""
    if isinstance(reply, hiredis.ReplyError):
        return str(reply).split(" ", 1)[0]
    return None


def judge(command: str, keys: Sequence[bytes], primary: object, shadow: object) -> Verdict:
    p_code, s_code = error_code(primary), error_code(shadow)
    if s_code is not None and p_code != s_code:
        if _UNSUPPORTED in str(shadow):
            option = str(shadow).removeprefix("ERR ").split(_UNSUPPORTED, 1)[0]
            return Verdict(Outcome.UNSUPPORTED, option)
        if s_code in AVAILABILITY_CODES:
            return Verdict(Outcome.SHADOW_ERROR, s_code)
        return Verdict(Outcome.MISMATCH, command, tuple(keys))
    if p_code is not None or s_code is not None:
        same = p_code == s_code
    else:
        same = primary == shadow
    if same:
        return Verdict(Outcome.MATCH, command)
    return Verdict(Outcome.MISMATCH, command, _differing_keys(command, keys, primary, shadow))


def _differing_keys(command: str, keys: Sequence[bytes], primary: object,
                    shadow: object) -> tuple[bytes, ...]:
    if (command == "MGET" and isinstance(primary, list) and isinstance(shadow, list)
            and len(primary) == len(shadow) == len(keys)):
        return tuple(k for k, a, b in zip(keys, primary, shadow, strict=True) if a != b)
    return tuple(keys)


def show(reply: object, limit: int) -> str:
    """``reply`` as redis-cli would print it, on one line, at most ``limit``
    characters (a cut is marked with ``…``)."""
    text = _show(reply)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _show(reply: object) -> str:
    if isinstance(reply, hiredis.ReplyError):
        return f"(error) {reply}"
    if reply is None:
        return "(nil)"
    if isinstance(reply, int):
        return f"(integer) {reply}"
    if isinstance(reply, bytes):
        return '"' + text_of(reply) + '"'
    if isinstance(reply, list):
        return "[" + ", ".join(_show(r) for r in reply) + "]"
    return repr(reply)


def text_of(raw: bytes) -> str:
    """Bytes as one line of printable text: UTF-8 where it decodes and
    prints, ``\\xNN`` (``\\uNNNN``) for the rest."""
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else
                   f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)
