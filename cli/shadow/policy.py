"""What the shadow proxy does with each client request (pure): pass it to
the primary only, or also mirror it to ringkv and compare the replies.

Derived from ringkv's own command table (``coordinator.client.commands``),
so a command ringkv learns is mirrored without a change here. The lists
below are what the table cannot say:

- :data:`NOT_COMPARED`: replies that legitimately differ between two
  servers (INFO, CONFIG, DBSIZE, TIME …), that belong to the connection
  (AUTH, HELLO, CLIENT, QUIT: the proxy authenticates to ringkv itself), or
  commands only ringkv has (VGET, VSET, VDEL, CONSISTENCY), which a Redis
  primary refuses. Served by the primary, never mirrored.
- :data:`UNOBSERVABLE`: commands after which replies no longer pair with
  requests one to one (pub/sub, MONITOR, replication, ``CLIENT REPLY``).
  The connection stays a plain pipe to the primary from then on and is no
  longer mirrored. (RESP3 after ``HELLO 3`` is fine: hiredis reads it, and
  its out-of-band pushes, e.g. of ``CLIENT TRACKING``, are told apart from
  replies.)
- :data:`TRANSACTION`: MULTI … EXEC queues on the primary but would run at
  once on ringkv, so the whole transaction is "unsupported", not mirrored.

Anything else ringkv's table lacks or answers with its not-supported
handler (EVAL, FUNCTION …), and any option its parser refuses as
unsupported (``SET … EX``), is "unsupported": served by the primary,
counted by name, not mirrored (ringkv would only refuse it).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.client import commands
from coordinator.client.parsing import Limits
from coordinator.client.session import SessionCommands
from coordinator.errors import CommandError, UnsupportedOptionError

NOT_COMPARED = frozenset({
    "INFO", "CONFIG", "DBSIZE", "TIME", "RANDOMKEY", "COMMAND", "CLIENT", "HELLO", "AUTH",
    "QUIT", "RESET", "LASTSAVE", "MEMORY", "SLOWLOG", "LATENCY", "ROLE", "DEBUG",
    "VGET", "VSET", "VDEL", "CONSISTENCY",
})
UNOBSERVABLE = frozenset({
    "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR", "SYNC", "PSYNC", "REPLCONF",
})
TRANSACTION = frozenset({"MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH"})
#: Value and reply sizes are ringkv's to judge (its config is not known
#: here): the parser only decides what is supported at all.
_NO_SIZE_LIMITS = Limits(max_value_bytes=1 << 62, max_reply_bytes=1 << 62)


class Action(enum.Enum):
    MIRROR = "mirror"  # to the primary and to ringkv; replies compared
    NOT_COMPARED = "not compared"  # to the primary only
    UNSUPPORTED = "unsupported"  # to the primary only; ringkv cannot do it
    UNOBSERVABLE = "unobservable"  # to the primary; the connection stops being observed


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    #: The command's name upper case, or the unsupported option
    #: (``SET EX``): the label it is counted under.
    label: str
    keys: tuple[bytes, ...] = ()
    #: Changes data: a dropped mirror of it leaves ringkv behind for its keys.
    write: bool = False


def plan(request: Sequence[bytes], in_transaction: bool = False) -> Plan:
    """What to do with ``request`` (a non-empty list of words)."""
    name = request[0].decode("utf-8", "replace").upper()
    if name in UNOBSERVABLE or _unobservable_subcommand(name, request):
        return Plan(Action.UNOBSERVABLE, name)
    if in_transaction or name in TRANSACTION:
        return Plan(Action.UNSUPPORTED, "MULTI")
    if name in NOT_COMPARED:
        return Plan(Action.NOT_COMPARED, name)
    spec = commands.lookup(request)
    if spec is None or spec.answer is SessionCommands.not_supported:
        return Plan(Action.UNSUPPORTED, name)
    try:
        command = commands.parse(request, _NO_SIZE_LIMITS)
    except UnsupportedOptionError as exc:
        return Plan(Action.UNSUPPORTED, _option(str(exc), name))
    except CommandError:
        # Wrong arity, syntax, a bad key: both servers should refuse it, and
        # whether they do is worth comparing (by the first argument).
        return Plan(Action.MIRROR, name, tuple(request[1:2]), spec.write)
    return Plan(Action.MIRROR, name, command.keys, spec.write)


def _unobservable_subcommand(name: str, request: Sequence[bytes]) -> bool:
    sub = request[1].upper() if len(request) > 1 else b""
    return name == "CLIENT" and sub == b"REPLY"


def _option(text: str, name: str) -> str:
    """``SET EX`` from ringkv's "ERR SET EX is not supported: …"."""
    head = text.removeprefix("ERR ").split(" is not supported", 1)[0]
    return head if head.startswith(name) else name

