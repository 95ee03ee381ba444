"""Integrity of a peer connection after its handshake (DESIGN §13).

The handshake (``peer_auth``) proves that each side holds the cluster
secret, but by itself it binds nothing that follows: a man in the middle
could relay it unchanged and then inject, alter, drop, replay or reorder
shard frames. So both sides derive a key per direction from the secret and
the handshake (``peer_auth.session_keys``: both nonces and both node ids)
and every frame after the handshake carries a tag::

    +----------------+---------------------+----------------------+
    | length: u32 BE | payload (N bytes)   | tag (16 bytes)       |
    | = N + 16       | the shard frame's   | BLAKE2b-128, keyed   |
    +----------------+---------------------+----------------------+
    tag = BLAKE2b(key = this direction's key, digest 16,
                  u64 BE frame sequence number | payload)

The sequence number is not sent: each side counts the frames of a
direction from 0, so a frame dropped, replayed, reordered, reflected back
(the other direction has another key) or taken from another connection
(other nonces, other keys) fails its tag like a modified one. A frame that
fails closes the connection (:class:`PeerIntegrityError`, a ProtocolError,
so both ends' frame loops already treat it as garbage).

Keyed BLAKE2b is a MAC by design (RFC 7693 §2.9) and costs about 1-3 µs a
frame for frames of up to 512 bytes on the machines we measured (HMAC-SHA256
with ``hmac``/``hashlib`` costs 5-12 µs there, though it overtakes BLAKE2b
from ~4 KiB where the CPU has SHA extensions); see docs/protocol.md.

The stream classes do this below the shard protocol, so the frame code
shared with the local workers (``shardserver.protocol.client``/``codec``)
sees plain frames and stays unchanged: :class:`SealedReader` verifies and
strips tags as data arrives (``feed_data``, called by asyncio's
StreamReaderProtocol), :class:`SealedWriter` tags whole frames as they are
written. Until :meth:`seal` both pass the handshake's frames through; a
reader lets through only the handshake frames it was told to expect and
holds anything behind them until it is sealed, so no unverified byte after
the handshake ever reaches a frame loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterable
from typing import SupportsIndex

from shardserver.protocol import codec
from shardserver.protocol.errors import ProtocolError

__all__ = ["TAG_BYTES", "FrameOpener", "FrameSealer", "PeerIntegrityError", "SealedReader",
           "SealedWriter"]

TAG_BYTES = 16
_SEQ = 8
#: Bytes a reader holds behind the handshake frames until it is sealed.
_MAX_EARLY = 64 << 10


class PeerIntegrityError(ProtocolError):
    """A peer frame failed its tag: modified, injected, replayed, reordered
    or dropped on the way (or sent by someone without the session key)."""


#: Payloads shorter than this get keyed BLAKE2b (the least fixed cost per
#: call), longer ones HMAC-SHA256 (faster per byte where the CPU has SHA
#: extensions). Either way the tag is 16 bytes; the receiver knows the
#: length, so it knows which was used.
SMALL_PAYLOAD = 4096


class _Tagger:
    """The tag function of one direction: keyed BLAKE2b-128 and truncated
    HMAC-SHA256, each under its own subkey of the direction's key, keyed
    once and copied per frame."""

    __slots__ = ("_large", "_small")

    def __init__(self, key: bytes) -> None:
        self._small = hashlib.blake2b(key=hmac.digest(key, b"blake2b", "sha256"),
                                      digest_size=TAG_BYTES)
        self._large = hmac.new(hmac.digest(key, b"hmac-sha256", "sha256"),
                               digestmod=hashlib.sha256)

    def tag(self, seq: int, payload: bytes | memoryview) -> bytes:
        h = (self._small if len(payload) < SMALL_PAYLOAD else self._large).copy()
        h.update(seq.to_bytes(_SEQ, "big"))
        h.update(payload)
        return h.digest()[:TAG_BYTES]


class FrameSealer:
    """Tags the frames of one direction, in the order they are sent;
    ``sent`` frames went before (a session handed to a worker goes on
    counting where the coordinator stopped)."""

    __slots__ = ("_tagger", "key", "sent")

    def __init__(self, key: bytes, sent: int = 0) -> None:
        self._tagger = _Tagger(key)
        self.key = key
        self.sent = sent

    def seal(self, payload: bytes | memoryview) -> tuple[bytes, bytes]:
        """(the new length prefix, the tag) of the frame carrying ``payload``."""
        tag = self._tagger.tag(self.sent, payload)
        self.sent += 1
        return codec.HEADER.pack(len(payload) + TAG_BYTES), tag


class FrameOpener:
    """Checks the frames of one direction, in the order they arrive;
    ``received`` frames came before."""

    __slots__ = ("_tagger", "key", "received")

    def __init__(self, key: bytes, received: int = 0) -> None:
        self._tagger = _Tagger(key)
        self.key = key
        self.received = received

    def check(self, payload: bytes | memoryview, tag: bytes | memoryview) -> None:
        """Raise PeerIntegrityError unless ``tag`` is that of the next frame
        carrying ``payload``."""
        if not hmac.compare_digest(self._tagger.tag(self.received, payload), tag):
            raise PeerIntegrityError(
                f"peer frame {self.received} failed its integrity check (modified, "
                "injected, replayed, reordered or dropped on the way): closing the connection")
        self.received += 1

    def open(self, sealed: bytes) -> memoryview:
        """The payload of a sealed frame's body (payload + tag)."""
        if len(sealed) <= TAG_BYTES:
            raise PeerIntegrityError(f"peer frame {self.received}: {len(sealed)} bytes, "
                                     f"shorter than its {TAG_BYTES}-byte tag")
        view = memoryview(sealed)
        self.check(view[:-TAG_BYTES], view[-TAG_BYTES:])
        return view[:-TAG_BYTES]


