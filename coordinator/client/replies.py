"""RESP reply encoding (sans-IO): RESP2, and RESP3 for clients that say
``HELLO 3`` (redis-py 8 does so on every connect and gives up on an error).

Request parsing is in :mod:`coordinator.client.resp`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from coordinator.errors import RespError


@dataclass(frozen=True, slots=True)
class SimpleString:
    """A ``+status`` reply (OK, PONG, QUEUED ...), as opposed to a bulk string."""

    value: str


@dataclass(frozen=True, slots=True)
class Error:
    """A ``-ERR text`` reply built from a message rather than an exception."""

    message: str


@dataclass(frozen=True, slots=True)
class NullArray:
    """``*-1``: what a RESP2 command returns for a missing array."""


OK = SimpleString("OK")
_OK = b"+OK\r\n"  # OK encoded (RESP2 and 3 alike)
PONG = SimpleString("PONG")
NULL_ARRAY = NullArray()

RespReply = (
    SimpleString
    | Error
    | RespError
    | NullArray
    | int
    | bytes
    | str
    | None
    | Sequence["RespReply"]
    | Mapping[str, "RespReply"]
)


def _line(text: str) -> bytes:
    # A CR or LF would end the line early and let the rest pose as a reply.
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


def simple(text: str) -> bytes:
    """``+text``."""
    return b"+" + _line(text) + b"\r\n"


def error(text: str) -> bytes:
    """``-text``; the text starts with its code, e.g. ``ERR`` or ``NOQUORUM``."""
    return b"-" + _line(text) + b"\r\n"


def integer(value: int) -> bytes:
    """``:value``."""
    return b":%d\r\n" % value


def bulk(value: bytes | None) -> bytes:
    """``$len`` and the bytes, or the null bulk ``$-1`` for None."""
    if value is None:
        return b"$-1\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items: Sequence[RespReply] | None, proto: int = 2) -> bytes:
    """``*count`` and each item encoded with :func:`encode_reply`; the null
    array for None (``*-1`` in RESP2, ``_`` in RESP3)."""
    if items is None:
        return b"_\r\n" if proto == 3 else b"*-1\r\n"
    return b"*%d\r\n" % len(items) + b"".join(encode_reply(item, proto) for item in items)


def mapping(items: Mapping[str, RespReply], proto: int = 2) -> bytes:
    """A RESP3 map (``%count``), or in RESP2 a flat array of keys and values
    (what Redis sends for HELLO and CONFIG GET to RESP2 clients)."""
    parts = [encode_reply(x, proto) for kv in items.items() for x in kv]
    head = b"%%%d\r\n" % len(items) if proto == 3 else b"*%d\r\n" % (2 * len(items))
    return head + b"".join(parts)


def encode_reply(obj: RespReply, proto: int = 2) -> bytes:
    """Encode any reply value for a connection speaking RESP ``proto`` (2 or
    3; redis-py 8 asks for 3 with HELLO on connect).

    bytes and str become bulk strings (str as UTF-8), None the null (``$-1``
    in RESP2, ``_`` in RESP3), int an integer (bool as 1/0), lists and tuples
    arrays, dicts maps; the wrapper types and
    :class:`~coordinator.errors.RespError` say what plain values cannot.
    """
    if obj is OK:  # the commonest reply (SET), and
        return _OK
    if type(obj) is bytes:  # GET's
        return b"$%d\r\n%s\r\n" % (len(obj), obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        return bulk(bytes(obj))
    if isinstance(obj, str):
        return bulk(obj.encode("utf-8"))
    if obj is None:
        return b"_\r\n" if proto == 3 else b"$-1\r\n"
    if isinstance(obj, int):
        return integer(int(obj))
    if isinstance(obj, SimpleString):
        return simple(obj.value)
    if isinstance(obj, Error):
        return error(obj.message)
    if isinstance(obj, RespError):
        return error(str(obj))
    if isinstance(obj, NullArray):
        return b"_\r\n" if proto == 3 else b"*-1\r\n"
    if isinstance(obj, Mapping):
        return mapping(obj, proto)
    if isinstance(obj, list | tuple):
        return array(obj, proto)
    raise TypeError(f"cannot encode {type(obj).__name__} as a RESP reply")
