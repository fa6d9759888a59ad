"""RFC 3261 section 17 / RFC 6026 transaction state machines, driven by a fake clock."""

from __future__ import annotations

import dataclasses
import re

import pytest

from sipsuite.sip.message import Request, Response
from sipsuite.sip.parser import parse_datagram
from sipsuite.sip.transaction import (
    Arm,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Disarm,
    PassUp,
    Send,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    Timeout,
    TimerSettings,
    cancel_target_key,
    client_key,
    local_tag,
    new_branch,
    server_key,
)

BRANCH = "z9hG4bK776asdhds"
VIA = f"SIP/2.0/UDP pc33.atlanta.example.com:5060;branch={BRANCH}"


def _msg(start: str, headers: list[str]) -> bytes:
    return (start + "\r\n" + "\r\n".join(headers) + "\r\n\r\n").encode()


def request(
    method: str = "INVITE",
    *,
    via: str = VIA,
    cseq: int = 314159,
    cseq_method: str | None = None,
    uri: str = "sip:bob@biloxi.example.com",
    to_tag: str | None = None,
) -> Request:
    to = "Bob <sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    data = _msg(
        f"{method} {uri} SIP/2.0",
        [
            f"Via: {via}",
            "Max-Forwards: 70",
            "To: " + to,
            "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
            "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
            f"CSeq: {cseq} {cseq_method or method}",
            "Contact: <sip:alice@pc33.atlanta.example.com>",
            "Content-Length: 0",
        ],
    )
    msg = parse_datagram(data)
    assert isinstance(msg, Request)
    return msg


def response(
    status: int,
    *,
    method: str = "INVITE",
    to_tag: str | None = "a6c85cf",
    via: str = VIA,
    cseq: int = 314159,
) -> Response:
    to = "Bob <sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    data = _msg(
        f"SIP/2.0 {status} Whatever",
        [
            f"Via: {via}",
            "To: " + to,
            "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
            "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
            f"CSeq: {cseq} {method}",
            "Content-Length: 0",
        ],
    )
    msg = parse_datagram(data)
    assert isinstance(msg, Response)
    return msg


class Driver:
    """Applies a transaction's actions against a fake clock.

    Timers fire strictly in time order (ties in arming order), each one
    calling tx.timer(name, due_time), exactly like the Twisted adapter's
    callLater would.
    """

    def __init__(self, tx) -> None:
        self.tx = tx
        self.now = 0.0
        self.due: dict[str, tuple[float, int]] = {}
        self._seq = 0
        self.sent: list[tuple[float, object]] = []
        self.up: list[object] = []
        self.timeouts: list[tuple[float, str]] = []
        self.arms: list[tuple[float, str, float]] = []
        self.terminated_at: float | None = None

    def apply(self, actions) -> list:
        assert isinstance(actions, list)
        for a in actions:
            assert self.terminated_at is None, f"{a} after Terminated"
            if isinstance(a, Arm):
                assert a.delay >= 0.0
                self._seq += 1
                self.due[a.timer] = (self.now + a.delay, self._seq)
                self.arms.append((self.now, a.timer, a.delay))
            elif isinstance(a, Disarm):
                self.due.pop(a.timer, None)
            elif isinstance(a, Send):
                self.sent.append((self.now, a.msg))
            elif isinstance(a, PassUp):
                self.up.append(a.msg)
            elif isinstance(a, Timeout):
                self.timeouts.append((self.now, a.timer))
            elif isinstance(a, Terminated):
                self.terminated_at = self.now
                self.due.clear()  # the adapter cancels everything
            else:
                raise TypeError(f"unknown action {a!r}")
        return actions

    def start(self) -> list:
        return self.apply(self.tx.start(self.now))

    def receive(self, msg) -> list:
        return self.apply(self.tx.receive(msg, self.now))

    def send(self, msg) -> list:
        return self.apply(self.tx.send(msg, self.now))

    def run_until(self, t: float) -> None:
        while self.due:
            name, (when, _) = min(self.due.items(), key=lambda kv: kv[1])
            if when > t:
                break
            del self.due[name]
            self.now = when
            self.apply(self.tx.timer(name, when))
        self.now = max(self.now, t)

    def arm_delays(self, timer: str) -> list[float]:
        return [d for _, n, d in self.arms if n == timer]

    def send_times(self) -> list[float]:
        return [t for t, _ in self.sent]


