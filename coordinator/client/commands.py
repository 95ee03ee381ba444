"""The command table: everything ringkv knows about a client command, in one
place (as Redis's ``commands.def``).

Each :class:`CommandSpec` gives the name, the arity as Redis counts it (n:
exactly n words with the name, -n: at least n), the parser that turns the
arguments into a :class:`~coordinator.client.parsing.Command`, the kind, the
handler and the largest reply the command can have. Everything else is
derived from it: the server's dispatch and its reply budget
(:func:`reply_bound`), which commands a draining node refuses
(``write``), the Prometheus consistency label (:func:`level_label`),
``COMMAND COUNT``, and docs/protocol.md's list (a test checks it names every
command here).

Kinds:

==========  =====================================================  ==============
kind        what                                                   handler
==========  =====================================================  ==============
connection  answered by the connection itself, no storage          ``answer``
read        quorum read: R and PR levels                           ``run``
write       quorum write: W and PW levels                          ``run``
admin       cluster-wide, no quorum and no levels (DBSIZE, FLUSH*)  ``run``
==========  =====================================================  ==============

An ``answer`` handler is a method of
:class:`~coordinator.client.session.SessionCommands` and returns the reply;
a ``run`` handler (:mod:`coordinator.client.data_commands`) returns an
awaitable of it, which the server runs concurrently with the connection's
other commands.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from coordinator.client import data_commands as data
from coordinator.client import parsing as p
from coordinator.client.parsing import Command, Limits, Parser
from coordinator.client.replies import RespReply
from coordinator.client.session import ClientSession, SessionCommands
from coordinator.data.quorum import Consistency
from coordinator.errors import SyntaxError_, UnknownCommandError, WrongArityError
from shardserver.protocol.versions import DEFAULT_SIBLING_CAP

#: Room for a reply's framing and for replies that are not values (errors,
#: integers, a VGET's context), in :func:`reply_bound`.
REPLY_SLACK = 1024


class Kind(enum.Enum):
    CONNECTION = "connection"
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


#: ``(session commands, session, command) -> reply`` (kind connection).
Answer = Callable[[SessionCommands, ClientSession, Command], RespReply]
#: ``(backend, command, levels) -> awaitable reply`` (the other kinds).
Run = Callable[[data.Backend, Command, Consistency], Awaitable[RespReply]]
#: ``(request words, limits) -> the most bytes the reply can take``.
Bound = Callable[[Sequence[bytes], Limits], int]


def _slack(request: Sequence[bytes], limits: Limits) -> int:
    return REPLY_SLACK


def _one_value(request: Sequence[bytes], limits: Limits) -> int:
    return limits.max_value_bytes + REPLY_SLACK


def _siblings(request: Sequence[bytes], limits: Limits) -> int:
    return DEFAULT_SIBLING_CAP * _one_value(request, limits)


def _values(request: Sequence[bytes], limits: Limits) -> int:
    value = _one_value(request, limits)
    return min(limits.max_reply_bytes + value, (len(request) - 1) * value)


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    arity: int
    parse: Parser
    kind: Kind
    answer: Answer | None = None  # kind connection
    run: Run | None = None  # the other kinds
    reply_bound: Bound = _slack
    #: Changes stored data: refused while the node drains.
    write: bool = False

    def __post_init__(self) -> None:
        if (self.answer is None) == (self.run is None) or (
            (self.kind is Kind.CONNECTION) != (self.answer is not None)
        ):
            raise ValueError(f"{self.name}: a connection command answers, the others run")
        if self.kind is Kind.WRITE and not self.write:
            raise ValueError(f"{self.name}: a write command must be marked write")


def _conn(name: str, arity: int, parse: Parser, answer: Answer) -> CommandSpec:
    return CommandSpec(name, arity, parse, Kind.CONNECTION, answer=answer)


_ANY_LEVELS = ("R", "PR")
_W_LEVELS = ("W", "PW")

TABLE: tuple[CommandSpec, ...] = (
    _conn("PING", -1, p.ping, SessionCommands.ping),
    _conn("ECHO", 2, p.simple, SessionCommands.echo),
    CommandSpec("GET", -2, p.get, Kind.READ, run=data.get, reply_bound=_one_value),
    CommandSpec("SET", -3, p.set_, Kind.WRITE, run=data.set_, write=True),
    CommandSpec("DEL", -2, p.keys_then_levels(_W_LEVELS), Kind.WRITE, run=data.delete,
                write=True),
    CommandSpec("EXISTS", -2, p.keys_then_levels(_ANY_LEVELS), Kind.READ, run=data.exists),
    CommandSpec("MGET", -2, p.keys_then_levels(_ANY_LEVELS), Kind.READ, run=data.mget,
                reply_bound=_values),
    CommandSpec("MSET", -3, p.mset, Kind.WRITE, run=data.mset, write=True),
    CommandSpec("VGET", -2, p.get, Kind.READ, run=data.vget, reply_bound=_siblings),
    CommandSpec("VSET", -4, p.vset, Kind.WRITE, run=data.vset, write=True),
    CommandSpec("VDEL", -3, p.vdel, Kind.WRITE, run=data.vdel, write=True),
    _conn("CONSISTENCY", -1, p.consistency, SessionCommands.consistency),
    _conn("INFO", -1, p.simple, SessionCommands.info),
    CommandSpec("DBSIZE", 1, p.simple, Kind.ADMIN, run=data.dbsize),
    _conn("COMMAND", -1, p.simple, SessionCommands.command),
    _conn("CONFIG", -2, p.simple, SessionCommands.config_command),
    _conn("FUNCTION", -1, p.simple, SessionCommands.not_supported),
    _conn("SCRIPT", -1, p.simple, SessionCommands.not_supported),
    _conn("EVAL", -1, p.simple, SessionCommands.not_supported),
    _conn("EVALSHA", -1, p.simple, SessionCommands.not_supported),
    _conn("FCALL", -1, p.simple, SessionCommands.not_supported),
    _conn("HELLO", -1, p.simple, SessionCommands.hello),
    _conn("CLIENT", -2, p.simple, SessionCommands.client),
    _conn("SELECT", 2, p.select, SessionCommands.ok),
    _conn("AUTH", -2, p.simple, SessionCommands.auth),
    _conn("QUIT", -1, p.simple, SessionCommands.ok),
    CommandSpec("FLUSHALL", -1, p.simple, Kind.ADMIN, run=data.flushall, write=True),
    CommandSpec("FLUSHDB", -1, p.simple, Kind.ADMIN, run=data.flushall, write=True),
)
COMMANDS: dict[str, CommandSpec] = {spec.name: spec for spec in TABLE}
_BY_NAME = {spec.name.encode(): spec for spec in TABLE}
#: Answered before AUTH; everything else gets NOAUTH.
NO_AUTH_NEEDED = frozenset({"AUTH", "HELLO", "QUIT"})


def lookup(request: Sequence[bytes]) -> CommandSpec | None:
    """The table entry ``request`` names (any case), or None."""
    return _BY_NAME.get(request[0].upper()) if request else None


def checked(request: Sequence[bytes], spec: CommandSpec | None) -> CommandSpec:
    """``spec`` (``lookup(request)``) once the request's arity is checked;
    raises UnknownCommandError or WrongArityError in Redis's wording."""
    if not request:
        raise SyntaxError_("empty request")
    if spec is None:
        raise UnknownCommandError(
            request[0].decode("utf-8", "replace"),
            [a.decode("utf-8", "replace") for a in request[1:]],
        )
    n, arity = len(request), spec.arity
    if (arity >= 0 and n != arity) or (arity < 0 and n < -arity):
        raise WrongArityError(spec.name)
    return spec


def parse(request: Sequence[bytes], limits: Limits) -> Command:
    spec = checked(request, lookup(request))
    return spec.parse(spec.name, list(request[1:]), limits)


def reply_bound(request: Sequence[bytes], limits: Limits) -> int:
    """The most bytes the reply to ``request`` can take: values for the
    reads, :data:`REPLY_SLACK` for everything else. The server counts it
    against a connection's budget before the command runs (server.py)."""
    spec = lookup(request)
    return REPLY_SLACK if spec is None else spec.reply_bound(request, limits)


def level_label(spec: CommandSpec, levels: Consistency) -> str:
    """The consistency a command ran at, as a metrics label."""
    if spec.kind is Kind.READ:
        return f"R={levels.r} PR={levels.pr or 0}"
    if spec.kind is Kind.WRITE:
        return f"W={levels.w} PW={levels.pw or 0}"
    return "-"
