"""The relay supervisor's command handler ([relay] workers > 1): RTPProxy
commands from the control sockets to the worker process that holds the call.

Each worker is today's relay on a slice of the port range.  The supervisor
speaks RTPProxy's datagram protocol to it over one unix stream connection
per worker (a socket in its private 0700 directory), each command and reply
a length-prefixed frame with a cookie of the supervisor's own; the worker's
ControlHandler answers it as it answers a UDP client, so a worker is not a
second implementation of the protocol.  The client's cookie, the reply cache
and "the reply leaves from the address the command reached" stay with the
supervisor's listeners (control.py).  One lasting connection rather than one
per command (rtpproxy's ``unix:`` exchange: half the rate), and a stream
rather than unix datagrams (whose queue of 10 drops commands under load).

Which worker: a hash of the Call-ID (:func:`worker_of`), the same for every
command of a call, so the supervisor keeps no table that could disagree with
the workers (a session that times out in a worker needs no message back).
V and VF are answered here; I, G and X go to every worker and the answers
are added up.  A worker that is not running (restarting after a crash) has
no sessions: U for its calls is E81 (the proxy tries another relay or
connects the call without one; E99 while the relay stops, as draining
workers answer), L answers port 0, D/Q E50, as for a call the relay does not
know.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.protocols import basic
from twisted.python.failure import Failure

from sipsuite.log import get_logger
from sipsuite.rtpproxy import protocol as rp
from sipsuite.rtpproxy.protocol import Command, ErrorCode, ProtocolError
from sipsuite.rtprelay.control import INTERNAL_FAILURE, SUPPORTED_CAPABILITIES

__all__ = ["WorkerRouter", "worker_of"]

log = get_logger("sipsuite.rtprelay.router")

#: How long (s) a worker has to answer one command (it answers in well under
#: a millisecond when healthy).  Kamailio's default rtpproxy_tout is 1 s and
#: it retransmits 5 times: a late reply is still cached for the retransmission.
FORWARD_TIMEOUT = 2.0
#: How long (s) a command waits at start for every worker to come up; then
#: it is handled as usual (the workers not up count as down).
START_WAIT = 10.0
#: Verbs answered by every worker, their answers added up.
FAN_OUT = frozenset({"I", "G", "X"})


def worker_of(call_id: str, workers: int) -> int:
    """The worker for a Call-ID: stable across restarts of the supervisor
    and of workers (crc32, not Python's salted hash)."""
    return zlib.crc32(call_id.encode("utf-8", "surrogateescape")) % workers


class _Link(basic.Int32StringReceiver):
    """The supervisor's connection to one worker: length-prefixed frames."""

    MAX_LENGTH = 1 << 20

    def __init__(self, router: WorkerRouter, index: int) -> None:
        self.router = router
        self.index = index
        self.up: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.up.callback(None)

    def stringReceived(self, data: bytes) -> None:
        self.router.reply_from_worker(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.router.link_lost(self)


class _LinkFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, link: _Link) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _Link:
        return self.link

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.link.up.called:
            self.link.up.errback(reason)


class WorkerRouter:
    """``handle(data)`` for the supervisor's control listeners (control.py's
    CommandHandler): a Deferred reply from the worker(s), or bytes at once.

    Commands go to the workers connected (:meth:`connect`); one that is not
    is treated as down."""

    def __init__(self, workers: int, reactor: Any, timeout: float = FORWARD_TIMEOUT) -> None:
        self.workers = workers
        self.reactor = reactor
        self.timeout = timeout
        self.commands = 0
        self.errors = 0
        # Commands each worker was sent, and those it did not answer.
        self.forwarded = [0] * workers
        self.failed = [0] * workers
        # Until every worker has come up once, commands wait (up to
        # START_WAIT) rather than fail: a V then means "ready", as for one relay.
        self.up = False
        # Set when the relay stops: a worker that has no calls left exits at
        # once, and a U for it is "shutting down", not a failure.
        self.draining = False
        # A connection per worker; commands in flight by our own cookie ->
        # (worker, its reply).
        self.links: dict[int, _Link] = {}
        self._sequence = 0
        self._pending: dict[bytes, tuple[int, defer.Deferred[bytes]]] = {}
        self._waiting: list[defer.Deferred[None]] = []
        self._started = reactor.seconds()

    def start(self) -> None:
        """The workers are starting now: commands wait START_WAIT at most."""
        self._started = self.reactor.seconds()

    def all_up(self) -> None:
        """Every worker has started (once): serve, and answer what waited."""
        self.up = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.callback(None)

    def handle(self, data: bytes, *, datagram: bool = True) -> bytes | defer.Deferred[bytes]:
        self.commands += 1
        if not self.up:
            left = self._started + START_WAIT - self.reactor.seconds()
            if left > 0:
                waiter: defer.Deferred[None] = defer.Deferred()
                self._waiting.append(waiter)
                waiter.addTimeout(left, self.reactor)
                # After the timeout the command is handled anyway: it fails
                # as for a worker that is down.
                return waiter.addBoth(lambda _: self._answer(data, datagram))
            self._waiting.clear()  # timed out, all of them
        return self._answer(data, datagram)

    def _answer(self, data: bytes, datagram: bool) -> bytes | defer.Deferred[bytes]:
        try:
            command = rp.parse_command(data, datagram=datagram)
            if not command.known:
                raise ProtocolError(ErrorCode.CMDUNKN, f"unknown command {command.verb!r}",
                                    command.cookie)
        except ProtocolError as exc:
            # Malformed: the worker would answer the same, so it is not asked.
            self.errors += 1
            return exc.reply()
        except Exception:
            self.errors += 1
            log.failure("relay control command {c!r} failed", Failure(), c=data[:200])
            return rp.format_error(command_cookie(data, datagram), INTERNAL_FAILURE)
        cookie = command.cookie
        verb = command.verb
        if verb == "V":
            return rp.format_version(cookie)
        if verb == "VF":
            return rp.format_capability(cookie, command.capability in SUPPORTED_CAPABILITIES)
        body = strip_cookie(data, cookie)
        if verb in FAN_OUT:
            return self._fan_out(command, body)
        assert command.call_id is not None
        index = worker_of(command.call_id, self.workers)
        d = self.forward(index, body)
        return d.addCallback(lambda reply: self._with_cookie(cookie, reply)).addErrback(
            self._unreachable, command, index)

    # -- one worker -----------------------------------------------------------------

    def connect(self, index: int, path: str,
                current: Callable[[], bool] = lambda: True) -> defer.Deferred[None]:
        """Connect to worker ``index``'s channel socket; fires once commands
        can go to it.  ``current()`` False once connected: that worker
        process has been replaced meanwhile, and the connection is dropped."""
        link = _Link(self, index)
        self.reactor.connectUNIX(path, _LinkFactory(link), timeout=self.timeout)

        def connected(_: None) -> None:
            if not current():
                assert link.transport is not None
                link.transport.loseConnection()
                raise ConnectionError(f"worker {index} was replaced meanwhile")
            old = self.links.pop(index, None)
            if old is not None and old.transport is not None:
                old.transport.loseConnection()
            self.links[index] = link

        return link.up.addCallback(connected)

    def link_lost(self, link: _Link) -> None:
        if self.links.get(link.index) is link:
            del self.links[link.index]
            self.fail_pending(link.index, f"worker {link.index}: connection lost")

    def drop(self, index: int, why: str) -> None:
        """Worker ``index`` has ended: what waits for it fails now."""
        link = self.links.pop(index, None)
        if link is not None and link.transport is not None:
            link.transport.loseConnection()
        self.fail_pending(index, why)

    def close(self) -> None:
        for index in list(self.links):
            self.drop(index, "the relay is stopping")
        self.fail_pending(None, "the relay is stopping")

    def forward(self, index: int, body: bytes) -> defer.Deferred[bytes]:
        """``body`` (a command without cookie) to worker ``index``: its reply
        (no cookie).  Fails if the worker is not running, dies before it
        answers, or does not answer within the timeout."""
        link = self.links.get(index)
        if link is None:
            return defer.fail(ConnectionError(f"worker {index} is not running"))
        self._sequence += 1
        tag = b"%x" % self._sequence
        d: defer.Deferred[bytes] = defer.Deferred()
        self._pending[tag] = (index, d)
        link.sendString(tag + b" " + body)
        self.forwarded[index] += 1

        def forget(result: Any) -> Any:
            self._pending.pop(tag, None)
            if isinstance(result, Failure):
                self.failed[index] += 1
            return result

        d.addTimeout(self.timeout, self.reactor)
        return d.addBoth(forget)

    def reply_from_worker(self, data: bytes) -> None:
        tag, _, reply = data.partition(b" ")
        entry = self._pending.pop(tag, None)
        if entry is not None and not entry[1].called:
            entry[1].callback(reply)

    def fail_pending(self, index: int | None, why: str) -> None:
        """Commands waiting for worker ``index`` (None: any) fail now: it
        died, and its reply will never come."""
        for tag, (owner, d) in list(self._pending.items()):
            if index is None or owner == index:
                del self._pending[tag]
                if not d.called:
                    d.errback(ConnectionError(why))

    def _with_cookie(self, cookie: str, reply: bytes) -> bytes:
        return (cookie.encode("latin-1") + b" " + reply) if cookie else reply

    def _unreachable(self, failure: Failure, command: Command, index: int) -> bytes:
        """The worker for this call is not there: the call has no session."""
        self.errors += 1
        if not self.draining:
            log.warn("relay worker {n} did not answer {v} for call {c}: {e}", n=index,
                     v=command.verb, c=command.call_id, e=failure.getErrorMessage())
        cookie = command.cookie
        if command.verb == "U":
            return rp.format_error(cookie, ErrorCode.SLOWSHTDN if self.draining
                                   else INTERNAL_FAILURE)
        if command.verb == "L":
            return rp.format_port(cookie, 0)
        return rp.format_error(cookie, ErrorCode.SESUNKN)

    # -- every worker ----------------------------------------------------------------

    def _fan_out(self, command: Command, body: bytes) -> defer.Deferred[bytes]:
        """I, G, X to every worker running; the answers added up.  Workers
        that are down count as empty (their sessions are gone)."""
        asks = [self.forward(i, body).addErrback(lambda _f: None) for i in range(self.workers)]
        gathered: defer.Deferred[list[bytes | None]] = defer.gatherResults(asks)

        def combine(replies: list[bytes | None]) -> bytes:
            answers = [r.decode("latin-1") for r in replies if r is not None]
            if not answers:
                return rp.format_error(command.cookie, INTERNAL_FAILURE)
            return combine_replies(command, answers)

        return gathered.addCallback(combine)


def combine_replies(command: Command, answers: list[str]) -> bytes:
    """The workers' answers to one I, G or X as one relay's answer."""
    cookie = command.cookie
    errors = [a.strip() for a in answers if a.startswith("E")]
    if errors:
        return rp.format_reply(cookie, errors[0])  # the same bad G in all: one answer
    if command.verb == "X":
        return rp.format_ok(cookie)
    if command.verb == "I":
        return _add_info(cookie, answers)
    return _add_stats(cookie, answers)


def _add_info(cookie: str, answers: list[str]) -> bytes:
    totals: dict[str, float] = {}
    loads: list[float] = []
    for answer in answers:
        for line in answer.splitlines():
            name, colon, value = line.partition(":")
            if not colon:
                continue
            try:
                number = float(value)
            except ValueError:
                continue
            if name.strip() == "average load":
                loads.append(number)
            else:
                totals[name.strip()] = totals.get(name.strip(), 0) + number
    # Each worker's load is its share of one core: the relay's is their
    # mean, the figure a weight can be taken from.
    load = sum(loads) / len(loads) if loads else None
    return rp.format_info(
        cookie, int(totals.get("sessions created", 0)), int(totals.get("active sessions", 0)),
        int(totals.get("active streams", 0)), int(totals.get("packets received", 0)),
        int(totals.get("packets transmitted", 0)), average_load=load)


def _add_stats(cookie: str, answers: list[str]) -> bytes:
    """G: the same names in the same order from each worker; values added."""
    rows = [answer.split() for answer in answers]
    width = min(len(row) for row in rows)
    items = []
    for position in range(width):
        name, equals, _ = rows[0][position].partition("=")
        total = 0
        for row in rows:
            value = row[position].partition("=")[2] if equals else row[position]
            try:
                total += int(value)
            except ValueError:
                pass
        items.append(f"{name}={total}" if equals else str(total))
    return rp.format_reply(cookie, " ".join(items))


def command_cookie(data: bytes, datagram: bool) -> str:
    if not datagram:
        return ""
    head = data.split(None, 1)
    return head[0].decode("latin-1") if head else ""


def strip_cookie(data: bytes, cookie: str) -> bytes:
    """The command as a unix-socket client sends it: without the cookie."""
    if not cookie:
        return data
    rest = data.lstrip(b" \t\r\n")
    return rest[len(cookie.encode("latin-1")):].lstrip(b" \t")