T = TimerSettings()


# --- client INVITE -----------------------------------------------------------------


def test_client_invite_timer_a_doubles_without_cap_until_b() -> None:
    inv = request()
    d = Driver(ClientInviteTransaction(inv, False, T))
    d.start()
    assert d.tx.state == "calling"
    d.run_until(100.0)
    # RFC 3261 17.1.1.2: A is not capped by T2 for INVITE.
    assert d.arm_delays("A") == [0.5, 1, 2, 4, 8, 16, 32]
    assert d.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(m is inv for _, m in d.sent)
    assert d.timeouts == [(32.0, "B")]
    assert d.terminated_at == 32.0
    assert d.tx.state == "terminated"
    assert d.up == []


def test_client_invite_reliable_has_no_timer_a() -> None:
    d = Driver(ClientInviteTransaction(request(), True, T))
    actions = d.start()
    assert [type(a) for a in actions] == [Send, Arm]
    d.run_until(100.0)
    assert d.send_times() == [0.0]
    assert d.arm_delays("A") == []
    assert d.timeouts == [(32.0, "B")]


def test_client_invite_custom_t1_scales_a_and_b() -> None:
    d = Driver(ClientInviteTransaction(request(), False, TimerSettings(t1=0.1)))
    d.start()
    d.run_until(100.0)
    assert d.arm_delays("A")[:3] == pytest.approx([0.1, 0.2, 0.4])
    assert d.timeouts == [(pytest.approx(6.4), "B")]


def test_client_invite_provisional_stops_a_and_b() -> None:
    d = Driver(ClientInviteTransaction(request(), False, T))
    d.start()
    d.run_until(0.7)  # one retransmission at 0.5
    r180 = response(180)
    actions = d.receive(r180)
    assert d.tx.state == "proceeding"
    assert Disarm("A") in actions and Disarm("B") in actions
    assert d.up == [r180]
    r183 = response(183)
    d.receive(r183)
    assert d.up == [r180, r183]
    d.run_until(1000.0)
    assert d.send_times() == [0.0, 0.5]
    assert d.timeouts == [] and d.terminated_at is None


def test_client_invite_non_2xx_builds_ack_and_resends_it() -> None:
    inv = request()
    d = Driver(ClientInviteTransaction(inv, False, T))
    d.start()
    r100 = response(100, to_tag=None)
    d.receive(r100)
    d.run_until(2.0)
    r486 = response(486)
    d.receive(r486)
    assert d.tx.state == "completed"
    assert d.up == [r100, r486]
    (t0, ack) = d.sent[-1]
    assert t0 == 2.0 and isinstance(ack, Request)
    # 17.1.1.3: same R-URI, top Via, From, Call-ID, CSeq number; To of the response.
    assert ack.method == "ACK"
    assert str(ack.uri) == str(inv.uri)
    assert ack.top_via.branch == BRANCH
    assert len(ack.vias) == 1
    assert ack.cseq.number == 314159 and ack.cseq.method == "ACK"
    assert ack.to_tag == "a6c85cf"
    assert ack.from_tag == "1928301774"
    assert ack.call_id == inv.call_id
    # A retransmitted final is absorbed: ACK again, nothing to the TU.
    d.run_until(3.0)
    actions = d.receive(response(486))
    assert actions == [Send(ack)]
    assert len(d.up) == 2
    # Late provisionals and 2xx are dropped in 'completed'.
    assert d.receive(response(180)) == []
    assert d.receive(response(200)) == []
    d.run_until(100.0)
    assert d.terminated_at == 2.0 + 32.0  # timer D, unreliable
    assert d.timeouts == []


