"""The management interface's limits on what a client may send, and the HTTP
request class that enforces them before a JSON-RPC dispatcher sees a byte.

The limits (documented beside ``[management] listen`` in conf/sipsuite.toml):

- :data:`MAX_BODY`: a body over it is refused as soon as its Content-Length
  is read (or, for a chunked body, as soon as it passes the limit): HTTP 413
  with a JSON-RPC -32600 error, without waiting for the body.
- :data:`READ_TIMEOUT`: a request whose headers and body are not all in
  within that many seconds of its request line gets HTTP 408 with a JSON-RPC
  -32600 error, instead of holding the connection for twisted.web's idle
  timeout (60 s, and restarted by every byte that trickles in).
- :data:`MAX_BATCH`: a batch of more requests is one JSON-RPC -32600 error
  (each request costs a Deferred and a reply, and the proxy serves SIP on the
  same reactor: half a million garbage entries held it for seconds).
- :data:`MAX_DEPTH`: arrays and objects nested deeper are a JSON-RPC -32700
  parse error (:func:`too_deep`, checked before ``json.loads``, which would
  otherwise recurse until RecursionError).

Both early answers are HTTP error codes because the HTTP exchange itself is
what failed (the body was never read, so there is no JSON-RPC request to answer
with 200, and an HTTP client, proxy or curl sees the problem without parsing
the body); the body is still a JSON-RPC error object, so a JSON-RPC client
reading only the body gets a proper error too.
"""

from __future__ import annotations

import json
import operator
from io import BytesIO
from itertools import accumulate, repeat
from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.python.failure import Failure
from twisted.web import server

__all__ = ["MAX_BATCH", "MAX_BODY", "MAX_DEPTH", "READ_TIMEOUT", "BoundedRequest", "too_deep"]

#: The largest request body accepted; a batch of management calls is far smaller,
#: so anything bigger is a mistake or abuse and is not worth buffering.
MAX_BODY = 1024 * 1024
#: The deepest nesting of arrays and objects accepted in a body: a request,
#: in a batch, with structured params, is five or six levels.
MAX_DEPTH = 64
#: The most requests one batch may hold.
MAX_BATCH = 1000
#: Seconds from a request's first line to the end of its body. A management
#: client writes its whole request at once, so a few seconds is generous.
READ_TIMEOUT = 5.0
#: Seconds a connection stays open after an early answer, reading and dropping
#: what the client still sends: closing at once, with its data unread, would
#: reset the connection and could destroy the answer before the client read it.
LINGER = 2.0

INVALID_REQUEST = -32600

_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def too_deep(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """True if arrays and objects in the JSON text ``body`` nest deeper than
    ``limit``, brackets inside strings not counted.

    Linear in the body and without recursion, so any body of any shape is
    answered. Exact for every bracket ``json.loads`` would descend into:
    the two views of where strings are only differ after a backslash outside
    a string, which json.loads rejects first.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # the usual case: too few brackets to be too deep anywhere
    # Take escapes out of strings (pairs of backslashes first, pairing left to
    # right as JSON does, then escaped quotes): every quote left opens or
    # closes a string, so the pieces between them alternate outside, inside.
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    steps = outside.translate(_DEPTH_STEP, _NOT_BRACKET)  # 2 opens, 0 closes
    depths = accumulate(map(operator.sub, steps, repeat(1)))
    return max(depths, default=0) > limit


def _error_answer(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": None,
                       "error": {"code": INVALID_REQUEST, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class BoundedRequest(server.Request):
    """A Request that enforces MAX_BODY and READ_TIMEOUT while the request
    comes in, answering at once (and never rendering) when one is broken.

    twisted.web would otherwise buffer any body, in memory or a temporary
    file, and render only once all of it arrived: a huge Content-Length with
    no body held the connection until the idle timeout.
    """

    answered = False
    _body_seen = 0
    _deadline: IDelayedCall | None = None
    _linger: IDelayedCall | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Made when the request line has arrived: the clock starts now.
        super().__init__(*args, **kwargs)
        self._deadline = self.channel.callLater(READ_TIMEOUT, self._timed_out)

    def gotLength(self, length: int | None) -> None:
        if self.answered:  # timed out while the headers came in
            super().gotLength(None)
            return
        if length is not None and length > MAX_BODY:
            # Answered with a final status instead of "100 Continue", which
            # twisted.web sends after this call when the client asked for it.
            self.requestHeaders.removeHeader(b"expect")
            super().gotLength(None)  # a BytesIO that stays empty, not a temporary file
            self._answer_now(413, "Content Too Large",
                             f"invalid request: body of {length} bytes is over the"
                             f" limit of {MAX_BODY}")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.answered:
            return
        self._body_seen += len(data)
        if self._body_seen > MAX_BODY:  # chunked body with no Content-Length
            # (twisted.web leaves Request.content typed by its class default,
            # None; gotLength puts a BinaryIO there the same way.)
            self.content = BytesIO()  # type: ignore[assignment]
            self._answer_now(413, "Content Too Large",
                             f"invalid request: body over the limit of {MAX_BODY} bytes")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.answered:
            return  # the rest of a refused body arrived: there is nothing to serve
        self._stop_deadline()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        self._stop_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self._answer_now(408, "Request Timeout",
                         f"invalid request: not all of it arrived within {READ_TIMEOUT:g} s")

    def _answer_now(self, status: int, reason: str, message: str) -> None:
        """Answer before the request is complete, then close the connection."""
        self.answered = True
        self._stop_deadline()
        # A TCP (or TLS) connection's: HTTPChannel types it as any ITransport.
        transport = cast("ITCPTransport | None", self.channel.transport)
        if transport is None:
            return
        transport.write(_error_answer(status, reason, message))
        # Half-close: the answer goes out and the client sees its end, while
        # what it still sends is read and dropped (see LINGER).
        transport.loseWriteConnection()
        self._linger = self.channel.callLater(LINGER, transport.abortConnection)
