"""The errors of what coordinators and workers share: malformed frames and
encodings, a worker or peer out of reach or answering with an error, a
timestamp from too far in the future. The coordinator translates them at
its boundaries (a failed replica in a quorum tally, an admin error, ...)."""

from __future__ import annotations

import enum


class ProtocolError(ValueError):
    """A frame or envelope is malformed; the message names the field."""


class VersionFormatError(ValueError):
    """Encoded clock, context or sibling set failed validation.

    Raised for anything that came off the wire or the disk malformed; the
    message names the field that was wrong.
    """


class ClockDriftError(ValueError):
    """A remote timestamp is further ahead of our wall clock than allowed."""

    def __init__(self, ahead_ms: int, max_drift_ms: int) -> None:
        super().__init__(
            f"remote timestamp is {ahead_ms} ms ahead of the local clock "
            f"(max drift {max_drift_ms} ms)"
        )
        self.ahead_ms = ahead_ms


class ShardUnavailable(ConnectionError):
    """The worker (or peer) behind ``path`` cannot be reached or the
    connection broke."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"shard worker at {path} unavailable: {reason}")
        self.path = path
        self.reason = reason


class ShardError(Exception):
    """A non-OK reply, raised by ShardClient's convenience methods (``call``
    returns it); ``status`` is the reply's ``messages.Status``."""

    def __init__(self, status: enum.IntEnum, message: str, path: str) -> None:
        super().__init__(f"{status.name} from shard worker at {path}: {message}")
        self.status = status
        self.message = message
        self.path = path