def test_client_invite_reliable_timer_d_is_zero() -> None:
    d = Driver(ClientInviteTransaction(request(), True, T))
    d.start()
    d.run_until(1.0)
    d.receive(response(603))
    assert d.arm_delays("D") == [0.0]
    d.run_until(1.0)
    assert d.terminated_at == 1.0


def test_client_invite_2xx_accepted_passes_every_2xx() -> None:
    d = Driver(ClientInviteTransaction(request(), False, T))
    d.start()
    d.run_until(1.0)
    ok1 = response(200, to_tag="fork1")
    d.receive(ok1)
    assert d.tx.state == "accepted"
    assert d.tx.ack is None
    # The transaction never ACKs a 2xx itself.
    assert d.send_times() == [0.0, 0.5]
    ok1_again = response(200, to_tag="fork1")
    ok2 = response(200, to_tag="fork2")
    d.run_until(2.0)
    assert d.receive(ok1_again) == [PassUp(ok1_again)]
    assert d.receive(ok2) == [PassUp(ok2)]
    assert d.receive(response(180)) == []
    assert d.receive(response(486)) == []
    assert d.up == [ok1, ok1_again, ok2]
    assert len(d.sent) == 2
    d.run_until(1000.0)
    assert d.terminated_at == 1.0 + 32.0  # timer M = 64*T1
    assert d.timeouts == []


def test_client_invite_reliable_still_uses_timer_m() -> None:
    d = Driver(ClientInviteTransaction(request(), True, T))
    d.start()
    d.receive(response(200))
    assert d.arm_delays("M") == [32.0]


def test_timer_c_fires_and_is_reset_by_provisional() -> None:
    d = Driver(ClientInviteTransaction(request(), False, T, use_timer_c=True))
    d.start()
    assert d.arm_delays("C") == [180.0]
    d.run_until(0.2)
    d.receive(response(100))  # 100 does not reset C (16.7 step 2)
    d.run_until(50.0)
    d.receive(response(180))  # resets C to 50 + 180
    d.run_until(229.0)
    assert d.timeouts == []
    d.run_until(231.0)
    assert d.timeouts == [(230.0, "C")]
    # The TU decides what to do; the transaction keeps waiting for a final.
    assert d.tx.state == "proceeding" and d.terminated_at is None


def test_timer_c_shorter_than_b_fires_in_calling() -> None:
    d = Driver(ClientInviteTransaction(request(), False, TimerSettings(timer_c=10.0), True))
    d.start()
    d.run_until(11.0)
    assert d.timeouts == [(10.0, "C")]
    assert d.tx.state == "calling"  # B (32 s) still runs


def test_timer_c_100_does_not_reset() -> None:
    d = Driver(ClientInviteTransaction(request(), True, T, use_timer_c=True))
    d.start()
    d.run_until(10.0)
    d.receive(response(100, to_tag=None))
    d.run_until(500.0)
    assert d.timeouts == [(180.0, "C")]


def test_timer_c_disarmed_by_final() -> None:
    d = Driver(ClientInviteTransaction(request(), False, T, use_timer_c=True))
    d.start()
    d.receive(response(180))
    d.run_until(10.0)
    actions = d.receive(response(200))
    assert Disarm("C") in actions
    d.run_until(1000.0)
    assert d.timeouts == []
    assert d.terminated_at == 42.0


def test_cancelled_invite_gives_up_64t1_after_cancel() -> None:
    d = Driver(ClientInviteTransaction(request(), False, T, use_timer_c=True))
    d.start()
    d.run_until(1.0)
    d.receive(response(180))
    d.run_until(181.0)
    assert d.timeouts == [(181.0, "C")]
    # TU sends CANCEL (RFC 3261 16.8) and tells the transaction.
    d.apply(d.tx.mark_cancelled(d.now))
    assert d.tx.cancelled
    assert d.tx.mark_cancelled(d.now) == []  # idempotent
    d.run_until(1000.0)
    assert d.timeouts == [(181.0, "C"), (181.0 + 32.0, "B")]
    assert d.terminated_at == 213.0


