"""CONFIG SET: which node settings change at run time, and how a value is
checked (pure).

Only settings the client server reads per connection or per command can
change without a restart (:data:`RUNTIME`); the others name the TOML key to
edit. Redis's names that tools send are accepted for ours
(:data:`REDIS_NAMES`). A new value goes through the same checks as the
config file (``coordinator.config.validate``), so CONFIG SET can never make
a configuration the node would refuse to start with.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from coordinator.config import ConfigError, NodeConfig, validate
from coordinator.errors import CommandError

#: Settings CONFIG SET changes, and what the change applies to.
RUNTIME: dict[str, str] = {
    "max_clients": "connections accepted from now on",
    "idle_timeout_s": "connections accepted from now on",
    "max_node_reply_bytes": "commands admitted from now on",
    "r": "commands of connections without CONSISTENCY R",
    "w": "commands of connections without CONSISTENCY W",
    "pr": "commands of connections without CONSISTENCY PR",
    "pw": "commands of connections without CONSISTENCY PW",
}
#: Redis's names for ours.
REDIS_NAMES = {"maxclients": "max_clients", "timeout": "idle_timeout_s"}
_TYPES = {f.name: f.type for f in fields(NodeConfig)}


def setting_name(raw: bytes) -> str:
    name = raw.decode("utf-8", "replace").lower()
    return REDIS_NAMES.get(name, name)


def changed(config: NodeConfig, raw_name: bytes, raw_value: bytes) -> NodeConfig:
    """``config`` with one run-time setting changed, or a CommandError that
    says why not."""
    name = setting_name(raw_name)
    if name not in _TYPES or name in ("secret", "requirepass"):
        raise CommandError(f"ERR Unknown option or number of arguments for CONFIG SET - "
                           f"'{raw_name.decode('utf-8', 'replace')[:64]}'")
    if name not in RUNTIME:
        raise CommandError(
            f"ERR CONFIG SET {name}: not changeable at run time; set it in the node's TOML "
            f"file and restart (run-time settings: {', '.join(RUNTIME)})")
    text = raw_value.decode("utf-8", "replace")
    kind = str(_TYPES[name])
    try:
        value: float = float(text) if kind == "float" else int(text)
    except ValueError:
        raise CommandError(f"ERR CONFIG SET {name}: {text[:64]!r} is not "
                           f"{'a number' if kind == 'float' else 'an integer'}") from None
    changes: dict[str, Any] = {name: value}
    new = replace(config, **changes)
    try:
        validate(new)
    except ConfigError as exc:
        raise CommandError(f"ERR CONFIG SET {name}: {exc}") from None
    return new
