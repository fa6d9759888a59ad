"""The relay's control server: RTPProxy's protocol over UDP, unix sockets and TLS.

:class:`ControlHandler` turns one command (bytes) into one reply (bytes)
against the SessionTable and the relay's ports; it never raises whatever the
input, so a malformed command costs an ``E<n>`` reply and nothing else.  The
listeners around it:

- UDP (``udp:HOST:PORT``, IPv4 or IPv6): each datagram a command with a
  cookie; the reply goes back from the same socket, bound to a specific
  address, so it leaves from the address the command reached.  Replies are
  cached per (cookie, source) for :data:`REPLY_CACHE_TTL` s: Kamailio retries
  a command with the same cookie when a reply is late, and the retry must get
  the first answer, not create a second session or delete again.
- unix (``unix:PATH``): Kamailio's default; a stream connection per command,
  no cookie, one reply, then the relay closes it (rtpproxy's ``unix:`` mode).
- tls (``tls:HOST:PORT``): the unix exchange over TLS, for a proxy on another
  host; the client must present a certificate that verifies against
  ``[tls] ca_list`` or the handshake fails and it gets nothing.

Codec: sipsuite.rtpproxy.protocol, shared with the proxy's relay client.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet import defer, protocol
from twisted.internet.interfaces import ITCPTransport, IUDPTransport
from twisted.python.failure import Failure

from sipsuite.config import ControlSpec
from sipsuite.log import get_logger
from sipsuite.rtpproxy import protocol as rp
from sipsuite.rtpproxy.protocol import Command, ErrorCode, ProtocolError
from sipsuite.rtprelay.media import MediaPorts, is_wildcard
from sipsuite.rtprelay.ports import PortsExhausted
from sipsuite.rtprelay.session import Leg
from sipsuite.rtprelay.table import (
    EXTERNAL,
    INTERNAL,
    Draining,
    SessionTable,
    TooManySessions,
    bridge_interfaces,
)

__all__ = [
    "SUPPORTED_CAPABILITIES",
    "CommandHandler",
    "ControlDatagramProtocol",
    "ControlHandler",
    "ControlStreamFactory",
    "ReplyCache",
    "listen_control",
]

log = get_logger("sipsuite.rtprelay.control")

#: "VF" dates answered 1: the base protocol, multiple streams (20050322),
#: Z accepted (20071116: ptime is taken and ignored, media is relayed as it
#: comes), Q counters (20080403), c accepted (20081102: codecs taken and
#: ignored) and the N modifier (20150330).  Not notifications (20081224):
#: a U naming a notify socket is E75, as rtpproxy without -n answers.
SUPPORTED_CAPABILITIES = frozenset({
    "20040107", "20050322", "20071116", "20080403", "20081102", "20150330",
})

#: Kamailio retries for rtpproxy_retr x rtpproxy_tout (5 x 1 s by default).
REPLY_CACHE_TTL = 30.0
REPLY_CACHE_SIZE = 16384
#: A unix-socket command longer than this is not one Kamailio sends.
MAX_STREAM_COMMAND = 8192
#: Seconds a unix-socket client may take to send its command.
STREAM_IDLE_TIMEOUT = 10.0

# An unexpected failure inside the relay (a bug) still gets a reply, so the
# client does not time out: E81, rtpproxy's family of internal failures.
INTERNAL_FAILURE = ErrorCode.NOMEM_1

# Counters "G" answers (names as rtpproxy's).
_GLOBAL_STATS = ("nsess_created", "nsess_destroyed", "nsess_timeout", "npkts_rcvd",
                 "npkts_relayed", "npkts_discard")


class CommandHandler(Protocol):
    """What the listeners hand commands to: a ControlHandler (the reply at
    once), or the supervisor of relay workers (rtprelay.router: a Deferred
    reply, once the worker holding the call has answered)."""

    def handle(self, data: bytes, *, datagram: bool = True) -> bytes | defer.Deferred[bytes]: ...


class ReplyCache:
    """Replies by (cookie, source), bounded in size and age."""

    def __init__(self, ttl: float = REPLY_CACHE_TTL, size: int = REPLY_CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[tuple[str, Any], tuple[float, bytes, bytes]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, cookie: str, source: Any, command: bytes, now: float) -> bytes | None:
        entry = self._entries.get((cookie, source))
        # The same cookie with another command is a client reusing cookies,
        # not a retransmission: it is answered afresh.
        if entry is None or entry[0] <= now or entry[1] != command:
            return None
        self.hits += 1
        return entry[2]

    def put(self, cookie: str, source: Any, command: bytes, reply: bytes, now: float) -> None:
        entries = self._entries
        key = (cookie, source)
        entries.pop(key, None)
        entries[key] = (now + self.ttl, command, reply)
        # Oldest first: drop what has expired, and whatever exceeds the bound.
        while entries:
            first = next(iter(entries.values()))
            if first[0] > now and len(entries) <= self.size:
                break
            entries.popitem(last=False)


def _cookie_of(data: bytes) -> str:
    """The first token of a datagram, as the codec would take it."""
    head = data.lstrip(b" \t\r\n")
    for i, byte in enumerate(head):
        if byte in b" \t\r\n":
            return head[:i].decode("latin-1")
    return head.decode("latin-1")


class ControlHandler:
    """Commands in, replies out, against a SessionTable and its MediaPorts.

    ``addresses`` are the media addresses: [internal] or [internal, external].
    """

    def __init__(self, table: SessionTable, media: MediaPorts, addresses: Sequence[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= len(addresses) <= 2:
            raise ValueError("one or two media addresses")
        self.table = table
        self.media = media
        self.addresses = list(addresses)
        self.clock = clock
        self.bridging = len(addresses) == 2
        self.commands = 0
        self.errors = 0
        # CPU share of the process over the last second (I with "l"), set by
        # the relay's once-a-second tick.
        self.load = 0.0
        # Called after each command while draining (the relay checks whether
        # the last session is gone and it may stop).
        self.on_drain_progress: Callable[[], None] | None = None
        # Legs' interfaces by name, as table.bridge_interfaces spells them.
        self._by_interface = {INTERNAL: addresses[0], EXTERNAL: addresses[-1]}

    def handle(self, data: bytes, *, datagram: bool = True) -> bytes:
        """One command -> its reply.  Never raises."""
        self.commands += 1
        try:
            command = rp.parse_command(data, datagram=datagram)
            reply = self._dispatch(command)
            if self.table.draining and self.on_drain_progress is not None:
                self.on_drain_progress()  # a D may have ended the last session
            return reply
        except ProtocolError as exc:
            self.errors += 1
            return exc.reply()
        except Exception:
            self.errors += 1
            log.failure("relay control command {c!r} failed", Failure(), c=data[:200])
            return rp.format_error(_cookie_of(data) if datagram else "", INTERNAL_FAILURE)

    # -- verbs ----------------------------------------------------------------

    def _dispatch(self, cmd: Command) -> bytes:
        cookie = cmd.cookie
        verb = cmd.verb
        if not cmd.known:
            raise ProtocolError(ErrorCode.CMDUNKN, f"unknown command {verb!r}", cookie)
        if verb == "U" or verb == "L":
            return self._update(cmd, lookup=verb == "L")
        if verb == "D":
            assert cmd.call_id is not None and cmd.from_tag is not None
            if self.table.delete(cmd.call_id, cmd.from_tag, cmd.to_tag) == 0:
                raise ProtocolError(ErrorCode.SESUNKN, "no such session", cookie)
            return rp.format_ok(cookie)
        if verb == "Q":
            return self._query(cmd)
        if verb == "V":
            return rp.format_version(cookie)
        if verb == "VF":
            return rp.format_capability(cookie, cmd.capability in SUPPORTED_CAPABILITIES)
        if verb == "I":
            return self._info(cmd)
        if verb == "X":
            self.delete_all()
            return rp.format_ok(cookie)
        if verb == "G":
            return self._global_stats(cmd)
        return self._unsupported(cmd)

    def _update(self, cmd: Command, *, lookup: bool) -> bytes:
        cookie = cmd.cookie
        ul = cmd.ul
        assert ul is not None and cmd.call_id is not None and cmd.from_tag is not None
        if cmd.notify_socket is not None:
            raise ProtocolError(ErrorCode.NSOFF, "timeout notifications are not enabled", cookie)
        if cmd.subcommands:
            raise ProtocolError(ErrorCode.PARSE_SUBC, "sub-commands are not supported", cookie)
        interfaces = self._interfaces(ul, cookie)
        table = self.table
        found = table.find(cmd.call_id, cmd.from_tag, cmd.to_tag)
        if found is None and lookup:
            return rp.format_port(cookie, 0)  # rtpproxy's "no such session" for L
        addr_leg: Leg | None = None
        port_leg: Leg | None = None
        if found is not None:
            session, idx = found
            # U: the address is the from-tag party's, the port the other's;
            # L swaps them (see table.py).
            forward = (idx == 0) != lookup
            addr_leg = session.caller if forward else session.callee
            port_leg = session.callee if forward else session.caller
        if cmd.remote is not None:
            self._check_family(cmd.remote[0], addr_leg, interfaces[0], cookie)
        port_interface = interfaces[1] or (port_leg.interface if port_leg else None)
        self.media.bind_address = self._address(port_interface)
        now = self.clock()
        kwargs: dict[str, Any] = {
            "asymmetric": bool(ul.asymmetric), "on_hold": cmd.on_hold,
            "interfaces": interfaces, "new_port": ul.new_port,
        }
        try:
            if lookup:
                result = table.lookup(cmd.call_id, cmd.from_tag, cmd.to_tag, cmd.remote, now,
                                      **kwargs)
            else:
                result = table.update(cmd.call_id, cmd.from_tag, cmd.to_tag, cmd.remote, now,
                                      **kwargs)
        except Draining:
            raise ProtocolError(ErrorCode.SLOWSHTDN, "draining: no new sessions", cookie) from None
        except TooManySessions as exc:
            # Debug only: a controller sending thousands of streams would
            # otherwise write a line for each; relay.stats counts them.
            log.debug("relay: call {c}: {e}", c=cmd.call_id, e=exc)
            raise ProtocolError(ErrorCode.OVERLOAD, str(exc), cookie) from None
        except PortsExhausted as exc:
            log.warn("relay: no free port pair for call {c}: {e}", c=cmd.call_id, e=exc)
            code = ErrorCode.LSTFAIL_2 if found is None else ErrorCode.LSTFAIL_1
            raise ProtocolError(code, "no free port pair", cookie) from None
        if result is None:  # L raced with a delete: cannot happen single-threaded
            return rp.format_port(cookie, 0)
        session, leg = result
        self.media.start(session)
        assert leg.port is not None
        address = self.media.address_of(leg)
        if address is None or is_wildcard(address):
            # Bound on every address: the client writes its own in the SDP.
            return rp.format_port(cookie, leg.port)
        return rp.format_port(cookie, leg.port, address)

    def _interfaces(self, ul: rp.UpdateModifiers, cookie: str) -> tuple[str | None, str | None]:
        """(address leg, port leg) interfaces from I/E and L<addr>."""
        if ul.bridge:
            if not self.bridging:
                code = ErrorCode.PARSE_11 if ul.bridge[0] == "E" else ErrorCode.PARSE_12
                raise ProtocolError(code, "I/E given but the relay is not bridging", cookie)
            return bridge_interfaces(ul.bridge)
        if ul.local_address is not None:
            local = str(ipaddress.ip_address(ul.local_address))
            for name, address in self._by_interface.items():
                if address == local:
                    return name, name
            raise ProtocolError(ErrorCode.INVLARG_1, f"{local} is not a media address", cookie)
        return None, None

    def _address(self, interface: str | None) -> str:
        return self._by_interface.get(interface or INTERNAL, self.addresses[0])

    def _check_family(self, remote_host: str, addr_leg: Leg | None, interface: str | None,
                      cookie: str) -> None:
        """The party at remote_host is sent to from its leg's socket: that
        socket's address must be of the same family (E36, as rtpproxy)."""
        local = self.media.address_of(addr_leg) if addr_leg is not None else None
        if local is None:
            if interface is None and addr_leg is not None:
                interface = addr_leg.interface
            local = self._address(interface)
        if (":" in local) != (":" in remote_host):
            raise ProtocolError(ErrorCode.INVLARG_6,
                                f"no media address of the family of {remote_host}", cookie)

    def _query(self, cmd: Command) -> bytes:
        cookie = cmd.cookie
        assert cmd.call_id is not None and cmd.from_tag is not None
        if cmd.subcommands:
            raise ProtocolError(ErrorCode.PARSE_SUBC, "sub-commands are not supported", cookie)
        found = self.table.find(cmd.call_id, cmd.from_tag, cmd.to_tag)
        if found is None:
            raise ProtocolError(ErrorCode.SESUNKN, "no such session", cookie)
        session, idx = found
        # The stream the tags select is the one a U with them hands out the
        # port of (rtpproxy's stream[idx]): the callee's for forward tags.
        selected = session.callee if idx == 0 else session.caller
        other = session.other(selected)
        table = self.table
        limit = table.hold_timeout if session.on_hold else table.timeout
        ttl = max(0, int(limit - (self.clock() - session.last_activity)))
        stats: dict[str, int | float] = dict.fromkeys(rp.QUERY_STATS, 0)
        stats.update(
            ttl=ttl,
            npkts_ina=_received(selected),
            npkts_ino=_received(other),
            nrelayed=session.packets_relayed,
            ndropped=session.packets_dropped,
        )
        names = cmd.stats or rp.DEFAULT_QUERY
        return rp.format_query(cookie, stats, names, verbose=cmd.verbose)

    def _info(self, cmd: Command) -> bytes:
        s = self.table.stats()
        streams = sum(1 for session in self.table for leg in session.legs if leg.port is not None)
        return rp.format_info(
            cmd.cookie, s.sessions_created, s.sessions_active, streams,
            s.packets_relayed + s.packets_dropped, s.packets_relayed,
            average_load=self.load if cmd.load else None,
        )

    def _global_stats(self, cmd: Command) -> bytes:
        s = self.table.stats()
        values = {
            "nsess_created": s.sessions_created,
            "nsess_destroyed": s.sessions_deleted + s.sessions_expired,
            "nsess_timeout": s.sessions_expired,
            "npkts_rcvd": s.packets_relayed + s.packets_dropped,
            "npkts_relayed": s.packets_relayed,
            "npkts_discard": s.packets_dropped,
        }
        names = cmd.stats or _GLOBAL_STATS
        unknown = [n for n in names if n not in values]
        if unknown:
            raise ProtocolError(ErrorCode.STSFAIL, f"unknown statistic {unknown[0]!r}", cmd.cookie)
        items = [f"{n}={values[n]}" if cmd.verbose else str(values[n]) for n in names]
        return rp.format_reply(cmd.cookie, " ".join(items))

    def _unsupported(self, cmd: Command) -> bytes:
        """P, R, C, S, N: playback and recording, which this relay has not got.
        Answered as rtpproxy answers when they fail, after the session lookup."""
        cookie = cmd.cookie
        assert cmd.call_id is not None and cmd.from_tag is not None
        if self.table.find(cmd.call_id, cmd.from_tag, cmd.to_tag) is None:
            raise ProtocolError(ErrorCode.SESUNKN, "no such session", cookie)
        if cmd.verb == "P":
            raise ProtocolError(ErrorCode.PLRFAIL, "playback is not supported", cookie)
        if cmd.verb in ("R", "C"):
            raise ProtocolError(ErrorCode.CPYFAIL, "recording is not supported", cookie)
        return rp.format_ok(cookie)  # S, N: nothing is playing or recording

    def delete_all(self) -> int:
        """X: every session ends (its ports close with it); how many."""
        table = self.table
        sessions = list(table)
        for session in sessions:
            # The exact from-tag: a bare tag would also match "tag;N" media,
            # which the loop reaches (or has removed) anyway.
            table.delete(session.call_id, session.from_tag)
        return len(sessions)


