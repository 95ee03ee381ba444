"""One client connection's state, and the commands a connection answers
itself (PING, ECHO, QUIT, SELECT, AUTH, HELLO, CLIENT, CONSISTENCY, COMMAND,
CONFIG, INFO, and the refusals of FUNCTION, SCRIPT, EVAL ...): the handlers
the command table points to for kind ``connection``. None of them touches
storage. CONFIG SET changes the settings of ``config_set.RUNTIME`` through
the server's ``on_config``; CONFIG RESETSTAT zeroes INFO's counters.

AUTH: the password is compared in constant time; a failed AUTH is counted,
logged with the client's address, and from the second one on a connection
holds that connection (``ClientSession.hold_s``): its reply and everything
it sent after wait ``AUTH_DELAY_BASE_S`` doubling with each failure up to
``AUTH_DELAY_MAX_S`` (the server goes on serving everyone else). Failures
are also counted per source address (``auth_guard``), which slows an address
that guesses over many connections. Only the ``default`` user exists: any
other user name fails like a wrong password, as in Redis.
"""

from __future__ import annotations

import fnmatch
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from coordinator.client import config_set
from coordinator.client.auth_guard import AuthGuard
from coordinator.client.parsing import Command
from coordinator.client.replies import OK, PONG, RespReply
from coordinator.config import NodeConfig
from coordinator.data.quorum import NO_LEVELS, Consistency, check_levels
from coordinator.errors import (
    CommandError,
    NoAuthError,
    UnsupportedOptionError,
    WrongPassError,
)
from coordinator.ratelimit import LimitedLog

log = logging.getLogger("ringkv.server")

VERSION = "0.1.0"
#: The Redis version whose commands and replies ringkv follows (INFO server's
#: redis_version, which tools such as redis-py's test harness check).
REDIS_VERSION = "7.0.0"
# Failed AUTHs on one connection: the first is answered at once, the n-th
# after AUTH_DELAY_BASE_S * 2**(n-2), at most AUTH_DELAY_MAX_S.
AUTH_DELAY_BASE_S = 0.02
AUTH_DELAY_MAX_S = 1.0
MAX_CONFIG_PATTERN = 256  # CONFIG GET pattern bytes; our names are < 32


@dataclass(slots=True)
class ClientSession:
    """What the server knows of one client connection."""

    id: int
    peer: str
    host: str = ""  # the client's address without the port (AUTH failures are counted by it)
    proto: int = 2
    authenticated: bool = False
    name: str = ""
    consistency: Consistency = NO_LEVELS  # set by CONSISTENCY
    auth_failures: int = 0
    hold_s: float = 0.0  # read and answer nothing more for this long (failed AUTH)


@dataclass(slots=True)
class ClientStats:
    connections_received: int = 0
    rejected_connections: int = 0
    commands_processed: int = 0
    protocol_errors: int = 0
    slow_readers_dropped: int = 0
    auth_failures: int = 0
    overloaded_refused: int = 0  # commands refused: max_node_reply_bytes was full
    values_discarded: int = 0  # requests with a bulk past the limit, dropped as they came


#: INFO's text for a section name ("default", "all", "server", ...).
InfoText = Callable[[str], bytes]
#: Called with the new configuration after CONFIG SET (the server adopts it).
OnConfig = Callable[[NodeConfig], None]
_NO_SCRIPTS = "ringkv runs no server-side scripts or functions"