def test_cancelled_in_calling_then_provisional_keeps_backstop() -> None:
    d = Driver(ClientInviteTransaction(request(), False, T))
    d.start()
    d.run_until(2.0)
    assert d.apply(d.tx.mark_cancelled(d.now)) == []  # B still runs in calling
    d.run_until(5.0)
    d.receive(response(180))
    d.run_until(1000.0)
    assert d.timeouts == [(34.0, "B")]


def test_cancelled_invite_answered_487() -> None:
    d = Driver(ClientInviteTransaction(request(), False, T))
    d.start()
    d.receive(response(180))
    d.run_until(3.0)
    d.apply(d.tx.mark_cancelled(d.now))
    d.run_until(4.0)
    actions = d.receive(response(487))
    assert Disarm("B") in actions
    d.run_until(1000.0)
    assert d.timeouts == []
    assert d.terminated_at == 36.0


# --- client non-INVITE -------------------------------------------------------------


def test_client_non_invite_timer_e_capped_at_t2_until_f() -> None:
    opt = request("OPTIONS")
    d = Driver(ClientNonInviteTransaction(opt, False, T))
    d.start()
    d.run_until(100.0)
    assert d.arm_delays("E") == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4, 4]
    assert d.send_times() == [
        0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]  # fmt: skip
    assert d.timeouts == [(32.0, "F")]
    assert d.terminated_at == 32.0


def test_client_non_invite_proceeding_retransmits_every_t2() -> None:
    d = Driver(ClientNonInviteTransaction(request("OPTIONS"), False, T))
    d.start()
    d.run_until(0.7)
    r100 = response(100, method="OPTIONS", to_tag=None)
    d.receive(r100)
    assert d.tx.state == "proceeding" and d.up == [r100]
    d.run_until(10.0)
    # E armed at 0.5 for 1 s still fires at 1.5, then every T2.
    assert d.send_times() == [0.0, 0.5, 1.5, 5.5, 9.5]
    d.run_until(10.0)
    ok = response(200, method="OPTIONS")
    d.receive(ok)
    assert d.tx.state == "completed" and d.up == [r100, ok]
    assert d.receive(response(200, method="OPTIONS")) == []  # absorbed
    d.run_until(100.0)
    assert d.terminated_at == 15.0  # K = T4
    assert d.send_times()[-1] == 9.5
    assert d.timeouts == []


def test_client_non_invite_reliable() -> None:
    d = Driver(ClientNonInviteTransaction(request("OPTIONS"), True, T))
    d.start()
    assert d.arm_delays("E") == []
    d.run_until(3.0)
    d.receive(response(404, method="OPTIONS"))
    d.run_until(3.0)
    assert d.terminated_at == 3.0  # K = 0
    assert d.send_times() == [0.0]


def test_client_non_invite_reliable_timeout() -> None:
    d = Driver(ClientNonInviteTransaction(request("OPTIONS"), True, T))
    d.start()
    d.run_until(100.0)
    assert d.send_times() == [0.0]
    assert d.timeouts == [(32.0, "F")]


def test_client_key_matches_transaction_key() -> None:
    tx = ClientInviteTransaction(request(), False, T)
    assert client_key(response(180)) == tx.key == (BRANCH, "INVITE")
    cancel_tx = ClientNonInviteTransaction(request("CANCEL"), False, T)
    assert client_key(response(200, method="CANCEL")) == cancel_tx.key
    assert cancel_tx.key != tx.key


# --- server INVITE -----------------------------------------------------------------