def _received(leg: Leg) -> int:
    """Datagrams that arrived on the leg's ports: relayed and dropped."""
    s = leg.stats
    return s.packets + s.rtcp_packets + s.dropped


# -- listeners ------------------------------------------------------------------------


class ControlDatagramProtocol(protocol.DatagramProtocol):
    """A UDP control socket: commands with cookies, replies from this socket."""

    noisy = False
    transport: IUDPTransport  # set by listenUDP before any datagram arrives

    def __init__(self, handler: CommandHandler, cache: ReplyCache,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.handler = handler
        self.cache = cache
        self.clock = clock
        # (cookie, source) -> command, for replies still to come (a relay
        # worker's): a retransmission of one is dropped, its reply is on the way.
        self.pending: dict[tuple[str, Any], bytes] = {}

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        source = tuple(addr[:2])
        now = self.clock()
        cookie = _cookie_of(data)
        reply = self.cache.get(cookie, source, data, now) if cookie else None
        if reply is not None:
            self._send(data, reply, source)
            return
        key = (cookie, source)
        if cookie and self.pending.get(key) == data:
            self.cache.hits += 1
            return
        answer = self.handler.handle(data, datagram=True)
        if isinstance(answer, bytes):
            self._answered(data, answer, cookie, source, now)
            return
        if cookie:
            self.pending[key] = data

        def done(result: bytes) -> None:
            if self.pending.get(key) == data:
                del self.pending[key]
            self._answered(data, result, cookie, source, self.clock())

        answer.addCallback(done).addErrback(
            lambda f: log.failure("relay control {c!r} failed", f, c=data[:200]))

    def _answered(self, data: bytes, reply: bytes, cookie: str, source: Any, now: float) -> None:
        if cookie:
            self.cache.put(cookie, source, data, reply, now)
        self._send(data, reply, source)

    def _send(self, data: bytes, reply: bytes, source: Any) -> None:
        log.debug("relay control {src}: {cmd!r} -> {reply!r}", src=source, cmd=data[:200],
                  reply=reply[:200])
        try:
            # The same transport the command came in on: the reply leaves
            # from the address and port the client sent to.
            self.transport.write(reply, source)
        except OSError as exc:
            log.warn("relay control reply to {src} failed: {e}", src=source, e=exc)


class ControlStreamProtocol(protocol.Protocol):
    """One unix-socket connection: one command (the first read, as rtpproxy
    reads it; or up to a newline), one reply without a cookie, then close."""

    # Set by makeConnection before any method here runs.  A unix (or TLS)
    # stream: Twisted's unix Server is a tcp.Server, and ITCPTransport is the
    # interface that declares abortConnection.
    transport: ITCPTransport

    def __init__(self, handler: CommandHandler, reactor: Any) -> None:
        self.handler = handler
        self.reactor = reactor
        self.buffer = b""
        self.answered = False
        self.closed = False
        self._idle: Any = None

    def connectionMade(self) -> None:
        # A client that connects and says nothing must not hold a descriptor
        # for ever.
        self._idle = self.reactor.callLater(STREAM_IDLE_TIMEOUT, self.transport.abortConnection)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def dataReceived(self, data: bytes) -> None:
        if self.answered:
            return
        self.buffer += data
        command, newline, _ = self.buffer.partition(b"\n")
        if not newline and len(self.buffer) > MAX_STREAM_COMMAND:
            command = self.buffer[:MAX_STREAM_COMMAND]
        # Kamailio writes the whole command in one writev and sends no newline;
        # a unix stream delivers that in one read.
        self.answered = True
        answer = self.handler.handle(command, datagram=False)
        if isinstance(answer, bytes):
            self._reply(command, answer)
        else:
            answer.addCallback(lambda reply: self._reply(command, reply)).addErrback(
                lambda f: log.failure("relay control {c!r} failed", f, c=command[:200]))

    def _reply(self, command: bytes, reply: bytes) -> None:
        log.debug("relay control unix: {cmd!r} -> {reply!r}", cmd=command[:200],
                  reply=reply[:200])
        if self.closed:
            return  # the client gave up (or the idle timer cut it) meanwhile
        self.transport.write(reply)
        self.transport.loseConnection()


class ControlStreamFactory(protocol.Factory):
    noisy = False

    def __init__(self, handler: CommandHandler, reactor: Any) -> None:
        self.handler = handler
        self.reactor = reactor

    def buildProtocol(self, addr: Any) -> ControlStreamProtocol:
        return ControlStreamProtocol(self.handler, self.reactor)


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a relay that died: remove it, or bind fails.
    Only a socket, and only one nobody answers on."""
    import socket

    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        try:
            os.unlink(path)
        except OSError:
            pass
    finally:
        probe.close()


def listen_control(spec: ControlSpec, handler: CommandHandler, cache: ReplyCache,
                   reactor: Any, clock: Callable[[], float] = time.monotonic,
                   tls: Any = None) -> Any:
    """Listen on one control socket; returns the listening port.  Raises
    CannotListenError like reactor.listenUDP / listenUNIX.  ``tls:`` sockets
    (``tls``: sipsuite.tlsctx.TLSContexts) speak the unix stream exchange
    over TLS and serve only clients whose certificate verifies (mutual TLS)."""
    if spec.transport == "tls":
        factory = tls.server_factory(ControlStreamFactory(handler, reactor), lambda: True)
        return reactor.listenTCP(spec.port, factory, interface=spec.host)
    if spec.transport == "unix":
        _remove_stale_socket(spec.path)
        return reactor.listenUNIX(spec.path, ControlStreamFactory(handler, reactor))
    return reactor.listenUDP(spec.port, ControlDatagramProtocol(handler, cache, clock),
                             interface=spec.host)
