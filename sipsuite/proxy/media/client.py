"""The proxy's client of its media relays: the RTPProxy control protocol over
UDP (one socket per address family for every relay) or a unix stream socket,
what Kamailio's ``rtpproxy`` module does with ``rtpproxy_sock``.

Behaviour, and why:

* **Retransmission.** A UDP command is resent, byte for byte with the same
  cookie, every ``retransmit_interval`` until a reply carrying that cookie
  arrives or ``command_timeout`` has passed (Kamailio's ``rtpproxy_retr`` /
  ``rtpproxy_tout``).  The same cookie lets the relay answer a repeat from its
  reply cache instead of creating a second session.  Replies are matched by
  cookie *and* source address; late and duplicate ones are counted and dropped.
* **Unix sockets** carry no cookie: one connection per command, write it, read
  one reply, close (Kamailio's stream mode; see ``sipsuite.rtpproxy.protocol``).
  ``tls:HOST:PORT`` relays (on other hosts) are the same exchange over TLS
  with mutual authentication: we present [tls] certificate and check the
  relay's against [tls] ca_list and HOST (sipsuite.tlsctx).
* **Relay health.** A relay that lets a command time out (or refuses the
  connection) is taken out for ``disable_time`` and checked again with V/VF
  when that has passed; relays that are up are pinged every ``ping_interval``.
  A relay is up when it answers ``V`` with ``20040107`` and ``VF 20050322``
  with ``1``, the checks Kamailio makes before using one.
* **Selection.** The first command of a call goes to the up relay with the
  highest weighted rendezvous-hash score for its Call-ID (``weight / -ln(h)``):
  over many calls each relay gets its weight's share, like weighted random
  choice, but one Call-ID maps to the same relay from every proxy node and
  across restarts, so a call whose entry here is gone (idle, evicted, another
  node) still usually finds its relay.  When that relay does not answer (or
  has no ports left / is overloaded / draining) the next one in score order
  is tried.
* **Stickiness.** Once a relay took a call, every later command of that call
  (by Call-ID, without Kamailio's ``;branch`` suffix) goes to that relay and
  nowhere else: the media state lives there.  If it is down, the command
  fails (logged) and the caller connects the call without relaying.  The
  entry is forgotten after D, after ``call_idle_time`` without commands, or
  when ``max_calls`` newer calls push it out.
* **Identifiers.** Commands take the SIP Call-ID (``CALLID[;BRANCH]``) and
  tags as the message has them and send them encoded by
  :mod:`sipsuite.rtpproxy.ids`: an RFC 3261 Call-ID or tag as it is (what
  Kamailio sends), any other one escaped or digested into one token, so no
  Call-ID a stranger sends can split a command or fail to encode.

Every public command returns a Deferred (the routing trampoline can await
only Deferreds).  Failures are :class:`RelayUnavailable` (no answer, nothing
up, or the call's relay down) and :class:`RelayError` (the relay answered an
``E<n>`` code, or an unusable reply).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import secrets
import socket
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred

# The relay URI grammar lives with the config validators (which may import
# nothing else from sipsuite) so [media] relays is checked with the same rules.
from sipsuite.config.specs import (
    DEFAULT_CONTROL_PORT,
    RelayAddress,
    RelaySpec,
    parse_relay_uri,
)
from sipsuite.log import get_logger
from sipsuite.proxy.media.peers import (
    ControlSocket,
    NoAnswer,
    PendingCommand,
    RelayState,
    StreamFactory,
    call_key,
)
from sipsuite.rtpproxy import controller as rc
from sipsuite.rtpproxy import protocol as rp
from sipsuite.rtpproxy.ids import encode_call_id, encode_id

__all__ = [
    "DEFAULT_CONTROL_PORT", "REQUIRED_CAPABILITY", "RelayAddress", "RelayClient", "RelayError",
    "RelaySpec", "RelayUnavailable", "parse_relay_uri",
]

log = get_logger("sipsuite.proxy.relayclient")

#: The one VF capability a relay must have (Kamailio's REP_CPROTOVER).
REQUIRED_CAPABILITY = "20050322"

# E-codes that say "this relay cannot take a new session now" rather than
# "this command is wrong": a new call may still find room on another relay.
_CAPACITY_CODES = frozenset({
    rp.ErrorCode.LSTFAIL_1, rp.ErrorCode.LSTFAIL_2, rp.ErrorCode.OVERLOAD,
    rp.ErrorCode.SLOWSHTDN,
})
# Float noise on the deadline must not buy one extra retransmission.
_EPSILON = 1e-6

T = TypeVar("T")


class RelayUnavailable(Exception):
    """No relay answered: timeout, connection refused, none up, or the call's
    own relay is down.  The call goes on without relaying."""


class RelayError(Exception):
    """The relay answered, but with an error: ``code`` is the ``E<n>`` number
    (see ``sipsuite.rtpproxy.protocol.ErrorCode``), or None for a reply that makes no
    sense (no port in a U reply)."""

    def __init__(self, code: int | None, message: str, relay: str = "") -> None:
        super().__init__(f"{relay}: {message}" if relay else message)
        self.code = code
        self.relay = relay


class RelayClient(service.Service):
    """Drives one or more relays; a Service so the proxy's MultiService starts
    the pings and closes the sockets.  Commands work without start-up too
    (sockets open on first use), only the periodic pings need it."""

    def __init__(self, relays: Sequence[RelaySpec], *, command_timeout: float = 1.0,
                 retransmit_interval: float = 0.25, disable_time: float = 60.0,
                 ping_interval: float = 10.0, call_idle_time: float = 4 * 3600.0,
                 max_calls: int = 200_000, reactor: Any = None, tls: Any = None) -> None:
        """``tls``: the sipsuite.tlsctx.TLSContexts tls: relays are reached with."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if not relays:
            raise ValueError("at least one relay is needed")
        for name, value in (("command_timeout", command_timeout),
                            ("retransmit_interval", retransmit_interval),
                            ("disable_time", disable_time), ("call_idle_time", call_idle_time)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        if ping_interval < 0:
            raise ValueError(f"ping_interval must be 0 (off) or positive, not {ping_interval!r}")
        if max_calls < 1:
            raise ValueError(f"max_calls must be positive, not {max_calls!r}")
        self._relays: list[RelayState] = []
        for spec in relays:
            if isinstance(spec.weight, bool) or not isinstance(spec.weight, int) or spec.weight < 0:
                raise ValueError(f"relay {spec.uri!r}: weight must be an integer >= 0")
            if any(r.uri == spec.uri for r in self._relays):
                raise ValueError(f"relay {spec.uri!r} named twice")
            self._relays.append(RelayState(spec))
        self._by_uri = {r.uri: r for r in self._relays}
        if tls is None and any(r.address.scheme == "tls" for r in self._relays):
            raise ValueError("tls: relays need TLS contexts ([tls] certificate)")
        self.tls = tls
        self.reactor = reactor
        self.command_timeout = float(command_timeout)
        self.retransmit_interval = float(retransmit_interval)
        self.disable_time = float(disable_time)
        self.ping_interval = float(ping_interval)
        self.call_idle_time = float(call_idle_time)
        self.max_calls = max_calls
        # Kamailio's "<pid>_<counter>" cookies, with the counter starting at a
        # random point: two proxies with the same pid (containers: pid 1)
        # sharing a relay must not hit each other's entries in its reply cache.
        self._pid = os.getpid()
        self._counter = itertools.count(secrets.randbits(32))
        self._pending: dict[str, PendingCommand] = {}
        self._sockets: dict[int, Any] = {}  # address family -> IListeningPort
        self._streams: set[tuple[Any, StreamFactory]] = set()
        # call key -> (relay, last command time), least recently used first.
        self._calls: OrderedDict[str, tuple[RelayState, float]] = OrderedDict()
        self._loop: Any = None
        self._stopped = False
        self.stray_replies = 0  # late, duplicate or foreign replies dropped
        # tap(relay uri, command without its cookie, reply text or what went
        # wrong): each command and its outcome (the flight recorder).
        self.tap: Callable[[str, bytes, str], None] | None = None
        # Told the key of each call this client stops holding and why
        # (FORGET_REASONS): the media manager's per-source session counts
        # and its relay sessions end with it.
        self.forgotten: Callable[[str, str], None] | None = None

    # -- service ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopped = False
        if self.ping_interval > 0:
            from twisted.internet import task

            self._loop = task.LoopingCall(self._tick)
            self._loop.clock = self.reactor
            self._loop.start(self.ping_interval, now=True).addErrback(
                lambda f: log.failure("relay ping loop stopped", f))
        else:
            self._tick()  # still learn at start-up which relays are there

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for relay in self._relays:
            if relay.recheck is not None and relay.recheck.active():
                relay.recheck.cancel()
            relay.recheck = None
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if p.timer is not None and p.timer.active():
                p.timer.cancel()
            p.deferred.errback(NoAnswer("relay client stopped"))
        for connector, _factory in list(self._streams):
            connector.disconnect()
        sockets, self._sockets = self._sockets, {}
        return gatherResults([maybeDeferred(port.stopListening) for port in sockets.values()])

    # -- public commands ---------------------------------------------------------

    def offer(self, call_id: str, from_tag: str, to_tag: str | None, address: str,
              port: int | str, *, modifiers: str = "",
              media_index: int | None = 1) -> Deferred[tuple[str | None, int]]:
        """U: the relay's (address, port) for the stream whose SDP this is.
        The address is None only for a unix-socket relay that named none: use
        the address the SIP message arrived on then."""
        call_id = encode_call_id(call_id)
        ftag, ttag = _tag(from_tag, media_index), _opt_tag(to_tag, media_index)

        def build(cookie: str) -> bytes:
            return rc.build_update(cookie, call_id, address, port, ftag, ttag,
                                   modifiers=modifiers)

        return self._run(self._update("U", call_id, build))

    def answer(self, call_id: str, from_tag: str, to_tag: str | None, address: str,
               port: int | str, *, modifiers: str = "",
               media_index: int | None = 1) -> Deferred[tuple[str | None, int]]:
        """L: as offer, for the answer; a relay without the session answers
        port 0, raised as RelayError(ErrorCode.SESUNKN)."""
        call_id = encode_call_id(call_id)
        ftag, ttag = _tag(from_tag, media_index), _opt_tag(to_tag, media_index)

        def build(cookie: str) -> bytes:
            return rc.build_lookup(cookie, call_id, address, port, ftag, ttag,
                                   modifiers=modifiers)

        return self._run(self._update("L", call_id, build))

    def delete(self, call_id: str, from_tag: str, to_tag: str | None = None) -> Deferred[bool]:
        """D (plain tags: every media stream of the call).  True when deleted,
        False when the relay had no such session (E50: a call that never got
        an offer, or one the relay already timed out); other E-codes raise."""
        return self._run(self._delete(encode_call_id(call_id), encode_id(from_tag),
                                      _opt_tag(to_tag, None)))

    def query(self, call_id: str, from_tag: str, to_tag: str | None = None, *,
              stats: Sequence[str] = (), media_index: int | None = 1) -> Deferred[dict[str, float]]:
        """Q: the session's counters by name (sipsuite.rtpproxy.protocol.DEFAULT_QUERY
        unless ``stats`` names others)."""
        call_id = encode_call_id(call_id)
        ftag, ttag = _tag(from_tag, media_index), _opt_tag(to_tag, media_index)

        def build(cookie: str) -> bytes:
            return rc.build_query(cookie, call_id, ftag, ttag, stats=stats)

        async def run() -> dict[str, float]:
            _relay, reply = await self._for_call(call_id, "Q", build)
            return rc.parse_query_reply(reply.body, tuple(stats) or rp.DEFAULT_QUERY)

        return self._run(run())

    def version(self, relay: str) -> Deferred[str]:
        """V to the relay with this URI, up or down: its reply (``20040107``)."""
        target = self._relay(relay)

        async def run() -> str:
            return (await self._send(target, rc.build_version)).body

        return self._run(run())

    def check(self, relay: str) -> Deferred[bool]:
        """Run the V/VF check on one relay now; it is up afterwards iff True."""
        return self._run(self._check(self._relay(relay)))

    def candidates(self, call_id: str) -> list[str]:
        """The up relays a new call with this Call-ID would try, in order."""
        return [r.uri for r in self._order(call_key(encode_call_id(call_id)))]

    def relay_of(self, call_id: str) -> str | None:
        """The relay this client holds the call on, if any."""
        entry = self._calls.get(self.key_of(call_id))
        return entry[0].uri if entry is not None else None

    @staticmethod
    def key_of(call_id: str) -> str:
        """The key a call is held by (what :attr:`forgotten` is told)."""
        return call_key(encode_call_id(call_id))

    @property
    def calls_held(self) -> int:
        """How many calls this client holds on relays now (stats)."""
        return len(self._calls)

    def status(self) -> list[dict[str, Any]]:
        """Per relay, for management: up/down, weight, counters, last error."""
        now = self.reactor.seconds()
        return [{
            "uri": r.uri,
            "weight": r.spec.weight,
            "up": r.up,
            "down_for": 0.0 if r.up or r.down_until is None else max(0.0, r.down_until - now),
            "last_error": r.last_error,
            "sent": r.sent,
            "retransmits": r.retransmits,
            "timeouts": r.timeouts,
            "errors": r.errors,
            "calls": r.calls,
        } for r in self._relays]

    # -- routing of commands -----------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> Deferred[T]:
        return Deferred.fromCoroutine(coro)

    def _relay(self, uri: str) -> RelayState:
        try:
            return self._by_uri[uri]
        except KeyError:
            raise ValueError(f"no relay {uri!r} configured") from None

    async def _update(self, verb: str, call_id: str,
                      build: Callable[[str], bytes]) -> tuple[str | None, int]:
        relay, reply = await self._for_call(call_id, verb, build)
        if reply.port is None or reply.port == 0:
            if verb == "L" and reply.port == 0:
                raise RelayError(rp.ErrorCode.SESUNKN, "no session for this answer", relay.uri)
            raise RelayError(None, f"unusable {verb} reply {reply.body!r}", relay.uri)
        return reply.address or relay.media_host, reply.port

    async def _delete(self, call_id: str, from_tag: str, to_tag: str | None) -> bool:
        def build(cookie: str) -> bytes:
            return rc.build_delete(cookie, call_id, from_tag, to_tag)

        why = "failed"
        try:
            await self._for_call(call_id, "D", build)
            why = "deleted"
        except RelayError as e:
            if e.code == rp.ErrorCode.SESUNKN:
                why = "gone"
                return False
            raise
        finally:
            # Whatever the outcome the proxy is done with the call; the relay
            # ends a session it still holds on its media timeout.
            self._forget(call_key(call_id), why)
        return True

    async def _for_call(self, call_id: str, verb: str,
                        build: Callable[[str], bytes]) -> tuple[RelayState, rc.Reply]:
        if self._stopped:
            raise RelayUnavailable("relay client stopped")
        key = call_key(call_id)
        now = self.reactor.seconds()
        entry = self._calls.get(key)
        if entry is not None and now - entry[1] > self.call_idle_time:
            self._forget(key, "idle")
            entry = None
        if entry is not None:
            relay = entry[0]
            self._calls[key] = (relay, now)
            self._calls.move_to_end(key)
            if not relay.up:
                log.warn("call {call_id}: its relay {relay} is down, {verb} not sent",
                         call_id=call_id, relay=relay.uri, verb=verb)
                raise RelayUnavailable(f"relay {relay.uri} of call {call_id} is down")
            return relay, await self._send(relay, build)
        order = self._order(key)
        if not order:
            raise RelayUnavailable("no relay is up (with a weight above 0)")
        failure: Exception | None = None
        for relay in order:
            if not relay.up:  # went down while an earlier try waited
                continue
            try:
                reply = await self._send(relay, build)
            except RelayUnavailable as e:
                failure = e
                continue
            except RelayError as e:
                if e.code in _CAPACITY_CODES:
                    failure = e
                    continue
                raise
            if verb != "D":
                self._remember(key, relay, now)
            return relay, reply
        if isinstance(failure, RelayError):
            raise failure
        raise RelayUnavailable(f"no relay answered {verb}: {failure}")

    def _order(self, key: str) -> list[RelayState]:
        data = key.encode("utf-8", "surrogateescape")
        scored: list[tuple[float, RelayState]] = []
        for relay in self._relays:
            if not relay.up or relay.spec.weight <= 0:
                continue
            digest = hashlib.blake2b(relay.hash_prefix + data, digest_size=8).digest()
            # 53 bits -> a float strictly inside (0, 1), so log() is finite and < 0.
            h = ((int.from_bytes(digest, "big") >> 11) + 0.5) / 2.0**53
            scored.append((relay.spec.weight / -math.log(h), relay))
        scored.sort(key=lambda item: item[0], reverse=True)
        return [relay for _score, relay in scored]

    def _remember(self, key: str, relay: RelayState, now: float) -> None:
        old = self._calls.get(key)
        if old is None:
            relay.calls += 1
            while len(self._calls) >= self.max_calls:
                gone, (evicted, _t) = self._calls.popitem(last=False)
                evicted.calls -= 1
                if self.forgotten is not None:
                    self.forgotten(gone, "evicted")
        self._calls[key] = (relay, now)
        self._calls.move_to_end(key)

    def _forget(self, key: str, why: str) -> None:
        entry = self._calls.pop(key, None)
        if entry is not None:
            entry[0].calls -= 1
            if self.forgotten is not None:
                self.forgotten(key, why)

    def _purge_idle(self) -> None:
        limit = self.reactor.seconds() - self.call_idle_time
        while self._calls:
            key, (_relay, last) = next(iter(self._calls.items()))
            if last >= limit:
                break
            self._forget(key, "idle")

    # -- one command to one relay ------------------------------------------------

    def _next_cookie(self) -> str:
        return f"{self._pid}_{next(self._counter)}"

    async def _send(self, relay: RelayState, build: Callable[[str], bytes]) -> rc.Reply:
        if self._stopped:
            raise RelayUnavailable("relay client stopped")
        cookie = "" if relay.stream else self._next_cookie()
        try:
            data = build(cookie)
        except ValueError as e:  # UnicodeError included
            # Identifiers are encoded, so only a caller's odd argument (an SDP
            # address or port that is not one token) gets here: the call goes
            # on unrelayed, like any other refusal, instead of failing routing.
            raise RelayError(None, f"cannot build the command: {e}", relay.uri) from None
        relay.sent += 1
        tap = self.tap
        if tap is None:
            return await self._exchange(relay, cookie, data)
        command = data[len(cookie) + 1:] if cookie else data
        try:
            reply = await self._exchange(relay, cookie, data)
        except (RelayUnavailable, RelayError) as e:
            tap(relay.uri, command, f"failed: {e}")
            raise
        tap(relay.uri, command, reply.body)
        return reply

    async def _exchange(self, relay: RelayState, cookie: str, data: bytes) -> rc.Reply:
        try:
            if relay.stream:
                reply = rc.parse_reply(await self._exchange_stream(relay, data), datagram=False)
            else:
                reply = await self._exchange_datagram(relay, cookie, data)
        except NoAnswer as e:
            if self._stopped:
                raise RelayUnavailable("relay client stopped") from None
            relay.timeouts += 1
            self._mark_down(relay, str(e))
            raise RelayUnavailable(f"relay {relay.uri}: {e}") from None
        if reply.error is not None:
            relay.errors += 1
            verb = data.split(None, 2)[1 if cookie else 0].decode("latin-1")
            relay.last_error = f"E{reply.error} to {verb}"
            raise RelayError(reply.error, f"answered E{reply.error}", relay.uri)
        return reply

    def _socket_for(self, relay: RelayState) -> Any:
        family = relay.address.family
        port = self._sockets.get(family)
        if port is None:
            # Wildcard bind: the kernel picks the source address per relay;
            # replies from anyone but the relay are dropped by sent_from().
            interface = "::" if family == socket.AF_INET6 else "0.0.0.0"
            port = self.reactor.listenUDP(0, ControlSocket(self), interface=interface)
            self._sockets[family] = port
        return port

    def _exchange_datagram(self, relay: RelayState, cookie: str, data: bytes) -> Deferred[rc.Reply]:
        port = self._socket_for(relay)
        now = self.reactor.seconds()

        def cancel(_: Deferred[rc.Reply]) -> None:
            p = self._pending.pop(cookie, None)
            if p is not None and p.timer is not None and p.timer.active():
                p.timer.cancel()

        d: Deferred[rc.Reply] = Deferred(cancel)
        pending = PendingCommand(relay, data, d, now + self.command_timeout)
        self._pending[cookie] = pending
        self._transmit(port, pending)
        pending.timer = self.reactor.callLater(
            min(self.retransmit_interval, self.command_timeout), self._retransmit, cookie)
        return d

    def _transmit(self, port: Any, pending: PendingCommand) -> None:
        addr = pending.relay.address
        try:
            port.write(pending.data, (addr.host, addr.port))
        except OSError as e:
            # No route, buffer full...: like a lost datagram, the next
            # retransmission or the timeout settles it.
            log.debug("relay {relay}: send failed: {error}", relay=pending.relay.uri, error=e)

    def _retransmit(self, cookie: str) -> None:
        pending = self._pending.get(cookie)
        if pending is None:
            return
        remaining = pending.deadline - self.reactor.seconds()
        if remaining <= _EPSILON:
            del self._pending[cookie]
            pending.deferred.errback(
                NoAnswer(f"no reply within {self.command_timeout:g}s"))
            return
        port = self._sockets.get(pending.relay.address.family)
        if port is not None:
            pending.relay.retransmits += 1
            self._transmit(port, pending)
        pending.timer = self.reactor.callLater(
            min(self.retransmit_interval, remaining), self._retransmit, cookie)

    def _datagram(self, data: bytes, addr: Any) -> None:
        reply = rc.parse_reply(data)
        pending = self._pending.get(reply.cookie)
        if pending is None or not pending.relay.sent_from(addr):
            self.stray_replies += 1
            return
        del self._pending[reply.cookie]
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.deferred.callback(reply)

    def _exchange_stream(self, relay: RelayState, data: bytes) -> Deferred[bytes]:
        done: Deferred[bytes] = Deferred()
        factory = StreamFactory(data, done)
        timeout = max(1, math.ceil(self.command_timeout))
        address = relay.address
        if address.scheme == "tls":
            connector = self.reactor.connectTCP(
                address.host, address.port, self.tls.client_factory(factory, address.host),
                timeout=timeout)
        else:
            connector = self.reactor.connectUNIX(address.path, factory, timeout=timeout)
        entry = (connector, factory)
        self._streams.add(entry)

        def expire() -> None:
            if done.called:
                return
            done.errback(NoAnswer(f"no reply within {self.command_timeout:g}s"))
            exchange = factory.exchange
            if exchange is not None and exchange.transport is not None:
                exchange.transport.abortConnection()
            else:
                connector.stopConnecting()

        timer = self.reactor.callLater(self.command_timeout, expire)

        def finished(result: Any) -> Any:
            self._streams.discard(entry)
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(finished)

    # -- relay health ------------------------------------------------------------

    def _tick(self) -> None:
        self._purge_idle()
        for relay in self._relays:
            # Down relays have their own check, disable_time after they failed.
            if relay.up and not relay.checking:
                self._background_check(relay)

    def _background_check(self, relay: RelayState) -> None:
        Deferred.fromCoroutine(self._check(relay)).addErrback(
            lambda f: log.failure("relay {relay}: check failed", f, relay=relay.uri))

    def _recheck(self, relay: RelayState) -> None:
        relay.recheck = None
        if not relay.checking and not self._stopped:
            self._background_check(relay)

    async def _check(self, relay: RelayState) -> bool:
        if relay.checking:
            return relay.up
        relay.checking = True
        try:
            reply = await self._send(relay, rc.build_version)
            if reply.fields[:1] != (rp.BASE_VERSION,):
                self._mark_down(relay, f"V answered {reply.body!r}, not {rp.BASE_VERSION}")
                return False
            if not relay.capable:
                reply = await self._send(
                    relay, lambda cookie: rc.build_capability_check(cookie, REQUIRED_CAPABILITY))
                if reply.number != 1:
                    self._mark_down(relay, f"VF {REQUIRED_CAPABILITY} answered {reply.body!r}")
                    return False
                relay.capable = True
        except RelayUnavailable:
            return False  # _send marked it down
        except RelayError as e:
            self._mark_down(relay, f"check answered E{e.code}")
            return False
        finally:
            relay.checking = False
        self._mark_up(relay)
        return True

    def _mark_down(self, relay: RelayState, reason: str) -> None:
        was_up = relay.up
        relay.up = False
        relay.capable = False
        relay.last_error = reason
        relay.down_until = self.reactor.seconds() + self.disable_time
        if relay.recheck is not None and relay.recheck.active():
            relay.recheck.cancel()
        relay.recheck = None
        if not self._stopped:
            relay.recheck = self.reactor.callLater(self.disable_time, self._recheck, relay)
        if was_up:
            log.warn("relay {relay} is down for {seconds:g}s: {reason}",
                     relay=relay.uri, seconds=self.disable_time, reason=reason)

    def _mark_up(self, relay: RelayState) -> None:
        if relay.recheck is not None and relay.recheck.active():
            relay.recheck.cancel()
        relay.recheck = None
        relay.down_until = None
        if not relay.up:
            relay.up = True
            log.info("relay {relay} is up again", relay=relay.uri)


def _tag(tag: str, media_index: int | None) -> str:
    return rp.media_tag(encode_id(tag), media_index)


def _opt_tag(tag: str | None, media_index: int | None) -> str | None:
    return None if tag is None else _tag(tag, media_index)