def test_server_invite_absorbs_retransmissions_and_resends_last() -> None:
    inv = request()
    d = Driver(ServerInviteTransaction(inv, False, T))
    assert d.tx.state == "proceeding"
    assert d.receive(request()) == []  # nothing sent yet: absorbed
    trying = response(100, to_tag=None)
    d.send(trying)
    assert d.receive(request()) == [Send(trying)]
    ringing = response(180)
    d.send(ringing)
    assert d.receive(request()) == [Send(ringing)]
    assert d.up == []  # retransmissions never reach the TU
    assert d.tx.state == "proceeding"


def test_server_invite_non_2xx_timer_g_and_h() -> None:
    d = Driver(ServerInviteTransaction(request(), False, T))
    d.send(response(100, to_tag=None))
    d.run_until(1.0)
    busy = response(486)
    d.send(busy)
    assert d.tx.state == "completed"
    d.run_until(5.0)
    assert d.receive(request()) == [Send(busy)]
    d.run_until(100.0)
    assert d.arm_delays("G") == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4, 4]
    g_sends = [t for t, m in d.sent if m is busy]
    assert g_sends == [1.0, 1.5, 2.5, 4.5, 5.0, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert d.timeouts == [(33.0, "H")]
    assert d.terminated_at == 33.0


def test_server_invite_ack_confirms_and_timer_i() -> None:
    d = Driver(ServerInviteTransaction(request(), False, T))
    d.run_until(1.0)
    busy = response(486)
    d.send(busy)
    d.run_until(2.0)
    ack = request("ACK", to_tag="a6c85cf")
    assert server_key(ack) == server_key(d.tx.request)
    actions = d.receive(ack)
    assert d.tx.state == "confirmed"
    assert Disarm("G") in actions and Disarm("H") in actions
    assert not any(isinstance(a, PassUp) for a in actions)
    n = len(d.sent)
    assert d.receive(request("ACK", to_tag="a6c85cf")) == []  # absorbed
    assert d.receive(request()) == []  # INVITE retransmission absorbed too
    d.run_until(100.0)
    assert len(d.sent) == n
    assert d.terminated_at == 2.0 + 5.0  # I = T4
    assert d.timeouts == [] and d.up == []


def test_server_invite_reliable_no_g_and_i_zero() -> None:
    d = Driver(ServerInviteTransaction(request(), True, T))
    d.send(response(404))
    assert d.arm_delays("G") == []
    assert d.arm_delays("H") == [32.0]
    d.run_until(0.3)
    d.receive(request("ACK", to_tag="a6c85cf"))
    assert d.arm_delays("I") == [0.0]
    d.run_until(0.3)
    assert d.terminated_at == 0.3
    assert d.send_times() == [0.0]


def test_server_invite_reliable_timer_h() -> None:
    d = Driver(ServerInviteTransaction(request(), True, T))
    d.send(response(500))
    d.run_until(100.0)
    assert d.timeouts == [(32.0, "H")]
    assert d.send_times() == [0.0]


def test_server_invite_2xx_accepted_and_timer_l() -> None:
    d = Driver(ServerInviteTransaction(request(), False, T))
    d.send(response(180))
    d.run_until(2.0)
    ok = response(200)
    assert d.send(ok) == [Send(ok), Arm("L", 32.0)]
    assert d.tx.state == "accepted"
    # RFC 6026: INVITE retransmissions absorbed, 2xx retransmits from TU sent.
    assert d.receive(request()) == []
    ok_fork = response(200, to_tag="other")
    assert d.send(ok_fork) == [Send(ok_fork)]
    assert d.send(response(486)) == []
    # An ACK that lands here (RFC 2543 key) goes to the TU.
    ack = request("ACK", to_tag="a6c85cf")
    assert d.receive(ack) == [PassUp(ack)]
    d.run_until(100.0)
    assert d.terminated_at == 34.0
    assert d.timeouts == []


def test_server_invite_ignores_ack_in_proceeding() -> None:
    d = Driver(ServerInviteTransaction(request(), False, T))
    assert d.receive(request("ACK")) == []
    assert d.tx.state == "proceeding"


# --- server non-INVITE -------------------------------------------------------------


def test_server_non_invite_retransmissions_and_timer_j() -> None:
    opt = request("OPTIONS")
    d = Driver(ServerNonInviteTransaction(opt, False, T))
    assert d.tx.state == "trying"
    assert d.receive(request("OPTIONS")) == []  # trying: absorbed
    trying = response(100, method="OPTIONS", to_tag=None)
    d.send(trying)
    assert d.tx.state == "proceeding"
    assert d.receive(request("OPTIONS")) == [Send(trying)]
    d.run_until(1.0)
    ok = response(200, method="OPTIONS")
    assert d.send(ok) == [Send(ok), Arm("J", 32.0)]
    assert d.tx.state == "completed"
    assert d.receive(request("OPTIONS")) == [Send(ok)]
    assert d.send(response(500, method="OPTIONS")) == []  # final already sent
    d.run_until(100.0)
    assert d.terminated_at == 33.0
    assert d.timeouts == [] and d.up == []


def test_server_non_invite_reliable_j_zero() -> None:
    d = Driver(ServerNonInviteTransaction(request("OPTIONS"), True, T))
    d.send(response(200, method="OPTIONS"))
    assert d.arm_delays("J") == [0.0]
    d.run_until(0.0)
    assert d.terminated_at == 0.0


# --- stale timers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "names"),
    [
        (ClientInviteTransaction, "ABCDM"),
        (ClientNonInviteTransaction, "EFK"),
        (ServerInviteTransaction, "GHIL"),
        (ServerNonInviteTransaction, "J"),
    ],
)
def test_timers_firing_in_wrong_state_do_nothing(cls, names: str) -> None:
    """A timer the adapter failed to cancel in time must be harmless."""
    method = "INVITE" if "Invite" in cls.__name__ and "Non" not in cls.__name__ else "OPTIONS"
    tx = cls(request(method), False, T)
    tx.state = "terminated"
    for name in names:
        assert tx.timer(name, 99.0) == []
    assert tx.timer("Z", 99.0) == []


