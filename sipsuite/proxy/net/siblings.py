"""The channel between worker processes ([proxy] workers > 1,
docs/architecture.md "Worker processes": "TCP and TLS connections").

A TCP/TLS connection a phone opened lives in the worker that accepted it
(SO_REUSEPORT), yet a call for that phone may land on any worker, and a
phone behind NAT can only be reached over the connection it opened. So the
workers of one supervisor keep a table of who holds which connection, and a
worker that must send to a phone over a connection a sibling holds hands the
bytes to that sibling, which writes them on the connection:

- Each worker listens on a UNIX stream socket ``w<index>.sock`` in a
  directory the supervisor made for this run (mode 0700, the same path
  across restarts), and opens one connection to each sibling's socket,
  over which it sends its frames (it reads frames only from connections it
  accepted). A connection is taken only from a process of our user whose
  parent is our supervisor (SO_PEERCRED), and its first frame must be
  HELLO with a sibling's index.
- Stream, not datagrams: a UNIX datagram socket queues 10 datagrams by
  default (net.unix.max_dgram_qlen) and a burst would lose handed-over
  INVITEs, which nobody retransmits over TCP; a stream buffers.
- Frames: a 4-byte big-endian length, then one ASCII line of fields and LF,
  then the SIP bytes if any:

  ``HELLO index``                       first frame: this is worker ``index``
  ``HAVE t host port listener ...``     I hold these connections (or their aliases)
  ``GONE t host port ...``              I no longer do
  ``SEND t host port`` + message        write this on your connection to host:port
  ``FAIL t host port``                  I hold no such connection (any more)
  ``RESP t host port listener`` + msg   a response for your transaction, as it
                                        arrived on my connection from host:port

  A worker announces each connection it accepts (HAVE), its aliases
  (TransportLayer.alias), and its end (GONE); a HELLO from a (re)started
  sibling is answered with everything it holds. Entries learnt over a
  connection die with it: a worker that dies takes its table rows along.
- Responses: the phone answers on the holder's connection. Requests a
  worker hands over carry ``.w<index>`` at the end of their Via branch
  (:attr:`Siblings.mark`); a response on a stream whose transaction the
  worker does not hold and whose branch names another worker is passed to
  that worker (RESP) with the address it came from.

Anything malformed from the channel is dropped and counted (drop cause
``transport.channel_*``); a frame over :data:`MAX_FRAME` closes the
connection. N = 1 has no Siblings at all.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from sipsuite.hosts import is_ip
from sipsuite.log import get_logger
from sipsuite.sip.message import ParseError, Response
from sipsuite.sip.parser import parse_datagram

if TYPE_CHECKING:
    from sipsuite.proxy.net.stream import SIPStreamProtocol
    from sipsuite.proxy.net.transport import TransportLayer

__all__ = ["MAX_FRAME", "FrameError", "FrameReader", "Siblings", "decode", "encode",
           "owner_of", "socket_path"]

log = get_logger("sipsuite.proxy.siblings")

#: The largest frame: a SIP message over TCP is at most 64 KiB
#: (StreamParser.max_message), plus the headers a proxy adds.
MAX_FRAME = 256 * 1024
#: Rows in one HAVE frame of a sync.
SYNC_BATCH = 200
#: Bytes a link buffers (beyond the kernel's socket buffers) before it
#: refuses messages for a sibling that does not read.
LINK_BUFFER = 1024 * 1024

_LEN = struct.Struct(">I")
_KINDS = frozenset({b"HELLO", b"HAVE", b"GONE", b"SEND", b"FAIL", b"RESP"})
_STREAMS = ("tcp", "tls")

Key = tuple[str, str, int]


class FrameError(ValueError):
    """A frame that breaks the channel's format."""


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"w{index}.sock")


def encode(kind: str, fields: tuple[object, ...] = (), body: bytes = b"") -> bytes:
    """One frame, length prefix included."""
    line = " ".join([kind, *(str(f) for f in fields)]).encode("ascii") + b"\n"
    payload = line + body
    if len(payload) > MAX_FRAME:
        raise FrameError(f"{kind} frame of {len(payload)} bytes")
    return _LEN.pack(len(payload)) + payload


def decode(payload: bytes) -> tuple[str, list[str], bytes]:
    """(kind, fields, body) of one frame's payload; raises FrameError."""
    nl = payload.find(b"\n")
    if nl < 0:
        raise FrameError("no header line")
    try:
        words = payload[:nl].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise FrameError("header line not ASCII") from None
    if not words or words[0].encode() not in _KINDS:
        raise FrameError(f"unknown frame kind {words[0][:20]!r}")
    return words[0], words[1:], payload[nl + 1:]


