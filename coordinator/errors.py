"""Typed errors of the coordinator.

Every error a client can see is a :class:`RespError` whose ``str`` is the
exact RESP error text (without the leading ``-`` and the trailing CRLF), so
the connection handler translates an exception to a reply by formatting it and
nothing else; the first word is the Redis-style error code (``ERR``,
``NOQUORUM``, ``READONLY`` ...), which clients such as redis-py map to their own
exception classes.

The difference between the two kinds of client-visible error is what happens
to the connection: a :class:`CommandError` answers one request and the
connection goes on; a :class:`RespProtocolError` means the byte stream can no
longer be framed, so the reply is sent and then the connection is closed, as
Redis does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class CoordinatorError(Exception):
    """Base class of every error the coordinator raises on purpose."""


class RingError(CoordinatorError, ValueError):
    """A ring is malformed (bad Q, owner not a member, undecodable gossip)."""


class RespError(CoordinatorError):
    """An error that becomes a RESP error reply; ``str(e)`` is the reply text."""

    def __init__(self, message: str) -> None:
        # CR or LF inside a simple error would let a client-controlled string
        # inject a second reply into the stream, so they are flattened here,
        # once, for every subclass.
        self.message = message.replace("\r", " ").replace("\n", " ")
        super().__init__(self.message)

    @property
    def code(self) -> str:
        """The error code: the first word of the text (``ERR``, ``NOQUORUM`` ...)."""
        return self.message.split(" ", 1)[0]

    def __str__(self) -> str:
        return self.message


class RespProtocolError(RespError):
    """The request stream cannot be framed; reply, then close the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"ERR Protocol error: {reason}")
        self.reason = reason


class CommandError(RespError):
    """One request failed; the connection stays usable."""


class UnknownCommandError(CommandError):
    """Redis's wording, so tools that parse it (redis-cli hints) keep working."""

    def __init__(self, name: str, args: Sequence[str] = ()) -> None:
        # Redis quotes each argument and leaves a space after every one.
        shown = "".join(f"'{arg[:128]}' " for arg in args[:20])
        super().__init__(
            f"ERR unknown command '{name[:128]}', with args beginning with: {shown}"
        )


class WrongArityError(CommandError):
    """Redis's wording for a bad argument count; the name is lower-cased like Redis."""

    def __init__(self, name: str) -> None:
        super().__init__(f"ERR wrong number of arguments for '{name.lower()}' command")


class SyntaxError_(CommandError):
    """Redis's generic ``ERR syntax error``; the underscore avoids the builtin."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__("ERR syntax error" if detail is None else f"ERR syntax error, {detail}")


class UnsupportedOptionError(CommandError):
    """A Redis option we cannot honour; the text says why instead of ignoring it."""

    def __init__(self, option: str, why: str) -> None:
        super().__init__(f"ERR {option} is not supported: {why}")


class ValueTooLargeError(CommandError):
    """A value over ``max_value_bytes``; both numbers are in the text."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"ERR value too large ({size} > {limit} bytes)")
        self.size = size
        self.limit = limit


class KeyTooLargeError(CommandError):
    """A key that is empty or longer than the key limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"ERR invalid key length ({size} bytes, allowed 1..{limit})")
        self.size = size
        self.limit = limit


class NoQuorumError(CommandError):
    """Too few replicas answered in time; names who was asked and how many acked."""

    def __init__(
        self, needed: int, got: int, replicas: Iterable[str] = (), what: str = "acks",
        *, before_sending: bool = False,
    ):
        names = ", ".join(replicas)
        outcome = f"only {got} up, nothing sent" if before_sending else f"got {got}"
        super().__init__(f"NOQUORUM needed {needed} {what}, {outcome} (replicas: {names})")
        self.needed = needed
        self.got = got


class ReadOnlyError(CommandError):
    """Writes are refused, e.g. a replica's disk is full."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"READONLY {detail}")


class NoAuthError(CommandError):
    """Redis's exact text, which redis-py maps to AuthenticationError."""

    def __init__(self) -> None:
        super().__init__("NOAUTH Authentication required.")


class WrongPassError(CommandError):
    """Redis's exact text for a failed AUTH."""

    def __init__(self) -> None:
        super().__init__(
            "WRONGPASS invalid username-password pair or user is disabled."
        )


class NoProtoError(CommandError):
    """``HELLO 3``: we speak RESP2 only, and say so as Redis 6+ would."""

    def __init__(self) -> None:
        super().__init__("NOPROTO sorry, this protocol version is not supported")


class UnavailableError(CommandError):
    """The partition cannot be served right now (worker restarting, node joining)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"UNAVAILABLE {detail}")
