"""VGET contexts are sealed by the cluster: a client hands back only what a
node of this cluster issued, for the key it was issued for.

A context holds HLC timestamps (clock counters and a floor), and a VSET
adopts them into the node's clock. The drift bound (``clock.py``) keeps a
forged one from dragging the clock years ahead, but within the bound a
client could still push the HLC forward a minute at a time, and make its
writes outrank others' by inventing counters. So VGET hands out::

    +----------------------------------+--------------------------------+
    | context (format 1 or 2,          | tag: 16 bytes                  |
    | shardserver.protocol.versions)   | BLAKE2b-128 keyed by           |
    |                                  | HMAC-SHA256(secret,            |
    |                                  |   "ringkv-context-v1")         |
    |                                  | over u32 BE len(key) | key |   |
    |                                  | context                        |
    +----------------------------------+--------------------------------+

and VSET/VDEL take back only such a token, checked in constant time for
the key being written: any node of the cluster (same secret) accepts what
any other issued. The empty context (``b""``, "saw nothing") needs no tag:
it carries no timestamp. Contexts issued before this (bare format 1/2) are
refused: VGET the key again.
"""

from __future__ import annotations

import hashlib
import hmac

from coordinator.errors import CommandError

__all__ = ["TAG_BYTES", "ContextSeal"]

TAG_BYTES = 16
_LABEL = b"ringkv-context-v1"
NOT_OURS = "ERR invalid context: not issued by this cluster"


class ContextSeal:
    """Seals contexts for clients and opens the ones they send back."""

    __slots__ = ("_mac",)

    def __init__(self, secret: bytes) -> None:
        self._mac = hashlib.blake2b(key=hmac.digest(secret, _LABEL, "sha256"),
                                    digest_size=TAG_BYTES)

    def _tag(self, key: bytes, context: bytes) -> bytes:
        h = self._mac.copy()
        h.update(len(key).to_bytes(4, "big"))
        h.update(key)
        h.update(context)
        return h.digest()

    def seal(self, key: bytes, context: bytes) -> bytes:
        """What VGET of ``key`` hands out for ``context``."""
        return context + self._tag(key, context) if context else b""

    def open(self, key: bytes, token: bytes) -> bytes:
        """The context inside a client's ``token`` for ``key``; raises
        CommandError (``ERR invalid context: not issued by this cluster``)
        unless a node of this cluster sealed it for this key."""
        if not token:
            return b""
        context, tag = token[:-TAG_BYTES], token[-TAG_BYTES:]
        if len(token) <= TAG_BYTES or not hmac.compare_digest(self._tag(key, context), tag):
            raise CommandError(NOT_OURS)
        return context