def parse_keys(fields: list[str], width: int) -> list[tuple[Key, list[str]]]:
    """Rows of ``width`` fields, each (transport, host, port, extra...)
    checked: a stream transport, an IP literal, a port number."""
    if not fields or len(fields) % width:
        raise FrameError(f"{len(fields)} fields, not rows of {width}")
    rows = []
    for i in range(0, len(fields), width):
        transport, host, port, *extra = fields[i:i + width]
        if transport not in _STREAMS or not is_ip(host) or not _number(port, 5):
            raise FrameError(f"bad connection {transport} {host} {port}"[:80])
        number = int(port)
        if not 0 < number < 65536:
            raise FrameError(f"bad port {port}")
        rows.append(((transport, host, number), extra))
    return rows


def _number(text: str, digits: int) -> bool:
    """ASCII digits only (str.isdigit() takes any script's), at most ``digits``."""
    return 0 < len(text) <= digits and text.isascii() and text.isdigit()


def owner_of(branch: str | None) -> int | None:
    """The worker index a Via branch names (``...w<index>``), if any."""
    if not branch:
        return None
    head, sep, tail = branch.rpartition(".w")
    if not sep or not head or not _number(tail, 3):
        return None
    return int(tail)


class FrameReader:
    """Splits a byte stream into frame payloads; raises FrameError on a
    length over MAX_FRAME (the stream cannot be trusted after that)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        out = []
        start = 0
        while len(buf) - start >= 4:
            (length,) = _LEN.unpack_from(buf, start)
            if length > MAX_FRAME or length == 0:
                raise FrameError(f"frame length {length}")
            if len(buf) - start - 4 < length:
                break
            out.append(bytes(buf[start + 4:start + 4 + length]))
            start += 4 + length
        if start:
            del buf[:start]
        return out


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class _Inbound(protocol.Protocol):
    """A sibling's connection to our socket: frames in."""

    transport: Any  # a UNIX stream transport, set by makeConnection

    def __init__(self, siblings: Siblings) -> None:
        self.siblings = siblings
        self.reader = FrameReader()
        self.index: int | None = None  # from its HELLO
        self.accepted = False  # its peer passed the SO_PEERCRED check

    def connectionMade(self) -> None:
        if not self.siblings.trusted(self.transport):
            self.siblings.drop("peer")
            log.warn("worker channel: refused a connection from a process that is no sibling")
            self.transport.abortConnection()
            return
        self.accepted = True
        self.siblings.inbound.add(self)

    def dataReceived(self, data: bytes) -> None:
        if not self.accepted:
            return
        try:
            frames = self.reader.feed(data)
        except FrameError as e:
            self.siblings.drop("framing")
            log.warn("worker channel: closing a connection: {e}", e=e)
            self.transport.abortConnection()
            return
        for payload in frames:
            try:
                self.siblings.frame(self, payload)
            except FrameError as e:
                self.siblings.drop("frame")
                log.info("worker channel: frame dropped: {e}", e=e)
            except Exception:  # noqa: BLE001 - the channel must never stop a worker
                self.siblings.drop("frame")
                log.failure("worker channel: frame failed")

    def connectionLost(self, reason: Any = None) -> None:
        self.siblings.inbound_lost(self)


@implementer(IPushProducer)
class _Link(protocol.Protocol):
    """Our connection to one sibling's socket: frames out (its bytes in are
    ignored). The producer of its own transport: paused while more than
    :data:`LINK_BUFFER` bytes wait for a sibling that does not read."""

    transport: Any

    def __init__(self, siblings: Siblings, index: int) -> None:
        self.siblings = siblings
        self.index = index
        self.pending: list[bytes] = [encode("HELLO", (siblings.index,))]
        self.handed: list[Key] = []  # SENDs not yet written (connecting)
        self.up = False
        self.closed = False
        self.paused = False

    def write(self, frame: bytes, key: Key | None = None, messages: bool = False) -> bool:
        """False, and nothing written, for a message (``messages``) while the
        sibling is not reading: it is hung or far behind, and our memory
        must not grow with what it does not take."""
        if self.up:
            if messages and self.paused:
                return False
            self.transport.write(frame)
        else:
            self.pending.append(frame)
            if key is not None:
                self.handed.append(key)
        return True

    def connectionMade(self) -> None:
        self.up = True
        self.transport.bufferSize = LINK_BUFFER
        self.transport.registerProducer(self, True)
        self.transport.write(b"".join(self.pending))
        self.pending = []
        self.handed = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.up = False
        self.siblings.link_lost(self)


