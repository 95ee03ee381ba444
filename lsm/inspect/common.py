"""Shared pieces of the inspection tool: problems, byte rendering, JSON."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from lsm.errors import CorruptionError, LSMError


class Exit(enum.IntEnum):
    """Exit codes of ``ringkv sst|wal|manifest|db``."""

    OK = 0  # everything checked out (a WAL's torn tail is not damage)
    CORRUPT = 1  # corruption found, or a file that is not ours / cannot be read
    USAGE = 2  # bad arguments or options (click's own code for usage errors)


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one file: where, and what was expected/found."""

    path: str
    offset: int | None
    reason: str

    def line(self) -> str:
        if self.offset is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path}: offset {self.offset}: {self.reason}"

    @classmethod
    def of(cls, exc: BaseException, path: str) -> Problem:
        """Translate an engine error (or OSError) into a problem of ``path``."""
        if isinstance(exc, CorruptionError):
            return cls(exc.path or path, exc.offset, exc.reason)
        if isinstance(exc, FileNotFoundError):
            return cls(path, None, "no such file")
        if isinstance(exc, IsADirectoryError):
            return cls(path, None, "is a directory")
        if isinstance(exc, LSMError | OSError):
            return cls(path, None, str(exc))
        raise exc


# Errors reading a file that are reported as a problem instead of a traceback.
READ_ERRORS = (LSMError, OSError)

_PRINTABLE = frozenset(range(0x20, 0x7F)) - {ord("\\")}


def render_bytes(data: bytes, hex_: bool = False) -> str:
    """Printable ASCII as is, anything else escaped (``\\xNN``, ``\\\\``);
    ``hex_`` forces plain hex. :func:`parse_key` reads either form back."""
    if hex_:
        return data.hex()
    if all(b in _PRINTABLE for b in data):
        return data.decode("ascii")
    out = []
    for b in data:
        if b in _PRINTABLE:
            out.append(chr(b))
        elif b == 0x5C:
            out.append("\\\\")
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def render_value(data: bytes, hex_: bool = False, limit: int = 60) -> str:
    """A value for one line of text output: cut after ``limit`` characters."""
    shown = render_bytes(data, hex_)
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}… ({len(data)} bytes)"


def parse_key(text: str, hex_: bool = False) -> bytes:
    """Inverse of :func:`render_bytes`; raises ValueError naming the problem."""
    if hex_:
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"{text!r} is not hex") from None
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            if ord(c) > 0x7F:
                out += c.encode()
            else:
                out.append(ord(c))
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "\\":
            out.append(0x5C)
            i += 2
        elif nxt == "x" and len(text) >= i + 4:
            try:
                out.append(int(text[i + 2 : i + 4], 16))
            except ValueError:
                raise ValueError(f"bad escape {text[i : i + 4]!r} in {text!r}") from None
            i += 4
        else:
            raise ValueError(f"bad escape at position {i} of {text!r} (use \\xNN or \\\\)")
    return bytes(out)


def jsonable(obj: Any, hex_: bool = False) -> Any:
    """Dataclasses, tuples and bytes turned into JSON values; bytes are
    rendered like text output so keys read the same in both."""
    if isinstance(obj, Problem):
        return {"path": obj.path, "offset": obj.offset, "reason": obj.reason}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name), hex_) for f in dataclasses.fields(obj)}
    if isinstance(obj, bytes):
        return render_bytes(obj, hex_)
    if isinstance(obj, dict):
        return {str(k): jsonable(v, hex_) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v, hex_) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj
