"""``--decode ringkv``: show engine entries the way the shard layer stores
them — key as partition + user key, value as a sibling set with clocks,
timestamps and tombstones. Lives in cli/ because lsm must not know the
shard layer's formats."""

from __future__ import annotations

from typing import Any

from lsm.inspect.common import render_bytes, render_value
from shardserver.layout import PARTITION_BYTES, split_storage_key
from shardserver.protocol.hlc import hlc_logical, hlc_wall_ms
from shardserver.protocol.versions import VersionFormatError, decode_siblings

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
        clock = ", ".join(f"{a.decode('utf-8', 'replace')}:{c}" for a, c in v.clock.entries)
        what = "tombstone" if v.value is None else render_value(v.value, hex_)
        parts.append(
            f"[{v.actor.decode('utf-8', 'replace')} hlc={hlc_wall_ms(v.hlc)}.{hlc_logical(v.hlc)}"
            f" clock={{{clock}}} {what}]"
        )
    return f"{len(siblings)} sibling{'s' if len(siblings) != 1 else ''} " + " ".join(parts)


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
                 "tombstone": v.value is None, "value": v.value}
                for v in decode_siblings(raw)
            ]
        except VersionFormatError as exc:
            out["decode_error"] = str(exc)
    return out