class SealedReader(asyncio.StreamReader):
    """A StreamReader for one peer connection: the first ``plain_frames``
    frames (the handshake's) pass as they come; after :meth:`seal` every
    frame must carry its tag and reaches readers with the tag stripped.
    Bytes behind the handshake frames wait here until the reader is sealed."""

    def __init__(self, plain_frames: int, limit: int, max_frame: int = codec.DEFAULT_MAX_FRAME,
                 ) -> None:
        super().__init__(limit=limit)
        self._plain_left = plain_frames
        self._frame_left = 0  # bytes of the current handshake frame still to pass
        self._held = bytearray()  # handshake bytes, then partial sealed frames
        self._max_sealed = max_frame + TAG_BYTES
        self._opener: FrameOpener | None = None
        self._failed = False

    def seal(self, key: bytes, received: int = 0) -> None:
        """From now on frames must carry tags under ``key``; ``received``
        frames of the session came before (0 on a new connection)."""
        self._opener = FrameOpener(key, received)
        self._plain_left = 0
        if self._held:  # sent behind the handshake: checked like the rest
            self._open(b"")

    @property
    def opener(self) -> FrameOpener | None:
        return self._opener

    def buffered(self) -> int:
        """Bytes received and not yet read: checked frames waiting for a
        reader, and a partial frame held for its rest."""
        # StreamReader's own buffer (not in typeshed): frames fed, not yet read.
        return len(self._buffer) + len(self._held)  # type: ignore[attr-defined]

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        if self._failed:
            return
        data = bytes(data)  # the protocol hands bytes: no copy
        if self._opener is not None:
            self._open(data)
            return
        self._held += data
        if not self._plain_left and len(self._held) > _MAX_EARLY:
            # A real peer sends nothing between the handshake and the seal.
            self._failed = True
            self._held.clear()
            self.set_exception(PeerIntegrityError(
                f"peer sent over {_MAX_EARLY} bytes before the handshake finished"))
            return
        while self._plain_left and self._held:
            if self._frame_left == 0:
                if len(self._held) < codec.HEADER.size:
                    return
                (length,) = codec.HEADER.unpack_from(self._held)
                self._frame_left = codec.HEADER.size + length
            chunk = bytes(self._held[:self._frame_left])
            del self._held[:len(chunk)]
            self._frame_left -= len(chunk)
            if self._frame_left == 0:
                self._plain_left -= 1
            super().feed_data(chunk)

    def _open(self, data: bytes) -> None:
        assert self._opener is not None
        buf = self._held
        buf += data
        plain: list[bytes | bytearray] = []
        pos = 0
        try:
            while len(buf) - pos >= codec.HEADER.size:
                (length,) = codec.HEADER.unpack_from(buf, pos)
                if not TAG_BYTES < length <= self._max_sealed:
                    raise PeerIntegrityError(f"sealed peer frame length {length} outside "
                                             f"{TAG_BYTES + 1}..{self._max_sealed}")
                end = pos + codec.HEADER.size + length
                if end > len(buf):
                    break
                # The plain frame in one copy: header rewritten, tag cut off.
                frame = buf[pos:end - TAG_BYTES]
                codec.HEADER.pack_into(frame, 0, length - TAG_BYTES)
                self._opener.check(memoryview(frame)[codec.HEADER.size:],
                                   bytes(buf[end - TAG_BYTES:end]))
                plain.append(frame)
                pos = end
        except PeerIntegrityError as e:
            # The stream is untrustworthy from here: readers get the error
            # at once (frames before it in this chunk go unread), and the
            # frame loops close the connection.
            self._failed = True
            buf.clear()
            self.set_exception(e)
            return
        del buf[:pos]
        if plain:
            super().feed_data(plain[0] if len(plain) == 1 else b"".join(plain))


class SealedWriter(asyncio.StreamWriter):
    """A StreamWriter that, once sealed, tags each frame written. Writes
    must be whole frames (as the shard client and the peer server write
    them); anything else is a bug and raises ProtocolError."""

    _sealer: FrameSealer | None = None

    def seal(self, key: bytes, sent: int = 0) -> None:
        """From now on frames are tagged under ``key``, the first as frame
        number ``sent`` of the session."""
        self._sealer = FrameSealer(key, sent)

    @property
    def sealer(self) -> FrameSealer | None:
        return self._sealer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        sealer = self._sealer
        if sealer is None:
            super().write(data)
            return
        view = memoryview(data)
        pos, end = 0, len(view)
        parts: list[bytes | memoryview] = []
        while pos < end:
            if end - pos < codec.HEADER.size:
                raise ProtocolError("peer writes must be whole frames (a header is cut)")
            (length,) = codec.HEADER.unpack_from(view, pos)
            start, pos = pos + codec.HEADER.size, pos + codec.HEADER.size + length
            if pos > end:
                raise ProtocolError("peer writes must be whole frames (a payload is cut)")
            header, tag = sealer.seal(view[start:pos])
            parts += (header, view[start:pos], tag)
        super().write(b"".join(parts))

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(data))
