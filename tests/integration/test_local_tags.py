"""The To tags of the answers the proxy makes itself (RFC 3261 8.2.6.2, 19.3),
against a real proxy process over raw UDP on 127.0.0.1.

One tag per request, the same for its retransmissions; the ACK of such an
answer is absorbed, during its transaction and after it ended, and never
routed on (Kamailio's sl module behaves the same way).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import procs
import pytest
from procs import (
    ProxyFactory,
    ProxyProcess,
    RawCallee,
    SipMessage,
    UdpEndpoint,
    build_ack_for,
    build_invite,
    build_request,
    is_final,
    new_tag,
)

DOMAIN = "sipsuite.test"
T4 = 0.5  # s: timer I, how long a 407's transaction absorbs ACKs before it ends
WAIT = 5.0  # s for an answer that comes at once
QUIET = 1.0  # s of silence that counts as "nothing came"


@dataclass
class Net:
    proxy: ProxyProcess
    callee: RawCallee

    @property
    def route(self) -> str:
        # A preloaded Route (an outbound proxy setting): an ACK carrying it
        # would be loose-routed on to its Request-URI, the callee, if routed.
        return f"<sip:{self.proxy.hostport};lr>"


@pytest.fixture(scope="module")
def net(proxy_factory: ProxyFactory) -> Iterator[Net]:
    callee = RawCallee()
    try:
        proxy = proxy_factory("tags", tables={"features": {"auth": True}, "timers": {"t4": T4}})
        yield Net(proxy, callee)
    finally:
        callee.close()


def final_answer(ep: UdpEndpoint, net: Net, request: bytes) -> SipMessage:
    ep.send(request, net.proxy.address)
    got = ep.recv_until(is_final, WAIT)
    assert got is not None, "no final answer\n" + net.proxy.diagnostics()
    return got.msg


def to_tag(msg: SipMessage) -> str:
    to = msg.header("to") or ""
    assert ";tag=" in to, to
    return to.split(";tag=", 1)[1].split(";")[0]


def invite(ep: UdpEndpoint, net: Net, **kwargs: object) -> bytes:
    return build_invite(net.callee.uri("bob"), sent_by=ep.sent_by,
                        extra=[("Route", net.route)], **kwargs)  # type: ignore[arg-type]


def ack_for(inv: bytes, answer: SipMessage, net: Net) -> bytes:
    # RFC 3261 17.1.1.3: the ACK of a non-2xx carries the INVITE's Route values.
    head, _, rest = build_ack_for(inv, answer).partition(b"\r\n")
    return head + f"\r\nRoute: {net.route}".encode() + b"\r\n" + rest


def test_each_request_gets_its_own_tag(net: Net) -> None:
    with UdpEndpoint() as ep:
        first = invite(ep, net)
        answer = final_answer(ep, net, first)
        assert answer.status == 407, answer
        tag = to_tag(answer)
        again = final_answer(ep, net, first)  # a retransmission
        assert again.status == 407 and to_tag(again) == tag
        tags = {tag}
        for other in (
            invite(ep, net),
            invite(ep, net),
            build_request("REGISTER", f"sip:{DOMAIN}", sent_by=ep.sent_by,
                          to_uri=f"sip:alice@{DOMAIN}", contact=f"sip:alice@{ep.sent_by}"),
            build_request("OPTIONS", f"sip:nobody@{DOMAIN}", sent_by=ep.sent_by,
                          from_uri="sip:alice@elsewhere.test"),
        ):
            answer = final_answer(ep, net, other)
            assert answer.status in (401, 404, 407), answer
            tags.add(to_tag(answer))
        assert len(tags) == 5, tags
        # Another request of the same dialog (same Call-ID and From tag, next
        # CSeq) is another request too.
        call_id, from_tag = new_tag(), new_tag()
        dialog_tags = {
            to_tag(final_answer(ep, net, invite(ep, net, call_id=call_id, from_tag=from_tag,
                                                cseq=cseq)))
            for cseq in (1, 2)
        }
        assert len(dialog_tags) == 2 and not dialog_tags & tags


def test_the_ack_of_our_answer_is_absorbed(net: Net) -> None:
    net.callee.reset()
    with UdpEndpoint() as ep:
        inv = invite(ep, net)
        answer = final_answer(ep, net, inv)
        assert answer.status == 407, answer
        ack = ack_for(inv, answer, net)
        ep.send(ack, net.proxy.address)  # in the transaction: absorbed by it
        time.sleep(T4 * 3)  # timer I has ended the transaction
        ep.send(ack, net.proxy.address)  # known by its tag alone
        late = ep.collect(QUIET)
        assert late == [], [r.msg.start_line for r in late]
        assert net.callee.messages() == [], "the ACK of our own 407 was routed on\n" + \
            net.proxy.diagnostics()
        # The same ACK with a tag the proxy did not make is routed on (to the
        # callee its Request-URI names): the absorbing above is by the tag.
        foreign = ack.replace(f"tag={to_tag(answer)}".encode(), f"tag={new_tag()}".encode())
        assert foreign != ack
        ep.send(foreign, net.proxy.address)
        got = net.callee.wait_for("ACK", timeout=WAIT)
        assert len(got) == 1, "the ACK of someone else's answer did not get through\n" + \
            net.proxy.diagnostics()
    assert procs.options_ping(*net.proxy.address, timeout=2) is not None
