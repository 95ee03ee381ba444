"""``--decode ringkv``: show engine entries the way the shard layer stores
them — key as partition + user key, value as a sibling set with clocks,
timestamps and tombstones. Lives in cli/ because lsm must not know the
shard layer's formats."""

from __future__ import annotations

from typing import Any

from lsm.inspect.common import render_bytes, render_value
from shardserver.layout import PARTITION_BYTES, split_storage_key
from shardserver.protocol.errors import VersionFormatError
from shardserver.protocol.hlc import hlc_logical, hlc_wall_ms
from shardserver.protocol.versions import Version, decode_siblings

DECODERS = ("raw", "ringkv")


def key_text(skey: bytes, hex_: bool) -> str:
    if len(skey) <= PARTITION_BYTES:
        return f"{render_bytes(skey, hex_)} (too short for a ringkv key)"
    partition, key = split_storage_key(skey)
    return f"p={partition} {render_bytes(key, hex_)}"


def value_text(raw: bytes, hex_: bool) -> str:
    try:
        siblings = decode_siblings(raw)
    except VersionFormatError as exc:
        return f"{render_value(raw, hex_)} (not a sibling set: {exc})"
    parts = []
    for v in siblings:
        clock = ", ".join(f"{_actor(a)}:{c}" for a, c in v.clock.entries)
        what = "tombstone" if v.value is None else render_value(v.value, hex_)
        parts.append(
            f"[{_actor(v.actor)} hlc={_hlc(v.hlc)} clock={{{clock}}}{_floor(v)} {what}]"
        )
    return f"{len(siblings)} sibling{'s' if len(siblings) != 1 else ''} " + " ".join(parts)


def _actor(actor: bytes) -> str:
    return actor.decode("utf-8", "replace")


def _hlc(hlc: int) -> str:
    return f"{hlc_wall_ms(hlc)}.{hlc_logical(hlc)}"


def _floor(v: Version) -> str:
    """`` plain`` for a plain write (floor = own id), else the floor if any."""
    if v.floor is None:
        return ""
    if v.floor == v.lww_key():
        return " plain"
    return f" floor={_actor(v.floor[1])}@{_hlc(v.floor[0])}"


def entry_json(skey: bytes, raw: bytes | None) -> dict[str, Any]:
    """Extra JSON fields for one entry (bytes rendered later by jsonable)."""
    out: dict[str, Any] = {}
    if len(skey) > PARTITION_BYTES:
        out["partition"], out["user_key"] = split_storage_key(skey)
    if raw is not None:
        try:
            out["siblings"] = [
                {"actor": v.actor, "hlc": v.hlc, "wall_ms": hlc_wall_ms(v.hlc),
                 "clock": [[a, c] for a, c in v.clock.entries],
                 "floor": None if v.floor is None else list(v.floor),
                 "tombstone": v.value is None, "value": v.value}
                for v in decode_siblings(raw)
            ]
        except VersionFormatError as exc:
            out["decode_error"] = str(exc)
    return out
