"""A leaner txredisapi protocol for the proxy's request path.

txredisapi's own protocol costs more per command than Redis does: its
line-by-line parser pauses and resumes itself through the reactor
(``callLater(0)``) for every bulk string, each reply goes through a
DeferredQueue, each command arms and cancels a reply-timeout timer, and a
write waits for the next reactor turn. A REGISTER with digest authentication
runs two commands, so this was most of the Redis store's cost.

``LeanRedisProtocol`` keeps txredisapi's factory, reconnection, AUTH/SELECT
and command methods (``eval`` with its EVALSHA fallback, ...) and replaces
only the wire: replies are parsed in one pass over what arrived and handed
to the waiting Deferreds in order; a command goes straight to the socket
when nothing is queued before it. Timeouts are the store's business
(``RedisConnection.bounded``), which also drops a connection whose replies
stopped coming.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import txredisapi
from twisted.internet import defer


class Incomplete(Exception):
    """Not all of the reply has arrived yet."""


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, float):
        return format(value, "f").encode()
    return str(value).encode()


def encode_command(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for value in args:
        data = _arg(value)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse_reply(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP reply at ``pos``: (value, position after it). Bulk strings
    come back as bytes, status lines as str, errors as ResponseError values
    (not raised). Raises Incomplete when ``buf`` ends inside the reply."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind = buf[pos]
    line = buf[pos + 1 : end]
    pos = end + 2
    if kind == 36:  # $ bulk
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise Incomplete
        return buf[pos : pos + n], pos + n + 2
    if kind == 42:  # * array
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = parse_reply(buf, pos)
            items.append(item)
        return items, pos
    if kind == 58:  # : integer
        return int(line), pos
    if kind == 43:  # + status
        return line.decode("utf-8", "replace"), pos
    if kind == 45:  # - error
        text = line.decode("utf-8", "replace")
        return txredisapi.ResponseError(text[4:] if text.startswith("ERR ") else text), pos
    raise txredisapi.InvalidResponse(f"unknown reply type {chr(kind)!r}")


def split_replies(buf: bytes) -> tuple[list[Any], bytes]:
    """The complete replies at the start of ``buf``, and what follows them
    (a reply not all here yet). Raises ValueError or InvalidResponse on
    garbage: nothing after it can be matched to its command."""
    replies = []
    pos = 0
    try:
        while pos < len(buf):
            reply, pos = parse_reply(buf, pos)
            replies.append(reply)
    except Incomplete:
        pass
    return replies, buf[pos:]


class LeanRedisProtocol(txredisapi.BaseRedisProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: deque[defer.Deferred[Any]] = deque()
        self._buffer = b""

    def execute_command(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        if not self.connected or self.transport is None:
            raise txredisapi.ConnectionError("Not connected")
        data = encode_command(args)
        t = self.transport
        sock = getattr(t, "socket", None)
        # Straight to the socket when Twisted holds nothing unsent for it
        # (else the order of commands would change); the rest, if the
        # kernel takes only part, goes through the transport as usual.
        if sock is not None and not getattr(t, "_tempDataLen", 1) and len(t.dataBuffer) == t.offset:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the transport sees the error on its own write/read
            if sent < len(data):
                t.write(data[sent:])
        else:
            t.write(data)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append(d)
        return d

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        try:
            replies, self._buffer = split_replies(self._buffer + data if self._buffer else data)
        except (ValueError, txredisapi.InvalidResponse):
            self.transport.loseConnection()
            return
        waiting = self._waiting
        for reply in replies:
            if not waiting:
                continue  # nobody asked (cannot happen with a sane server)
            d = waiting.popleft()
            if d.called:
                continue  # given up on (timed out); its reply arrived late
            if isinstance(reply, Exception):
                d.errback(reply)
            else:
                d.callback(reply)

    def connectionLost(self, why: Any) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            if not d.called:
                d.errback(txredisapi.ConnectionError("Lost connection"))
        self._buffer = b""
        super().connectionLost(why)