class _LinkFactory(protocol.ClientFactory):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _Link:
        return self.link

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.link.siblings.link_lost(self.link)


class _InboundFactory(protocol.ServerFactory):
    def __init__(self, siblings: Siblings) -> None:
        self.siblings = siblings

    def buildProtocol(self, addr: Any) -> _Inbound:
        return _Inbound(self.siblings)


class Siblings:
    """This worker's end of the channel, and the table of the connections
    its siblings hold (see the module text)."""

    def __init__(self, layer: TransportLayer, index: int, count: int, directory: str,
                 reactor: Any) -> None:
        self.layer = layer
        self.index = index
        self.count = count
        self.directory = directory
        self.reactor = reactor
        #: What our Via branches end with: responses come back to us.
        self.mark = f".w{index}"
        # (transport, host, port) -> (sibling index, listener name, the inbound connection it came on)
        self.table: dict[Key, tuple[int, str, _Inbound]] = {}
        self.links: dict[int, _Link] = {}
        self.inbound: set[_Inbound] = set()
        self.port: Any = None
        self.supervisor = os.getppid()
        self.handed = 0
        self.relayed = 0
        self.stopped = False

    # -- life ------------------------------------------------------------------------
    def start(self) -> None:
        path = socket_path(self.directory, self.index)
        try:
            os.unlink(path)  # our own socket of a previous life
        except FileNotFoundError:
            pass
        old = os.umask(0o077)
        try:
            self.port = self.reactor.listenUNIX(path, _InboundFactory(self), mode=0o600)
        finally:
            os.umask(old)
        for i in range(self.count):
            if i != self.index:
                self.link(i)

    def stop(self) -> None:
        # Stopping closes our SIP connections too: their GONE must not open links again.
        self.stopped = True
        self.table.clear()
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        for link in list(self.links.values()):
            link.closed = True
            if link.transport is not None:
                link.transport.loseConnection()
        self.links.clear()
        for conn in list(self.inbound):
            conn.transport.loseConnection()

    def drop(self, cause: str) -> None:
        self.layer.stats_drop(f"channel_{cause}")

    def trusted(self, transport: Any) -> bool:
        """Only a process of our user started by our supervisor may talk to us."""
        try:
            creds = transport.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                struct.calcsize("3i"))
        except (OSError, AttributeError):
            return False
        pid, uid, _ = struct.unpack("3i", creds)
        return uid == os.geteuid() and (pid == os.getpid() or _parent_of(pid) == self.supervisor)

    # -- sending to a sibling --------------------------------------------------------
    def link(self, index: int) -> _Link:
        link = self.links.get(index)
        if link is None:
            link = self.links[index] = _Link(self, index)
            self.reactor.connectUNIX(socket_path(self.directory, index), _LinkFactory(link),
                                     timeout=2)
        return link

    def link_lost(self, link: _Link) -> None:
        if self.links.get(link.index) is link:
            del self.links[link.index]
        handed, link.handed, link.pending = link.handed, [], []
        if handed and not link.closed:
            # The sibling went before our SENDs reached it: those branches fail over.
            self.reactor.callLater(0, self._failed, handed)

    def _failed(self, keys: list[Key]) -> None:
        for key in keys:
            self.table.pop(key, None)
            if self.layer.on_connection_failed is not None:
                self.layer.on_connection_failed(key[1], key[2])

    def _send(self, index: int, frame: bytes, key: Key | None = None,
              messages: bool = False) -> bool:
        if self.stopped:
            return False
        return self.link(index).write(frame, key, messages)

    def holder(self, transport: str, host: str, port: int) -> tuple[int, str] | None:
        """(sibling index, listener name) of the connection to host:port a
        sibling holds, or None."""
        row = self.table.get((transport, host, port))
        return None if row is None else (row[0], row[1])

    def hand_over(self, transport: str, host: str, port: int, data: bytes) -> bool:
        """Send ``data`` over a sibling's connection to host:port; False if
        no sibling holds one (or the message cannot be framed)."""
        key = (transport, host, port)
        row = self.table.get(key)
        if row is None:
            return False
        try:
            frame = encode("SEND", key, data)
        except FrameError:
            self.drop("size")
            return False
        if not self._send(row[0], frame, key, messages=True):
            self.drop("busy")  # the branch fails over now
            return False
        self.handed += 1
        return True

    def pass_response(self, resp: Response, source: Any) -> bool:
        """A response on one of our connections for a transaction of the
        sibling its branch names: passed to that sibling. True if passed."""
        owner = owner_of(resp.top_via.branch)
        if owner is None or owner == self.index or not 0 <= owner < self.count:
            return False
        try:
            frame = encode("RESP", (source.transport, source.host, source.port,
                                    repr(source.listener)), resp.to_bytes())
        except FrameError:
            self.drop("size")
            return False
        if not self._send(owner, frame, messages=True):
            self.drop("busy")  # its owner is not reading: lost, as it would be with it
            return True
        self.relayed += 1
        return True

    # -- announcing our connections --------------------------------------------------
    def keys_of(self, conn: SIPStreamProtocol) -> list[Key]:
        return [(conn.kind, conn.peer[0], conn.peer[1]),
                *((conn.kind, h, p) for h, p in conn.aliases)]

    def have(self, conn: SIPStreamProtocol, host: str, port: int) -> None:
        self._broadcast(encode("HAVE", (conn.kind, host, port, repr(conn.listener))))

    def gone(self, conn: SIPStreamProtocol) -> None:
        fields = [f for key in self.keys_of(conn) for f in key]
        self._broadcast(encode("GONE", tuple(fields)))

    def _broadcast(self, frame: bytes) -> None:
        for i in range(self.count):
            if i != self.index:
                self._send(i, frame)

    def _sync(self, index: int) -> None:
        """Everything we hold, to a sibling that has just said HELLO."""
        rows: list[object] = []
        for conn in self.layer.accepted_connections():
            for key in self.keys_of(conn):
                rows += [*key, repr(conn.listener)]
                if len(rows) >= 4 * SYNC_BATCH:
                    self._send(index, encode("HAVE", tuple(rows)))
                    rows = []
        if rows:
            self._send(index, encode("HAVE", tuple(rows)))

    # -- frames in -------------------------------------------------------------------
    def frame(self, conn: _Inbound, payload: bytes) -> None:
        kind, fields, body = decode(payload)
        sender = conn.index
        if kind == "HELLO":
            if sender is not None or len(fields) != 1 or not _number(fields[0], 3):
                raise FrameError(f"HELLO {fields[:2]}")
            index = int(fields[0])
            if index == self.index or not 0 <= index < self.count:
                raise FrameError(f"HELLO from worker {index}")
            conn.index = index
            # A (re)started sibling: what its earlier life announced is gone.
            for key in [k for k, row in self.table.items() if row[0] == index and row[2] is not conn]:
                del self.table[key]
            # Our link to it (a new one starts with our HELLO, which makes it
            # send us its table), then our table over it.
            self.link(index)
            self._sync(index)
            return
        if sender is None:
            raise FrameError(f"{kind} before HELLO")
        if kind == "HAVE":
            for key, extra in parse_keys(fields, 4):
                if self.layer.listener_named(extra[0]) is None:
                    raise FrameError(f"unknown listener {extra[0][:60]}")
                self.table[key] = (sender, extra[0], conn)
        elif kind == "GONE":
            for key, _ in parse_keys(fields, 3):
                row = self.table.get(key)
                if row is not None and row[0] == sender:
                    del self.table[key]
        elif kind == "SEND":
            ((transport, host, port), _), = parse_keys(fields, 3)
            local = self.layer.connection_to(host, port)
            if local is None or local.outbound or local.kind != transport or not local.send(body):
                self._send(sender, encode("FAIL", (transport, host, port)))
        elif kind == "FAIL":
            ((key, _),) = parse_keys(fields, 3)
            row = self.table.get(key)
            if row is not None and row[0] == sender:
                del self.table[key]
            log.info("worker {n} holds no connection to {t}:{h}:{p} any more", n=sender,
                     t=key[0], h=key[1], p=key[2])
            if self.layer.on_connection_failed is not None:
                self.layer.on_connection_failed(key[1], key[2])
        elif kind == "RESP":
            ((transport, host, port), extra), = parse_keys(fields, 4)
            listener = self.layer.listener_named(extra[0])
            if listener is None or listener.transport != transport:
                raise FrameError(f"unknown listener {extra[0][:60]}")
            try:
                msg = parse_datagram(body)
            except ParseError as e:
                raise FrameError(f"RESP body: {e}") from None
            if not isinstance(msg, Response):
                raise FrameError("RESP body is a request")
            self.layer.relayed_in(msg, transport, host, port, listener)

    def inbound_lost(self, conn: _Inbound) -> None:
        self.inbound.discard(conn)
        if conn.index is None:
            return
        for key in [k for k, row in self.table.items() if row[2] is conn]:
            del self.table[key]

