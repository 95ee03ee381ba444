"""RESP requests in: a sans-IO parser of what clients send (replies are
:mod:`coordinator.client.replies`).

Requests come in two shapes, told apart by their first byte::

    multibulk   *<argc>\\r\\n  then argc times  $<len>\\r\\n<len bytes>\\r\\n
    inline      anything else up to \\n (an optional \\r before it is dropped),
                split into words with Redis's quoting rules (see split_inline)

The framing of every multibulk request is checked here, header by header, as
bytes arrive, before anything is buffered for it: ``$999999999999\\r\\n`` is
refused as soon as its header is complete (or as soon as its digits alone
exceed the limit), so a client cannot make us wait for, or store, a body we
would refuse anyway. hiredis then cuts the checked bytes into arguments in C.
hiredis alone would not do: it accepts any reply type inside the array
(``*1\\r\\n+PING\\r\\n``) and has no bulk-length limit of ours.

Redis takes any byte after a header's CR as its LF; hiredis does not, and
raised on ``*1\\rX`` out of the parser (issue 13), so a header whose CR is
not followed by LF is refused here.

Before AUTH the parser applies Redis's limits for unauthenticated clients
(:meth:`RequestParser.restrict`): at most 10 arguments and 16 KiB per bulk,
and ours: an inline line of at most 16 KiB, a request of at most 16.5 KiB.
While restricted it scans one request at a time, so a request that follows
AUTH in the same read is held to the limits that apply once AUTH has run.

A bulk longer than ``max_bulk`` (the server's is a little over
``max_value_bytes``) but within Redis's proto-max-bulk-len (512 MiB) does
not end the connection: its bytes are dropped as they arrive, so a client
that sends a 300 MiB value costs no more memory than one read, and the
request comes out as :class:`Discarded`, answered "value too large".

Errors use Redis's wording (networking.c), prefixed ``ERR Protocol error:``.
After one, the parser is dead: every later :meth:`RequestParser.gets` returns
the same error, and the server replies with it once and closes the
connection, as Redis does. Requests that were complete before the bad bytes
are returned first, in order.
"""

from __future__ import annotations

import re
from collections import deque
from typing import cast

import hiredis

from coordinator.errors import RespProtocolError

#: Redis's PROTO_INLINE_MAX_SIZE: longest inline request, and longest
#: unterminated header line we wait for.
MAX_INLINE = 64 * 1024
#: Longest header line (``*<n>`` or ``$<n>``) we wait for its CR; the longest
#: valid one is 21 bytes.
MAX_HEADER = 32
#: Redis's limit on the argument count of one multibulk request.
MAX_MULTIBULK = 1024 * 1024
#: Default bulk limit. The server passes max_value_bytes plus slack, so that a
#: value just over the limit gets a clear "value too large" reply instead of a
#: disconnect.
DEFAULT_MAX_BULK = 1024 * 1024
#: One request's total size; with MAX_MULTIBULK arguments of up to max_bulk
#: each, one request could otherwise pin terabytes (Redis's analogue is
#: client-query-buffer-limit).
DEFAULT_MAX_REQUEST = 64 * 1024 * 1024
#: Redis's limits for a client that has not authenticated yet (networking.c).
UNAUTHENTICATED_MAX_MULTIBULK = 10
UNAUTHENTICATED_MAX_BULK = 16 * 1024
#: Ours, on top of Redis's: before AUTH an inline line is at most 16 KiB, and
#: a multibulk request at most one such bulk plus 512 bytes for its headers
#: and short arguments, so an unauthenticated connection holds at most about
#: 16 KiB of a request (8,000 of them each holding a 64 KB partial inline
#: line took the coordinator from 284 to 1,118 MB).
UNAUTHENTICATED_MAX_INLINE = 16 * 1024
UNAUTHENTICATED_MAX_REQUEST = UNAUTHENTICATED_MAX_BULK + 512
#: Redis's proto-max-bulk-len: a bulk past max_bulk but within this is read
#: and dropped as it streams (the request becomes :class:`Discarded`); past
#: it the length is a protocol error.
MAX_DISCARD_BULK = 512 * 1024 * 1024

# string2ll's grammar: an optional minus, no plus, no leading zeros, no spaces.
_INTEGER = re.compile(rb"-?[1-9][0-9]{0,18}|0")
_DIGITS = re.compile(rb"[0-9]+")
# C's isspace(), used to skip between words and after a closing quote ...
_WHITESPACE = b" \t\n\r\v\f"
# ... while a bare word ends only at these (sdssplitargs's switch).
_WORD_END = b" \t\n\r"
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"