def test_client_invite_stale_a_after_provisional() -> None:
    tx = ClientInviteTransaction(request(), False, T)
    tx.start(0.0)
    tx.receive(response(180), 0.4)
    assert tx.timer("A", 0.5) == []
    assert tx.timer("B", 32.0) == []
    assert tx.timer("D", 32.0) == []


# --- matching keys -----------------------------------------------------------------


def test_server_key_rfc3261() -> None:
    inv = request()
    key = server_key(inv)
    assert key == server_key(request())  # retransmission
    assert key == server_key(request("ACK", to_tag="x"))  # ACK -> INVITE
    cancel = request("CANCEL")
    assert server_key(cancel) != key  # CANCEL is its own transaction
    assert cancel_target_key(cancel) == key
    other_host = VIA.replace("pc33.atlanta", "pc34.atlanta")
    assert server_key(request(via=other_host)) != key  # sent-by is in the key
    assert server_key(request(via=VIA + "x")) != key  # other branch
    assert server_key(request("OPTIONS")) != key
    # Case of the host does not matter; the rest of the Via does not either.
    upper = "SIP/2.0/UDP PC33.ATLANTA.example.com:5060;branch=" + BRANCH + ";rport"
    assert server_key(request(via=upper)) == key
    hash(key)


@pytest.mark.parametrize(
    "via",
    [
        "SIP/2.0/UDP pc33.atlanta.example.com:5060",
        "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=0123abc",
        "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK",
    ],
)
def test_server_key_rfc2543_fallback(via: str) -> None:
    inv = request(via=via)
    key = server_key(inv)
    hash(key)
    assert key != server_key(request())
    assert key == server_key(request(via=via))  # retransmission
    assert key == server_key(request("ACK", via=via, to_tag="a6c85cf"))
    cancel = request("CANCEL", via=via)
    assert cancel_target_key(cancel) == key
    assert server_key(cancel) != key
    assert server_key(request(via=via, cseq=314160)) != key
    assert server_key(request(via=via, uri="sip:carol@chicago.example.com")) != key
    assert server_key(request("OPTIONS", via=via)) != key


