"""Client commands: names, arity and options parsed into typed requests (pure).

The server hands each request (a list of byte strings from coordinator.client.resp)
to :func:`parse`, which either returns a command dataclass or raises a
:class:`~coordinator.errors.CommandError` whose text is the RESP error reply,
in Redis's wording where Redis has one. Options Redis has and ringkv cannot
honour are refused with the reason, never ignored (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coordinator.config import NodeConfig
from coordinator.data.quorum import NO_LEVELS, Consistency
from coordinator.errors import (
    CommandError,
    KeyTooLargeError,
    SyntaxError_,
    UnsupportedOptionError,
    ValueTooLargeError,
    WrongArityError,
)
from shardserver.protocol.messages import MAX_KEY_BYTES

_NO_EXPIRY = "ringkv keys do not expire"
_NO_CONDITIONAL = (
    "conditional writes need a read-modify-write across replicas; use VGET and VSET with "
    "its context"
)
UNSUPPORTED_SET_OPTIONS = {
    "EX": _NO_EXPIRY,
    "PX": _NO_EXPIRY,
    "EXAT": _NO_EXPIRY,
    "PXAT": _NO_EXPIRY,
    "KEEPTTL": _NO_EXPIRY,
    "NX": _NO_CONDITIONAL,
    "XX": _NO_CONDITIONAL,
    "GET": "SET does not read; send GET first",
}


@dataclass(frozen=True, slots=True)
class Limits:
    max_value_bytes: int
    max_reply_bytes: int  # one MGET's values together

    @classmethod
    def of(cls, config: NodeConfig) -> Limits:
        return cls(config.max_value_bytes, config.max_reply_bytes)


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # upper case, as dispatched
    keys: tuple[bytes, ...] = ()
    values: tuple[bytes, ...] = ()
    consistency: Consistency = NO_LEVELS
    context: bytes | None = None  # VSET/VDEL
    args: tuple[bytes, ...] = ()  # anything else, verbatim


#: A placeholder for "no command" (a reply slot of a connection command).
NO_COMMAND = Command("")

Parser = Callable[[str, list[bytes], Limits], Command]


def _key(raw: bytes) -> bytes:
    if not 1 <= len(raw) <= MAX_KEY_BYTES:
        raise KeyTooLargeError(len(raw), MAX_KEY_BYTES)
    return raw


def _value(raw: bytes, limits: Limits) -> bytes:
    if len(raw) > limits.max_value_bytes:
        raise ValueTooLargeError(len(raw), limits.max_value_bytes)
    return raw


def _int(raw: bytes) -> int:
    try:
        text = raw.decode("ascii")
        if text.strip() != text or not text:
            raise ValueError
        return int(text)
    except (UnicodeDecodeError, ValueError):
        raise CommandError("ERR value is not an integer or out of range") from None


def _levels(options: list[bytes], allowed: tuple[str, ...], what: str) -> Consistency:
    """``R n`` / ``W n`` / ``PR n`` / ``PW n`` pairs; others are refused."""
    found: dict[str, int] = {}
    i = 0
    while i < len(options):
        opt = options[i].decode("utf-8", "replace").upper()
        if what == "SET" and opt in UNSUPPORTED_SET_OPTIONS:
            raise UnsupportedOptionError(f"SET {opt}", UNSUPPORTED_SET_OPTIONS[opt])
        if opt not in allowed or i + 1 >= len(options):
            raise SyntaxError_()
        found[opt.lower()] = _int(options[i + 1])
        i += 2
    return Consistency(**found) if found else NO_LEVELS


def simple(name: str, args: list[bytes], limits: Limits) -> Command:
    return Command(name, args=tuple(args))


def ping(name: str, args: list[bytes], limits: Limits) -> Command:
    if len(args) > 1:
        raise WrongArityError(name)
    return Command(name, args=tuple(args))


def get(name: str, args: list[bytes], limits: Limits) -> Command:
    return Command(name, keys=(_key(args[0]),), consistency=_levels(args[1:], ("R", "PR"), name))


def set_(name: str, args: list[bytes], limits: Limits) -> Command:
    cons = _levels(args[2:], ("W", "PW"), "SET")
    return Command(name, keys=(_key(args[0]),), values=(_value(args[1], limits),), consistency=cons)


def keys_then_levels(allowed: tuple[str, ...]) -> Parser:
    """DEL/EXISTS/MGET: keys, optionally followed by levels. A key that looks
    like a level keyword is still a key unless a number follows it at the end."""

    def parse_(name: str, args: list[bytes], limits: Limits) -> Command:
        split = len(args)
        while split >= 3 and args[split - 2].upper().decode("utf-8", "replace") in allowed:
            try:
                _int(args[split - 1])
            except CommandError:
                break
            split -= 2
        cons = _levels(args[split:], allowed, name)
        return Command(name, keys=tuple(_key(k) for k in args[:split]), consistency=cons)

    return parse_


def mset(name: str, args: list[bytes], limits: Limits) -> Command:
    if len(args) % 2:
        raise WrongArityError(name)
    keys = tuple(_key(k) for k in args[0::2])
    values = tuple(_value(v, limits) for v in args[1::2])
    return Command(name, keys=keys, values=values)


def vset(name: str, args: list[bytes], limits: Limits) -> Command:
    # VSET key context value [W n] [PW n]; an empty context means "saw nothing".
    cons = _levels(args[3:], ("W", "PW"), name)
    return Command(
        name,
        keys=(_key(args[0]),),
        values=(_value(args[2], limits),),
        context=args[1],
        consistency=cons,
    )


def vdel(name: str, args: list[bytes], limits: Limits) -> Command:
    # VDEL key context [W n] [PW n]
    cons = _levels(args[2:], ("W", "PW"), name)
    return Command(name, keys=(_key(args[0]),), context=args[1], consistency=cons)


def consistency(name: str, args: list[bytes], limits: Limits) -> Command:
    # CONSISTENCY with no argument shows the connection's levels.
    return Command(name, consistency=_levels(args, ("R", "W", "PR", "PW"), name))


def select(name: str, args: list[bytes], limits: Limits) -> Command:
    if _int(args[0]) != 0:
        raise CommandError("ERR DB index is out of range")
    return Command(name)