class SessionCommands:
    """The connection-level commands of one server; the command table holds
    its methods as handlers: ``(self, session, command) -> reply``."""

    def __init__(self, config: NodeConfig, stats: ClientStats, info: InfoText,
                 command_count: int, *, on_config: OnConfig = lambda config: None,
                 reset_stats: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.stats = stats
        self._info = info
        self._command_count = command_count
        self._on_config = on_config
        self._reset_stats = reset_stats
        self._password = config.requirepass.encode()
        self._auth_log = LimitedLog(log)
        self.auth_guard = AuthGuard()
        #: The node config's levels (checked when it was loaded).
        self.node_levels = Consistency(r=config.r, w=config.w, pr=config.pr, pw=config.pw)

    def defaults(self, session: ClientSession) -> Consistency:
        """The session's levels, unset ones from the node config."""
        if session.consistency is NO_LEVELS:
            return self.node_levels
        return session.consistency.merged(self.node_levels)

    # -- handlers ---------------------------------------------------------
    def ping(self, session: ClientSession, c: Command) -> RespReply:
        return c.args[0] if c.args else PONG

    def echo(self, session: ClientSession, c: Command) -> RespReply:
        return c.args[0]

    def ok(self, session: ClientSession, c: Command) -> RespReply:
        """QUIT (the server closes after the reply) and SELECT 0."""
        return OK

    def auth(self, session: ClientSession, c: Command) -> RespReply:
        """``AUTH password`` or ``AUTH user password``."""
        if len(c.args) > 2:
            raise CommandError("ERR syntax error")
        return self._auth(session, c.args[-1], c.args[0] if len(c.args) == 2 else b"default")

    def hello(self, session: ClientSession, c: Command) -> RespReply:
        args = list(c.args)
        proto = session.proto
        if args:
            try:
                proto = int(args[0])
            except ValueError:
                raise CommandError(
                    "ERR Protocol version is not an integer or out of range"
                ) from None
            if proto not in (2, 3):
                raise CommandError("NOPROTO unsupported protocol version")
            rest = args[1:]
            while rest:
                opt = rest[0].upper()
                if opt == b"AUTH" and len(rest) >= 3:
                    self._auth(session, rest[2], rest[1])
                    rest = rest[3:]
                elif opt == b"SETNAME" and len(rest) >= 2:
                    session.name = rest[1].decode("utf-8", "replace")
                    rest = rest[2:]
                else:
                    raise CommandError(f"ERR Syntax error in HELLO option '{rest[0]!r}'")
        if not session.authenticated:
            raise NoAuthError()
        session.proto = proto
        return {
            "server": "ringkv",
            "version": VERSION,
            "proto": proto,
            "id": session.id,
            "mode": "cluster",
            "role": "master",
            "modules": [],
        }

    def client(self, session: ClientSession, c: Command) -> RespReply:
        args = c.args
        sub = args[0].upper()
        if sub == b"SETNAME" and len(args) == 2:
            session.name = args[1].decode("utf-8", "replace")
            return OK
        if sub == b"GETNAME":
            return session.name or None
        if sub == b"ID":
            return session.id
        if sub == b"SETINFO":
            return OK
        raise CommandError(f"ERR unknown subcommand '{args[0].decode('utf-8', 'replace')}'")

    def consistency(self, session: ClientSession, c: Command) -> RespReply:
        if c.consistency != Consistency():
            check_levels(c.consistency.merged(session.consistency), self.config.n)
            session.consistency = c.consistency.merged(session.consistency)
            return OK
        return dict(asdict(self.defaults(session)))

    def command(self, session: ClientSession, c: Command) -> RespReply:
        sub = c.args[0].upper() if c.args else b""
        return self._command_count if sub == b"COUNT" else []

    def not_supported(self, session: ClientSession, c: Command) -> RespReply:
        """FUNCTION, SCRIPT, EVAL, EVALSHA, FCALL: a clear refusal."""
        raise UnsupportedOptionError(c.name, _NO_SCRIPTS)

    def config_command(self, session: ClientSession, c: Command) -> RespReply:
        sub, args = c.args[0].upper(), c.args
        if sub == b"GET" and len(args) == 2:
            return self._config_get(args[1])
        if sub == b"SET" and len(args) >= 3 and len(args) % 2 == 1:
            new = self.config
            for name, value in zip(args[1::2], args[2::2], strict=True):
                new = config_set.changed(new, name, value)
            self.adopt(new)
            return OK
        if sub == b"RESETSTAT" and len(args) == 1:
            self.reset_stats()
            return OK
        if sub == b"REWRITE":
            raise UnsupportedOptionError("CONFIG REWRITE", "edit the node's TOML file")
        raise CommandError(f"ERR unknown subcommand or wrong number of arguments for "
                           f"'{args[0].decode('utf-8', 'replace')[:32]}'. Try CONFIG GET, "
                           f"CONFIG SET or CONFIG RESETSTAT")

    def adopt(self, config: NodeConfig) -> None:
        """Run with ``config`` from now on (CONFIG SET)."""
        old, self.config = self.config, config
        self.node_levels = Consistency(r=config.r, w=config.w, pr=config.pr, pw=config.pw)
        changes = {k: v for k, v in asdict(config).items() if getattr(old, k) != v}
        log.info("CONFIG SET: %s", ", ".join(f"{k}={v}" for k, v in changes.items()))
        self._on_config(config)

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT: INFO's counters from 0."""
        for name in asdict(self.stats):
            setattr(self.stats, name, 0)
        self._reset_stats()

    def _config_get(self, pattern: bytes) -> RespReply:
        if len(pattern) > MAX_CONFIG_PATTERN:
            raise CommandError(
                f"ERR CONFIG GET pattern too long ({len(pattern)} > {MAX_CONFIG_PATTERN} bytes)")
        # Compiled here, not through fnmatch's cache of 32,768 patterns.
        match = re.compile(fnmatch.translate(pattern.decode("utf-8", "replace").lower())).match
        shown = {
            k: _config_value(v) for k, v in asdict(self.config).items()
            if k not in ("secret", "requirepass")
        }
        # Redis names that tools ask for (redis-benchmark reads save and
        # appendonly), answered with what ringkv does instead.
        shown.update(
            save="",
            appendonly="yes",
            appendfsync={"always": "always", "interval": "everysec"}.get(self.config.fsync, "no"),
            **{redis: shown[ours] for redis, ours in config_set.REDIS_NAMES.items()},
        )
        return {k: v for k, v in shown.items() if match(k)}

    def info(self, session: ClientSession, c: Command) -> RespReply:
        return self._info(c.args[0].decode("utf-8", "replace") if c.args else "default")

    # -- AUTH -----------------------------------------------------------------
    def _auth(self, session: ClientSession, password: bytes, user: bytes) -> RespReply:
        if not self.config.requirepass:
            raise CommandError(
                "ERR AUTH <password> called without any password configured for the "
                "default user. Are you sure your configuration is correct?"
            )
        # The password is compared whoever the user is: the time taken does
        # not say whether the name was right.
        right = hmac.compare_digest(password, self._password)
        if not (right and user == b"default"):
            self.auth_guard.failed(session.host, time.monotonic())
            session.auth_failures += 1
            self.stats.auth_failures += 1
            if session.auth_failures > 1:
                session.hold_s = min(AUTH_DELAY_MAX_S,
                                     AUTH_DELAY_BASE_S * 2 ** (session.auth_failures - 2))
            self._auth_log.log(logging.WARNING, "AUTH failed from %s (%d on this connection)",
                               session.peer, session.auth_failures)
            raise WrongPassError()
        session.authenticated = True
        session.auth_failures = 0
        self.auth_guard.succeeded(session.host)
        return OK


def _config_value(v: object) -> str:
    """A setting as Redis shows one: lists space-separated (as ``save``),
    booleans yes/no."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, tuple | list):
        return " ".join(map(str, v))
    return str(v)
