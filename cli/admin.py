"""How the cluster admin commands (``cli.cluster``: ``ringkv status``,
``ring``, ``compact``, ``repair``, ``hints``, ``transfers``, ``flush``,
``drain``, ``remove``) reach a node, and their common options.

Each connects to one node's peer port and proves it holds the cluster
secret (the same HMAC handshake as a peer), sends a request of the admin API
(``coordinator.ops.admin_api``) and decodes the reply into its record;
``--node`` makes that node forward the request. Defaults fit ``ringkv up``:
127.0.0.1:17379 and the secret in ./ringkv-data/cluster.secret. Every
command prints a table, or with ``--json`` one JSON document (the reply's
fields); failures are one line on stderr and exit code 1 (cannot reach or
authenticate, or a reply that does not decode) or 2 (the node refused the
request).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click

from coordinator.cluster.peer import peer_client
from coordinator.config import ConfigError, load
from coordinator.ops import admin_api as api
from shardserver.protocol import messages as m
from shardserver.protocol import records
from shardserver.protocol.client import ShardClient
from shardserver.protocol.errors import ProtocolError, ShardUnavailable

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")
DEFAULT_ADDR = "127.0.0.1:17379"
DEFAULT_SECRET_FILE = os.path.join("ringkv-data", "cluster.secret")
ADMIN_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class Refused:
    """The node refused the request; ``message`` says why."""

    message: str


class AdminClient:
    """Where and how to reach the cluster, and how to show a reply."""

    def __init__(self, addr: str, secret: bytes, node: str | None, as_json: bool) -> None:
        self.addr, self.secret, self.node, self.as_json = addr, secret, node, as_json

    def call(self, request: api.AdminRequest, reply: type[R]) -> R:
        """The ``reply`` record answering ``request``."""
        answer = self.call_or_refusal(request, reply)
        if isinstance(answer, Refused):
            fail(2, answer.message)
        return answer

    def call_or_refusal(self, request: api.AdminRequest, reply: type[R]) -> R | Refused:
        """As :meth:`call`, but a request the node refuses (exit code 2) comes
        back as :class:`Refused`, for a command that can do without it."""
        assert reply is api.reply_type(request), (request, reply)
        payload = asyncio.run(self._call(api.encode_request(request, self.node)))
        if isinstance(payload, Refused):
            return payload
        try:
            return records.from_wire(reply, payload)
        except ProtocolError as exc:
            fail(1, f"{self.addr} sent a reply this ringkv cannot read: {exc}")

    def call_each(self, request: api.AdminRequest, reply: type[R],
                  nodes: list[str]) -> dict[str, R | str]:
        """``request`` run on each of ``nodes`` at once (forwarded by the node
        asked): each node's reply record, or the one-line error it got."""
        async def each() -> list[R | str]:
            async with peer_client(self.addr, "admin-cli", self.secret,
                                   timeout_s=10) as client:
                return list(await asyncio.gather(*(
                    ask(client, request, reply, node=node) for node in nodes)))

        return dict(zip(nodes, asyncio.run(each()), strict=True))

    async def _call(self, payload: dict[str, Any]) -> object:
        async with peer_client(self.addr, "admin-cli", self.secret, timeout_s=10) as client:
            try:
                reply = await client.call(m.Admin(payload), timeout=ADMIN_TIMEOUT_S)
            except ShardUnavailable as exc:
                fail(1, f"cannot reach the node at {self.addr}: {exc.reason}")
        if reply.status is m.Status.BAD_REQUEST:
            return Refused(reply.message)
        if not reply.ok:
            fail(1, f"{self.addr}: {reply.status.name} {reply.message}")
        return reply.payload

    def show(self, reply: object, lines: list[str]) -> None:
        """``lines``, or with ``--json`` the reply's fields."""
        if self.as_json:
            doc = records.to_wire(reply)
            click.echo(json.dumps(doc, indent=2, sort_keys=True, default=_jsonable))
        else:
            click.echo("\n".join(lines))


async def ask(client: ShardClient, request: api.AdminRequest, reply: type[R], *,
              node: str | None = None, timeout_s: float = ADMIN_TIMEOUT_S) -> R | str:
    """``request`` over ``client`` (forwarded to ``node`` when given): the
    reply record, or the one-line error it got instead."""
    assert reply is api.reply_type(request), (request, reply)
    try:
        got = await client.call(m.Admin(api.encode_request(request, node)), timeout=timeout_s)
    except ShardUnavailable as exc:
        return f"cannot reach {client.path}: {exc.reason}"
    if not got.ok:
        return got.message
    try:
        return records.from_wire(reply, got.payload)
    except ProtocolError as exc:
        return f"a reply this ringkv cannot read: {exc}"


def _jsonable(obj: object) -> object:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class PeerAddr(click.ParamType[str]):
    """A node's peer address, HOST:PORT (a bracketed IPv6 host works too)."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        text = str(value)
        host, sep, port = text.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit():
            self.fail(f"{text!r} is not HOST:PORT (for example {DEFAULT_ADDR})", param, ctx)
        if not 0 < int(port) < 65536:
            self.fail(f"{text!r}: the port must be 1..65535", param, ctx)
        return text


def fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def _secret(secret_file: str | None, config_path: str | None) -> tuple[bytes, str | None]:
    if config_path is not None:
        try:
            config = load(config_path)
        except ConfigError as exc:
            fail(1, str(exc))
        return config.secret.encode(), f"{config.bind}:{config.peer_port}"
    path = secret_file or DEFAULT_SECRET_FILE
    try:
        with open(path) as f:
            return f.read().strip().encode(), None
    except OSError as exc:
        fail(1, f"cannot read the cluster secret from {path}: {exc.strerror or exc} "
                "(use --secret-file or --config)")


def admin_options(with_node: bool = True) -> Callable[[F], F]:
    """--addr, --secret-file, --config, --json (and --node) for every command."""

    def decorate(fn: F) -> F:
        @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
        @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                      help="Take the peer address and secret from this node config.")
        @click.option("--secret-file", type=click.Path(dir_okay=False),
                      help=f"Cluster secret (default {DEFAULT_SECRET_FILE}).")
        @click.option("--addr", type=PeerAddr(), default=None,
                      help=f"Peer host:port of a node ({DEFAULT_ADDR}).")
        @functools.wraps(fn)
        def wrapper(addr: str | None, secret_file: str | None, config_path: str | None,
                    as_json: bool, node: str | None = None, **kwargs: Any) -> Any:
            secret, config_addr = _secret(secret_file, config_path)
            client = AdminClient(addr or config_addr or DEFAULT_ADDR, secret, node, as_json)
            return fn(client, **kwargs)

        if with_node:
            wrapper = click.option("--node", help="Run it on this node (id), not the one asked.")(
                wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate
