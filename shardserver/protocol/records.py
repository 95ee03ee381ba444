"""Typed records on the wire: frozen dataclasses out, plain msgpack maps in
between, checked dataclasses back (decoded at the boundary, once).

:func:`to_wire` turns a record into plain values (dataclass -> map of its
fields, tuple -> list); :func:`from_wire` builds a record of a given class
from plain values, checking every field against its annotation and naming
the field path in the ``ProtocolError`` when one does not fit. Fields with a
default may be missing (a sender from before they existed); keys the class
does not know are ignored (a sender from after). Supported annotations:
``int``, ``float`` (an int is taken), ``str``, ``bytes``, ``bool``, ``None``,
``Literal[...]``,
unions of those and of records (the first member that fits wins),
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and nested records.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal, TypeVar, Union, cast

from shardserver.protocol.errors import ProtocolError

T = TypeVar("T")

_SCALARS: dict[type, tuple[type, ...]] = {
    int: (int,), float: (int, float), str: (str,), bytes: (bytes,), bool: (bool,),
    type(None): (type(None),),
}


def to_wire(record: object) -> Any:
    """Plain msgpack values for a record (or a value inside one)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_wire(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, list | tuple):
        return [to_wire(x) for x in record]
    if isinstance(record, dict):
        return {k: to_wire(v) for k, v in record.items()}
    return record


def from_wire(cls: type[T], raw: object, where: str = "") -> T:
    """A ``cls`` record from plain values; ProtocolError naming the field."""
    return cast(T, _decode(cls, raw, where or cls.__name__))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(kind: Any, raw: object, where: str) -> object:
    if kind is Any:
        return raw
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return _record(kind, raw, where)
    origin = typing.get_origin(kind)
    if origin is Literal:
        if raw not in typing.get_args(kind) or isinstance(raw, bool):
            raise ProtocolError(f"{where}: expected one of {typing.get_args(kind)}, got "
                                f"{_show(raw)}")
        return raw
    if origin in (Union, types.UnionType):
        for member in typing.get_args(kind):
            try:
                return _decode(member, raw, where)
            except ProtocolError:
                continue
        raise ProtocolError(f"{where}: {_show(raw)} is none of {_name(kind)}")
    if origin is list or origin is tuple:
        if not isinstance(raw, list | tuple):
            raise ProtocolError(f"{where}: expected a list, got {_show(raw)}")
        (item, *_) = typing.get_args(kind)
        items = [_decode(item, x, f"{where}[{i}]") for i, x in enumerate(raw)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(raw, dict):
            raise ProtocolError(f"{where}: expected a map, got {_show(raw)}")
        key_kind, value_kind = typing.get_args(kind)
        return {_decode(key_kind, k, f"{where} key"): _decode(value_kind, v, f"{where}[{k!r}]")
                for k, v in raw.items()}
    accepted = _SCALARS.get(kind)
    if accepted is None:
        raise TypeError(f"{where}: {_name(kind)} is not a wire type")
    if not isinstance(raw, accepted) or (kind is not bool and isinstance(raw, bool)):
        raise ProtocolError(f"{where}: expected {_name(kind)}, got {_show(raw)}")
    return float(raw) if kind is float else raw  # type: ignore[arg-type]


def _record(cls: type, raw: object, where: str) -> object:
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where}: expected a map, got {_show(raw)}")
    hints = _hints(cls)
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            values[f.name] = _decode(hints[f.name], raw[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{where}: missing {f.name}")
    return cls(**values)


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind)


def _show(raw: object) -> str:
    return f"{type(raw).__name__} {raw!r:.40}"
