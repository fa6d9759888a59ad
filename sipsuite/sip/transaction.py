"""SIP transactions (RFC 3261 section 17, with the RFC 6026 corrections), sans-IO.

Each transaction is a plain state machine: the adapter feeds it messages and
timer expiries and applies the returned actions (send, arm/disarm a timer,
hand a message to the TU, report a timeout, drop the transaction).  Nothing
here knows about sockets or a reactor, so the machines are tested with a
fake clock and the proxy core can run hundreds of calls/s through them.

Timer values (RFC 3261 table 4, RFC 6026):
    A  T1, doubling (INVITE: no cap)      E  T1, doubling up to T2
    G  T1, doubling up to T2              B = F = H = J = L = M = 64*T1
    D  32 s unreliable / 0 reliable       I = K = T4 unreliable / 0 reliable
    C  proxy INVITE timer (RFC 3261 16.6 step 11), reset by 101-199
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sipsuite.sip.builders import make_ack
from sipsuite.sip.message import Message, Request, Response

__all__ = [
    "MAGIC_COOKIE",
    "Action",
    "Arm",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "Disarm",
    "PassUp",
    "Send",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "Terminated",
    "Timeout",
    "TimerSettings",
    "TxState",
    "Wire",
    "cancel_target_key",
    "client_key",
    "local_tag",
    "new_branch",
    "server_key",
]

MAGIC_COOKIE = "z9hG4bK"
_COOKIE_LEN = len(MAGIC_COOKIE)
# RFC 3261 17.1.1.2: D must cover the longest 2xx-less retransmission window
# of an unreliable INVITE server (64*T1 with the default T1), fixed at 32 s.
_TIMER_D_UNRELIABLE = 32.0


class TxState(StrEnum):
    """RFC 3261 17 transaction states (+ RFC 6026's Accepted).  A StrEnum so a
    state still prints and compares as its lower-case RFC name."""

    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


@dataclass(slots=True)
class TimerSettings:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 180.0


class Wire:
    """A message already serialised: all a finished transaction still has to
    send again (the last answer of a server transaction, the ACK of a client
    INVITE's non-2xx), kept as bytes so the parsed message can go."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_bytes(self) -> bytes:
        return self.data


# --- actions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    msg: Message | Wire


@dataclass(frozen=True, slots=True)
class Arm:
    timer: str
    delay: float


@dataclass(frozen=True, slots=True)
class Disarm:
    timer: str


@dataclass(frozen=True, slots=True)
class PassUp:
    msg: Message


@dataclass(frozen=True, slots=True)
class Timeout:
    timer: str


@dataclass(frozen=True, slots=True)
class Terminated:
    pass


Action = Send | Arm | Disarm | PassUp | Timeout | Terminated

# Immutable and field-less or constant, so shared instead of rebuilt per event.
_TERMINATED = Terminated()
_DISARM_A = Disarm("A")
_DISARM_B = Disarm("B")
_DISARM_C = Disarm("C")
_DISARM_E = Disarm("E")
_DISARM_F = Disarm("F")
_DISARM_G = Disarm("G")
_DISARM_H = Disarm("H")
_TIMEOUT_B = Timeout("B")
_TIMEOUT_C = Timeout("C")
_TIMEOUT_F = Timeout("F")
_TIMEOUT_H = Timeout("H")


def _nothing() -> list[Action]:
    # A fresh list so a caller that appends to a result cannot corrupt others.
    return []


# --- client transactions -------------------------------------------------------


class ClientInviteTransaction:
    """RFC 3261 17.1.1 + RFC 6026 7.2 (Accepted state, timer M).

    With use_timer_c the proxy's timer C (RFC 3261 16.6 step 11) lives here
    too: it is armed at start, re-armed on 101-199 (16.7 step 2) and only
    reported when it fires; the TU decides between CANCEL and a local 408
    (16.8) and may call mark_cancelled().
    """

    __slots__ = (
        "_a_interval",
        "_cancel_at",
        "ack",
        "cancelled",
        "key",
        "reliable",
        "request",
        "state",
        "timers",
        "use_timer_c",
    )

    def __init__(
        self,
        request: Request,
        reliable: bool,
        timers: TimerSettings,
        use_timer_c: bool = False,
        branch: str | None = None,
    ) -> None:
        """``branch``: the top Via's, when the caller just put it there (it
        then need not be parsed back out of the request)."""
        # None once finished (finish()): only 'calling' sends it again.
        self.request: Request | None = request
        self.reliable = reliable
        self.timers = timers
        self.use_timer_c = use_timer_c
        self.state = TxState.CALLING
        self.cancelled = False
        self.key: tuple[str | None, str] = (branch or request.top_via.branch, request.method)
        # Built once for the first non-2xx final; bytes after finish().
        self.ack: Request | Wire | None = None
        self._a_interval = timers.t1
        self._cancel_at = 0.0

    def start(self, now: float) -> list[Action]:
        t = self.timers
        assert self.request is not None, "started after finish()"
        out: list[Action] = [Send(self.request)]
        if not self.reliable:
            out.append(Arm("A", t.t1))
        out.append(Arm("B", 64 * t.t1))
        if self.use_timer_c:
            out.append(Arm("C", t.timer_c))
        return out

    def receive(self, response: Response, now: float) -> list[Action]:
        state = self.state
        status = response.status
        if state == TxState.CALLING or state == TxState.PROCEEDING:
            if status < 200:
                out: list[Action] = []
                if state == TxState.CALLING:
                    self.state = TxState.PROCEEDING
                    if not self.reliable:
                        out.append(_DISARM_A)
                    if self.cancelled:
                        # B turns into the mark_cancelled() backstop.
                        left = self._cancel_at + 64 * self.timers.t1 - now
                        out.append(Arm("B", max(0.0, left)))
                    else:
                        out.append(_DISARM_B)
                out.append(PassUp(response))
                if self.use_timer_c and status > 100:
                    out.append(Arm("C", self.timers.timer_c))
                return out
            out = self._leave_pending(state)
            if status < 300:
                # RFC 6026: stay around to pass up 2xx retransmissions and
                # forked 2xx; the TU (not us) ACKs them.
                self.state = TxState.ACCEPTED
                out.append(PassUp(response))
                out.append(Arm("M", 64 * self.timers.t1))
                return out
            self.state = TxState.COMPLETED
            assert self.request is not None  # finish() comes after the final only
            ack = self.ack = make_ack(self.request, response)
            out.append(Send(ack))
            out.append(PassUp(response))
            out.append(Arm("D", 0.0 if self.reliable else _TIMER_D_UNRELIABLE))
            return out
        if state == TxState.ACCEPTED:
            if 200 <= status < 300:
                return [PassUp(response)]
            return _nothing()
        if state == TxState.COMPLETED and status >= 300 and self.ack is not None:
            # Our ACK was lost: the retransmitted final is absorbed, not passed up.
            return [Send(self.ack)]
        return _nothing()

    def _leave_pending(self, state: TxState) -> list[Action]:
        out: list[Action] = []
        if state == TxState.CALLING:
            if not self.reliable:
                out.append(_DISARM_A)
            out.append(_DISARM_B)
        elif self.cancelled:
            out.append(_DISARM_B)  # the mark_cancelled() backstop
        if self.use_timer_c:
            out.append(_DISARM_C)
        return out

    def finish(self) -> None:
        """Keep only what the rest of its life needs, once the final answer
        came: the ACK to repeat on a retransmitted non-2xx, as bytes.  (The
        proxy calls it; the state machine itself never needs it.)"""
        if self.state in (TxState.CALLING, TxState.PROCEEDING):
            return
        self.request = None
        if isinstance(self.ack, Request):
            self.ack = Wire(self.ack.to_bytes())

    def mark_cancelled(self, now: float) -> list[Action]:
        """The TU sent a CANCEL for this INVITE.

        RFC 3261 9.1: if no final response arrives within 64*T1 of the
        CANCEL the INVITE transaction is given up.  Past 'calling' timer B
        is no longer running, so it is re-armed as that backstop; its expiry
        is reported as Timeout('B') like a plain no-answer.  (In 'calling'
        the running B fires sooner anyway; a later 1xx re-arms it.)
        """
        if self.cancelled:
            return _nothing()
        self.cancelled = True
        self._cancel_at = now
        if self.state == TxState.PROCEEDING:
            return [Arm("B", 64 * self.timers.t1)]
        return _nothing()

    def timer(self, name: str, now: float) -> list[Action]:
        state = self.state
        if name == "A":
            if state != TxState.CALLING:
                return _nothing()
            # RFC 3261 17.1.1.2: INVITE retransmissions double without a T2 cap.
            self._a_interval *= 2
            assert self.request is not None  # still 'calling': not finished
            return [Send(self.request), Arm("A", self._a_interval)]
        if name == "B":
            if state == TxState.CALLING or (state == TxState.PROCEEDING and self.cancelled):
                self.state = TxState.TERMINATED
                return [_TIMEOUT_B, _TERMINATED]
            return _nothing()
        if name == "C":
            if state == TxState.CALLING or state == TxState.PROCEEDING:
                return [_TIMEOUT_C]
            return _nothing()
        if (name == "D" and state == TxState.COMPLETED) or (name == "M" and state == TxState.ACCEPTED):
            self.state = TxState.TERMINATED
            return [_TERMINATED]
        return _nothing()


class ClientNonInviteTransaction:
    """RFC 3261 17.1.2: timers E, F, K."""

    __slots__ = ("_e_interval", "key", "reliable", "request", "state", "timers")

    def __init__(self, request: Request, reliable: bool, timers: TimerSettings,
                 branch: str | None = None) -> None:
        """``branch``: as ClientInviteTransaction's."""
        # None once finished (finish()): only 'trying'/'proceeding' send it again.
        self.request: Request | None = request
        self.reliable = reliable
        self.timers = timers
        self.state = TxState.TRYING
        self.key: tuple[str | None, str] = (branch or request.top_via.branch, request.method)
        self._e_interval = timers.t1

    def start(self, now: float) -> list[Action]:
        t = self.timers
        assert self.request is not None, "started after finish()"
        if self.reliable:
            return [Send(self.request), Arm("F", 64 * t.t1)]
        return [Send(self.request), Arm("E", t.t1), Arm("F", 64 * t.t1)]

    def receive(self, response: Response, now: float) -> list[Action]:
        state = self.state
        if state != TxState.TRYING and state != TxState.PROCEEDING:
            return _nothing()  # retransmitted finals in 'completed' are absorbed
        if response.status < 200:
            self.state = TxState.PROCEEDING
            return [PassUp(response)]
        self.state = TxState.COMPLETED
        out: list[Action] = [PassUp(response), _DISARM_F]
        if self.reliable:
            out.append(Arm("K", 0.0))
        else:
            out.append(_DISARM_E)
            out.append(Arm("K", self.timers.t4))
        return out

    def timer(self, name: str, now: float) -> list[Action]:
        state = self.state
        if name == "E":
            if state == TxState.TRYING:
                iv = self._e_interval = min(2 * self._e_interval, self.timers.t2)
            elif state == TxState.PROCEEDING:
                # 17.1.2.2: once a provisional arrived, retransmit every T2.
                iv = self._e_interval = self.timers.t2
            else:
                return _nothing()
            assert self.request is not None  # not finished yet
            return [Send(self.request), Arm("E", iv)]
        if name == "F":
            if state == TxState.TRYING or state == TxState.PROCEEDING:
                self.state = TxState.TERMINATED
                return [_TIMEOUT_F, _TERMINATED]
            return _nothing()
        if name == "K" and state == TxState.COMPLETED:
            self.state = TxState.TERMINATED
            return [_TERMINATED]
        return _nothing()

    def finish(self) -> None:
        """Once the final answer came, timer K only absorbs retransmitted
        finals: the request can go."""
        if self.state != TxState.TRYING and self.state != TxState.PROCEEDING:
            self.request = None


# --- server transactions -------------------------------------------------------


class ServerInviteTransaction:
    """RFC 3261 17.2.1 + RFC 6026 7.1 (Accepted state, timer L).

    States: proceeding, accepted, completed, confirmed, terminated.  The
    100 Trying is the TU's to send (via send()), as is every other response.
    """

    __slots__ = (
        "_g_interval",
        "last_response",
        "reliable",
        "request",
        "state",
        "timers",
    )

    def __init__(self, request: Request, reliable: bool, timers: TimerSettings) -> None:
        # None once finished (finish()): nothing here reads it; the TU may.
        self.request: Request | None = request
        self.reliable = reliable
        self.timers = timers
        self.state = TxState.PROCEEDING
        self.last_response: Response | Wire | None = None
        self._g_interval = timers.t1

    def finish(self, data: bytes | None = None) -> None:
        """Once the final went out, keep in 'completed' the answer to repeat
        (retransmitted INVITE, timer G) as bytes (``data``: as sent); in
        'accepted' and later nothing (the 2xx is the TU's to repeat)."""
        state = self.state
        if state == TxState.PROCEEDING:
            return
        self.request = None
        last = self.last_response
        if state == TxState.COMPLETED and last is not None:
            if not isinstance(last, Wire):
                self.last_response = Wire(data if data is not None else last.to_bytes())
        else:
            self.last_response = None

    def receive(self, request: Request, now: float) -> list[Action]:
        state = self.state
        if request.method == "ACK":
            if state == TxState.COMPLETED:
                # The ACK for our non-2xx final: absorbed, it never goes to the TU.
                self.state = TxState.CONFIRMED
                out: list[Action] = [_DISARM_H]
                if self.reliable:
                    out.append(Arm("I", 0.0))
                else:
                    out.append(_DISARM_G)
                    out.append(Arm("I", self.timers.t4))
                return out
            if state == TxState.ACCEPTED:
                # RFC 6026 fig. 5: an ACK matching in Accepted (2xx ACK that
                # hit the RFC 2543 key) goes to the TU to be forwarded.
                return [PassUp(request)]
            return _nothing()
        # A retransmitted INVITE.  In 'accepted' it is absorbed silently
        # (RFC 6026 7.1): the 2xx is retransmitted end-to-end, not by us.
        if (state == TxState.PROCEEDING or state == TxState.COMPLETED) and self.last_response is not None:
            return [Send(self.last_response)]
        return _nothing()

    def send(self, response: Response, now: float) -> list[Action]:
        state = self.state
        status = response.status
        if state == TxState.PROCEEDING:
            self.last_response = response
            if status < 200:
                return [Send(response)]
            t = self.timers
            if status < 300:
                self.state = TxState.ACCEPTED
                return [Send(response), Arm("L", 64 * t.t1)]
            self.state = TxState.COMPLETED
            if self.reliable:
                return [Send(response), Arm("H", 64 * t.t1)]
            return [Send(response), Arm("G", t.t1), Arm("H", 64 * t.t1)]
        if state == TxState.ACCEPTED and 200 <= status < 300:
            # Retransmitted or forked 2xx coming up through the proxy.
            return [Send(response)]
        return _nothing()

    def timer(self, name: str, now: float) -> list[Action]:
        state = self.state
        if name == "G":
            if state != TxState.COMPLETED or self.last_response is None:
                return _nothing()
            iv = self._g_interval = min(2 * self._g_interval, self.timers.t2)
            return [Send(self.last_response), Arm("G", iv)]
        if name == "H":
            if state == TxState.COMPLETED:
                self.state = TxState.TERMINATED
                return [_TIMEOUT_H, _TERMINATED]
            return _nothing()
        if (name == "I" and state == TxState.CONFIRMED) or (name == "L" and state == TxState.ACCEPTED):
            self.state = TxState.TERMINATED
            return [_TERMINATED]
        return _nothing()


class ServerNonInviteTransaction:
    """RFC 3261 17.2.2: trying, proceeding, completed (timer J), terminated."""

    __slots__ = ("last_response", "reliable", "request", "state", "timers")

    def __init__(self, request: Request, reliable: bool, timers: TimerSettings) -> None:
        # None once finished (finish()): nothing here reads it; the TU may.
        self.request: Request | None = request
        self.reliable = reliable
        self.timers = timers
        self.state = TxState.TRYING
        self.last_response: Response | Wire | None = None

    def finish(self, data: bytes | None = None) -> None:
        """Once the final answer went out, timer J only repeats it: keep it
        as bytes (``data``: as it was sent) and let the messages go."""
        if self.state != TxState.COMPLETED:
            return
        self.request = None
        last = self.last_response
        if last is not None and not isinstance(last, Wire):
            self.last_response = Wire(data if data is not None else last.to_bytes())

    def receive(self, request: Request, now: float) -> list[Action]:
        # In 'trying' there is nothing to repeat yet: the retransmission is
        # simply absorbed (17.2.2).
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED) and self.last_response is not None:
            return [Send(self.last_response)]
        return _nothing()

    def send(self, response: Response, now: float) -> list[Action]:
        state = self.state
        if state != TxState.TRYING and state != TxState.PROCEEDING:
            return _nothing()
        self.last_response = response
        if response.status < 200:
            self.state = TxState.PROCEEDING
            return [Send(response)]
        self.state = TxState.COMPLETED
        return [Send(response), Arm("J", 0.0 if self.reliable else 64 * self.timers.t1)]

    def timer(self, name: str, now: float) -> list[Action]:
        if name == "J" and self.state == TxState.COMPLETED:
            self.state = TxState.TERMINATED
            return [_TERMINATED]
        return _nothing()


# --- matching ------------------------------------------------------------------


def server_key(req: Request) -> tuple:
    """RFC 3261 17.2.3 key of the server transaction req belongs to.

    An ACK maps onto its INVITE's key; a CANCEL keeps its own method (it is a
    transaction of its own), see cancel_target_key() for the INVITE it hits.
    """
    method = req.method
    if method == "ACK":
        method = "INVITE"
    return _server_key(req, method)


def cancel_target_key(cancel: Request) -> tuple:
    """The server_key() of the INVITE a CANCEL refers to (RFC 3261 9.2)."""
    return _server_key(cancel, "INVITE")


def _server_key(req: Request, method: str) -> tuple:
    via = req.top_via
    branch = via.branch
    if branch is not None and len(branch) > _COOKIE_LEN and branch.startswith(MAGIC_COOKIE):
        # sent-by is part of the key so that two clients picking the same
        # branch cannot hit each other's transactions; hosts are
        # case-insensitive.
        return (branch, via.sent_by().lower(), method)
    # RFC 2543 peers: no unique branch, match on the dialog-ish fields of
    # 17.2.3.  The ACK's To tag check is not part of the key: an ACK
    # matching here in 'accepted' is passed up to the TU (see
    # ServerInviteTransaction.receive).
    return (str(req.uri), req.from_tag, req.call_id, req.cseq.number, str(via), method)


#: Every local_tag() starts with it: a To tag without it (a callee's) needs no hash.
LOCAL_TAG_PREFIX = "sps"


def local_tag(secret: bytes, key: tuple, req: Request) -> str:
    """The To tag of an answer we make ourselves to ``req`` (RFC 3261 8.2.6.2,
    19.3), ``key`` being its server_key() as received.

    A keyed hash of what identifies the transaction, as Kamailio's sl module
    derives its tags: a retransmission gets the same tag, as do the ACK and
    the CANCEL of an INVITE (9.2: a CANCEL's answer SHOULD carry the INVITE
    answer's tag), so an ACK to our own answer can be told by its tag alone;
    other requests get other tags, which nobody without ``secret`` can
    predict.  The key, not ``req``, supplies the RFC 2543 fields because the
    routing may have rewritten the Request-URI since.
    """
    # The key (an ACK's is its INVITE's; a CANCEL counts as its INVITE too),
    # with the fields that tell transactions of one sender apart even if its
    # branches are not unique.
    method = "INVITE" if key[-1] == "CANCEL" else key[-1]
    fields = (*key[:-1], method, req.call_id, req.from_tag or "", str(req.cseq.number))
    digest = hashlib.blake2b(key=secret, digest_size=8)
    for field in fields:
        data = str(field).encode("utf-8", "surrogateescape")
        digest.update(len(data).to_bytes(4, "big"))  # length-prefixed: no ambiguity
        digest.update(data)
    return LOCAL_TAG_PREFIX + digest.hexdigest()


def client_key(resp: Response) -> tuple:
    """RFC 3261 17.1.3: (top Via branch, CSeq method) of a response."""
    return (resp.top_via.branch, resp.cseq.method)


def new_branch() -> str:
    """A fresh RFC 3261 branch: magic cookie + 80 random bits.

    Random rather than a counter so that an off-path attacker cannot guess
    the key of a pending client transaction and inject responses.
    """
    return MAGIC_COOKIE + secrets.token_hex(10)