Request = list[bytes]


class Discarded:
    """A request with a bulk over ``max_bulk`` (up to ``MAX_DISCARD_BULK``):
    its bytes were dropped as they arrived, never held; ``size`` is its
    largest bulk. The connection answers "value too large" and goes on."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __repr__(self) -> str:
        return f"Discarded({self.size})"


def split_inline(line: bytes) -> list[bytes] | None:
    """Split an inline request like Redis's sdssplitargs; None for bad quoting.

    Double quotes understand ``\\n \\r \\t \\b \\a``, ``\\xHH`` (lower-case x)
    and a backslash before any other byte (which stands for that byte);
    single quotes only ``\\'``. A closing quote must be followed by
    whitespace or the end. A quote inside a bare word opens a quoted part of
    the same word. A bare word ends at space, tab, CR or LF only (not at \\v
    or \\f, which only separate words), and a NUL ends the line, all as in
    Redis.
    """
    # sdssplitargs reads a C string: everything from a NUL on is ignored.
    line = line.split(b"\0", 1)[0]
    args: list[bytes] = []
    i, end = 0, len(line)
    while True:
        while i < end and line[i] in _WHITESPACE:
            i += 1
        if i == end:
            return args
        word = bytearray()
        quote = 0  # the open quote byte, or 0 in a bare word
        while True:
            if not quote:
                if i == end or line[i] in _WORD_END:
                    break
                if line[i] in b"\"'":
                    quote = line[i]
                else:
                    word.append(line[i])
                i += 1
                continue
            if i == end:
                return None  # unterminated quote
            c, nxt = line[i], line[i + 1 : i + 2]
            if c == quote:
                if nxt and nxt not in _WHITESPACE:
                    return None
                i += 1
                break
            hexa = line[i + 2 : i + 4]
            if quote == 0x22 and c == 0x5C and nxt == b"x" and len(hexa) == 2 and (
                hexa[0] in _HEX and hexa[1] in _HEX
            ):
                word.append(int(hexa, 16))
                i += 4
            elif quote == 0x22 and c == 0x5C and nxt:
                word.append(_ESCAPES.get(nxt[0], nxt[0]))
                i += 2
            elif quote == 0x27 and c == 0x5C and nxt == b"'":
                word.append(0x27)
                i += 2
            else:
                word.append(c)
                i += 1
        args.append(bytes(word))


class RequestParser:
    """Incremental request parser for one connection.

    ``feed`` bytes as they arrive; call ``gets`` until it returns None. It
    returns a request (a non-empty list of arguments), None when more bytes
    are needed, or a :class:`RespProtocolError`, after which the parser is dead.
    Empty requests (a blank line, ``*0``, ``*-1``) are skipped, as Redis does.
    """

    def __init__(
        self,
        max_bulk: int = DEFAULT_MAX_BULK,
        max_inline: int = MAX_INLINE,
        max_multibulk: int = MAX_MULTIBULK,
        max_request: int = DEFAULT_MAX_REQUEST,
    ) -> None:
        self.max_bulk = max_bulk
        self.max_inline = max_inline
        self.max_multibulk = max_multibulk
        self.max_request = max_request
        self._buf = bytearray()
        self._ready: deque[Request | Discarded] = deque()
        self._error: RespProtocolError | None = None
        # Scan state, kept across feeds so that each byte is looked at about
        # once: _start is where the current request begins in _buf, _pos how
        # far it has been checked. Consumed bytes are dropped once per scan,
        # not once per request, so a deep pipeline costs no quadratic copying.
        self._start = 0
        self._pos = 0
        self._argc_left = -1
        self._argc = 0
        self._reader = hiredis.Reader()
        self._restricted = False
        # A request with a bulk past max_bulk: its largest bulk (0: none),
        # and the bytes of the current such bulk (with its CRLF) still to drop.
        self._discarding = 0
        self._drop = 0

    def restrict(self) -> None:
        """Apply the limits for unauthenticated clients until :meth:`lift`."""
        self._restricted = True

    def lift(self) -> None:
        """Back to the full limits (the client has authenticated)."""
        self._restricted = False

    @property
    def restricted(self) -> bool:
        return self._restricted

    @property
    def dead(self) -> bool:
        """True once a protocol error was found."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes held for requests not yet complete (for memory accounting)."""
        return len(self._buf) - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Bytes fed after a protocol error are dropped."""
        if self._error is not None:
            return
        if self._drop:  # the rest of an oversized bulk: never buffered
            n = min(self._drop, len(data))
            self._drop -= n
            if not self._drop:
                self._argc_left -= 1
            if n == len(data):
                return
            data = memoryview(data)[n:]
        self._buf += data

    def gets(self) -> Request | Discarded | RespProtocolError | None:
        """The next request, None if incomplete, or the (sticky) protocol error."""
        if not self._ready and self._error is None:
            self._scan()
        if self._ready:
            return self._ready.popleft()
        return self._error

    # -- scanning ------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        self._error = RespProtocolError(reason)
        self._buf.clear()
        self._start = self._pos = 0

    def _scan(self) -> None:
        """Move every complete request in the buffer to _ready (only the
        next one while restricted)."""
        while self._error is None and (self._start < len(self._buf) or (
                self._discarding and not self._drop and self._argc_left == 0)):
            if self._restricted and self._ready:
                break
            if self._argc_left < 0 and self._buf[self._start] != 0x2A:  # not '*'
                if not self._scan_inline():
                    break
            elif self._argc_left < 0 and (end := self._whole_request()) > 0:
                if not self._take_request(end):
                    break
            elif not self._scan_multibulk():
                break
        # Drop consumed bytes once they are at least as many as those kept,
        # so each byte is moved at most once however requests are scanned.
        if self._start and 2 * self._start >= len(self._buf):
            del self._buf[: self._start]
            self._pos -= self._start
            self._start = 0

    def _too_big(self, kind: str, length: int) -> str | None:
        """Why a ``*`` (multibulk) or ``$`` (bulk) length is refused, if it is."""
        if length > (self.max_multibulk if kind == "multibulk" else
                     max(self.max_bulk, MAX_DISCARD_BULK)):
            return f"invalid {kind} length"
        limit = UNAUTHENTICATED_MAX_MULTIBULK if kind == "multibulk" else UNAUTHENTICATED_MAX_BULK
        if self._restricted and length > limit:
            return f"unauthenticated {kind} length"
        return None

    def _scan_inline(self) -> bool:
        # Resume the search where the last feed stopped: a line trickling in
        # byte by byte must not cost O(length²).
        start = self._start
        limit = (min(self.max_inline, UNAUTHENTICATED_MAX_INLINE) if self._restricted
                 else self.max_inline)
        newline = self._buf.find(b"\n", max(self._pos, start))
        if newline < 0:
            if len(self._buf) - start > limit:
                self._fail("too big inline request")
            else:
                self._pos = len(self._buf)
            return False
        end = newline - 1 if newline > start and self._buf[newline - 1] == 0x0D else newline
        if end - start > limit:
            self._fail("too big inline request")
            return False
        args = split_inline(bytes(self._buf[start:end]))
        self._start = self._pos = newline + 1
        if args is None:
            self._fail("unbalanced quotes in request")
            return False
        if args:
            self._ready.append(args)
        return True

    def _header(self, kind: str) -> int | None:
        """Parse the header line at _pos; None if incomplete (or failed).

        A valid header is at most ~21 bytes, so one without its CR after
        MAX_HEADER bytes is refused at once with Redis's "too big" wording
        (Redis itself waits for 64 KiB before saying so).
        """
        buf, pos = self._buf, self._pos
        cr = buf.find(b"\r", pos, pos + MAX_HEADER + 1)
        if cr < 0:
            head = bytes(buf[pos + 1 : pos + 21])
            # More digits can only make it bigger: refuse before the CR.
            reason = None
            if _DIGITS.fullmatch(head):
                reason = (f"invalid {kind} length" if len(head) > 19
                          else self._too_big(kind, int(head)))
            if reason is not None:
                self._fail(reason)
            elif len(buf) - pos > MAX_HEADER:
                self._fail(f"too big {'mbulk' if kind == 'multibulk' else 'bulk'} count string")
            return None
        if cr + 1 >= len(buf):
            return None  # Redis waits for the byte after CR as well
        if buf[cr + 1] != 0x0A:  # LF
            self._fail(f"{kind} length must end with CRLF")
            return None
        text = bytes(buf[pos + 1 : cr])
        self._pos = cr + 2
        if not _INTEGER.fullmatch(text) or int(text) >= 1 << 63:
            self._fail(f"invalid {kind} length")
            return None
        return int(text)

    def _whole_request(self) -> int:
        """Where the multibulk request at _start ends, if it is complete and
        plainly within every limit; else 0, and the general scan (which
        resumes, discards and words the errors) takes it.

        The common case in one pass: canonical lengths (no sign, no leading
        zero, at most 18 digits, which _INTEGER also admits), every bulk at
        most max_bulk, the request at most max_request, an authenticated
        client. Anything else, including a request cut short, goes the
        general way, so the two can only differ in speed."""
        if self._restricted or self._discarding or self._drop:
            return 0
        buf = self._buf
        end = len(buf)
        cr = buf.find(b"\r\n", self._start + 1, self._start + 21)
        if cr < 0:
            return 0
        head = buf[self._start + 1 : cr]
        if not head.isdigit() or head[0] == 0x30:  # also refuses "0" and "-1"
            return 0
        argc = int(head)
        if argc > self.max_multibulk:
            return 0
        max_bulk = self.max_bulk
        pos = cr + 2
        for _ in range(argc):
            if pos >= end or buf[pos] != 0x24:  # '$'
                return 0
            cr = buf.find(b"\r\n", pos + 1, pos + 21)
            if cr < 0:
                return 0
            head = buf[pos + 1 : cr]
            if not head.isdigit() or (head[0] == 0x30 and len(head) > 1):
                return 0
            length = int(head)
            if length > max_bulk:
                return 0
            pos = cr + 4 + length
            if pos > end:
                return 0
        if pos - self._start > self.max_request:
            return 0
        self._argc = argc
        return pos

    def _take_request(self, end: int) -> bool:
        """Hand the request framed in _buf[_start:end] (``_argc`` arguments)
        to hiredis, which cuts it up; False (and the parser dead) if it does
        not come out as that many arguments."""
        # hiredis takes any buffer; its stub only admits bytes, and a copy
        # just to please the stub would double the work for large values.
        self._reader.feed(cast(bytes, self._buf), self._start, end - self._start)
        try:
            request = self._reader.gets()
        except hiredis.HiredisError as exc:
            request = exc
        self._start = self._pos = end
        self._argc_left = -1
        if not isinstance(request, list) or len(request) != self._argc:
            # Unreachable with checked framing; kept as a guard, not an assert,
            # because the bytes come from the network: an error reply and a
            # closed connection, never an exception out of the parser.
            self._fail(f"malformed request ({request})"
                       if isinstance(request, Exception) else "invalid multibulk length")
            return False
        self._ready.append(request)
        return True

    def _discard(self, length: int) -> None:
        """Drop the bulk of ``length`` whose header ends at _pos, and the
        rest of its request as it comes (the request's kept bytes go too)."""
        self._discarding = max(self._discarding, length, 1)
        buf = self._buf
        n = min(length + 2, len(buf) - self._pos)
        del buf[self._start:self._pos + n]
        self._pos = self._start
        self._drop = length + 2 - n
        if not self._drop:
            self._argc_left -= 1

    def _scan_multibulk(self) -> bool:
        if self._argc_left < 0:
            self._pos = self._start
            argc = self._header("multibulk")
            if argc is None:
                return False
            if (reason := self._too_big("multibulk", argc)) is not None:
                self._fail(reason)
                return False
            if argc <= 0:
                self._start = self._pos
                return True
            self._argc = self._argc_left = argc
        while self._argc_left:
            if self._drop:
                return False  # feed drops the rest of the oversized bulk
            pos = self._pos
            if pos >= len(self._buf):
                return False
            if self._buf[pos] != 0x24:  # '$'
                self._fail(f"expected '$', got '{chr(self._buf[pos])}'")
                return False
            length = self._header("bulk")
            if length is None:
                if self._error is None:
                    self._pos = pos  # re-read the whole header when more arrives
                return False
            if length < 0:
                self._fail("invalid bulk length")
                return False
            if (reason := self._too_big("bulk", length)) is not None:
                self._fail(reason)
                return False
            if length > self.max_bulk or self._discarding:
                self._discard(length)
                continue
            size = self._pos - self._start + length
            if size > self.max_request:
                self._fail("request too large")
                return False
            if self._restricted and size > UNAUTHENTICATED_MAX_REQUEST:
                self._fail("unauthenticated request too large")
                return False
            if self._pos + length + 2 > len(self._buf):
                self._pos = pos
                return False
            self._pos += length + 2
            self._argc_left -= 1
        if self._discarding:
            self._ready.append(Discarded(self._discarding))
            self._discarding = 0
            self._argc_left = -1
            return True
        # The request's framing is checked end to end; hiredis cuts it up.
        return self._take_request(self._pos)