def _tag(req: Request, secret: bytes = b"k" * 16) -> str:
    return local_tag(secret, server_key(req), req)


def _with(req: Request, name: str, value: str) -> Request:
    req.set_header(name, value)
    return req


@pytest.mark.parametrize("via", [
    VIA,
    "SIP/2.0/UDP pc33.atlanta.example.com:5060",  # RFC 2543: no branch
    "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=0123abc",
])
def test_local_tag_per_transaction(via: str) -> None:
    tag = _tag(request(via=via))
    assert re.fullmatch(r"sps[0-9a-f]{16}", tag)
    # A retransmission, its ACK and its CANCEL (RFC 3261 9.2) get the tag.
    assert _tag(request(via=via)) == tag
    assert _tag(request("ACK", via=via, to_tag=tag)) == tag
    assert _tag(request("CANCEL", via=via)) == tag
    # Any other request gets another (RFC 3261 19.3: tags are unique).
    others = [
        request(via=via, cseq=314160),
        request("OPTIONS", via=via),
        request(via=VIA.replace("pc33.atlanta", "pc34.atlanta") if via == VIA
                else via.replace("pc33.atlanta", "pc34.atlanta")),
        _with(request(via=via), "Call-ID", "other@pc33.atlanta.example.com"),
        _with(request(via=via), "From", "Alice <sip:alice@atlanta.example.com>;tag=other"),
    ]
    if via == VIA:
        others.append(request(via=VIA + "x"))
    else:
        others.append(request(via=via, uri="sip:carol@chicago.example.com"))
    tags = {_tag(r) for r in others}
    assert len(tags) == len(others) and tag not in tags
    # Keyed: another process (another secret) answers with other tags.
    assert _tag(request(via=via), b"j" * 16) != tag


def test_local_tag_keeps_to_the_request_as_received() -> None:
    """RFC 2543 transactions are told apart by their Request-URI, which the
    routing may rewrite before answering: the key taken at receipt decides."""
    via = "SIP/2.0/UDP pc33.atlanta.example.com:5060"
    inv = request(via=via)
    key = server_key(inv)
    tag = local_tag(b"k" * 16, key, inv)
    routed = parse_datagram(inv.to_bytes())
    assert isinstance(routed, Request)
    routed.uri = routed.uri.copy()
    routed.uri.user = "carol"
    assert local_tag(b"k" * 16, key, routed) == tag
    # ... and the ACK, carrying the original Request-URI, computes the same.
    assert _tag(request("ACK", via=via, to_tag=tag)) == tag


def test_new_branch() -> None:
    branches = {new_branch() for _ in range(10000)}
    assert len(branches) == 10000
    for b in list(branches)[:50]:
        assert re.fullmatch(r"z9hG4bK[0-9a-f]{8,}", b)


def test_new_branch_is_a_valid_rfc3261_key() -> None:
    b = new_branch()
    via = f"SIP/2.0/UDP 192.0.2.1:5060;branch={b}"
    assert server_key(request(via=via))[0] == b


# --- action objects ----------------------------------------------------------------


def test_actions_are_small_frozen_and_comparable() -> None:
    a = Arm("A", 0.5)
    assert a == Arm("A", 0.5) and a != Arm("A", 1.0)
    assert Terminated() == Terminated()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.delay = 1.0  # type: ignore[misc]
    for obj in (
        a,
        Disarm("A"),
        Timeout("B"),
        Terminated(),
        Send(request()),
        PassUp(request()),
    ):
        assert not hasattr(obj, "__dict__")


def test_transactions_are_slotted() -> None:
    for tx in (
        ClientInviteTransaction(request(), False, T),
        ClientNonInviteTransaction(request("OPTIONS"), False, T),
        ServerInviteTransaction(request(), False, T),
        ServerNonInviteTransaction(request("OPTIONS"), False, T),
    ):
        assert not hasattr(tx, "__dict__")
