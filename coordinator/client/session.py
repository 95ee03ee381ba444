"""One client connection's state, and the commands a connection answers
itself (PING, ECHO, QUIT, SELECT, AUTH, HELLO, CLIENT, CONSISTENCY, COMMAND,
CONFIG GET, INFO): the handlers the command table points to for kind
``connection``. None of them touches storage.

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

from coordinator.client.auth_guard import AuthGuard
from coordinator.client.parsing import Command
from coordinator.client.replies import OK, PONG, RespReply
from coordinator.config import NodeConfig
from coordinator.data.quorum import NO_LEVELS, Consistency, check_levels
from coordinator.errors import CommandError, NoAuthError, WrongPassError
from coordinator.ratelimit import LimitedLog

log = logging.getLogger("ringkv.server")

VERSION = "0.1.0"
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


#: INFO's text for a section name ("default", "all", "server", ...).
InfoText = Callable[[str], bytes]


class SessionCommands:
    """The connection-level commands of one server; the command table holds
    its methods as handlers: ``(self, session, command) -> reply``."""

    def __init__(self, config: NodeConfig, stats: ClientStats, info: InfoText,
                 command_count: int) -> None:
        self.config = config
        self.stats = stats
        self._info = info
        self._command_count = command_count
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

    def config_get(self, session: ClientSession, c: Command) -> RespReply:
        args = c.args
        if args[0].upper() != b"GET" or len(args) != 2:
            raise CommandError("ERR CONFIG is read-only here: only CONFIG GET <pattern>")
        if len(args[1]) > MAX_CONFIG_PATTERN:
            raise CommandError(
                f"ERR CONFIG GET pattern too long ({len(args[1])} > {MAX_CONFIG_PATTERN} bytes)")
        # Compiled here, not through fnmatch's cache of 32,768 patterns.
        match = re.compile(fnmatch.translate(args[1].decode("utf-8", "replace").lower())).match
        shown = {
            k: str(v) for k, v in asdict(self.config).items() if k not in ("secret", "requirepass")
        }
        # Redis names that tools ask for (redis-benchmark reads save and
        # appendonly), answered with what ringkv does instead.
        shown.update(
            save="",
            appendonly="yes",
            appendfsync={"always": "always", "interval": "everysec"}.get(self.config.fsync, "no"),
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
