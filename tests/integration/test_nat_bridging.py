"""A relay bridging two networks on its own host (issue 16): nattopo.py with
``bridging=True``: the relay's media on 10.0.0.5 (the service network) and
203.0.113.5 (public), the proxy's ``[media] internal_networks`` naming the
service network, a phone dave on it next to the proxy, and bob on the public
side.  dave reaches no public host but the proxy's SIP address: media to him
works only through the relay's internal address.

Shown both ways (dave calls bob, bob calls dave) and from alice behind her
home router to dave: the SDP each phone gets names the relay's address on
its own network, and RTP flows both ways through the relay's two
interfaces.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from nattopo import (
    ALICE,
    BOB,
    DAVE,
    MEDIA_PORTS,
    NAT_WAN,
    RELAY_PUB,
    RELAY_SVC,
    NatTopology,
    Phone,
    rtp,
    running,
    sdp_target,
)
from netnskit import wait_for

PACKETS = 40
SSRC_DAVE, SSRC_BOB = 0xDA7E0001, 0xB0B0B0B1


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatTopology]:
    with running(tmp_path_factory.mktemp("bridgetopo"), bridging=True) as net:
        yield net


@pytest.fixture
def phones(hosts: NatTopology) -> Iterator[list[Phone]]:
    made: list[Phone] = []
    yield made
    for phone in made:
        phone.close()


def _from(got: list[tuple[bytes, tuple[str, int]]], ssrc: int) -> list[tuple[str, int]]:
    return [src for data, src in got if data[8:12] == ssrc.to_bytes(4, "big")]


def _talk(hosts: NatTopology, dave: Phone, dave_sends_to: tuple[str, int], bob: Phone,
          bob_sends_to: tuple[str, int], bob_seen_at: str = BOB) -> None:
    """RTP both ways, each phone to the address its SDP named; each hears
    the other only from the relay's address on its own network.  ``bob``
    is the phone outside (speaking first: a NAT'ed one opens its router's
    mapping so), seen by the relay at ``bob_seen_at``."""
    for seq in range(PACKETS):
        bob.rtp.sendto(rtp(seq, SSRC_BOB), bob_sends_to)
        time.sleep(0.005)
        dave.rtp.sendto(rtp(seq, SSRC_DAVE), dave_sends_to)
        time.sleep(0.015)
    sessions = hosts.relay_sessions()
    at_bob, at_dave = _from(bob.received_rtp(), SSRC_DAVE), _from(dave.received_rtp(), SSRC_BOB)
    counts = {"dave->outside": len(at_bob), "outside->dave": len(at_dave)}
    assert all(n >= PACKETS - 2 for n in counts.values()), (counts, sessions,
                                                           hosts.diagnostics())
    assert {h for h, _ in at_bob} == {RELAY_PUB}, set(at_bob)
    assert {h for h, _ in at_dave} == {RELAY_SVC}, set(at_dave)
    (session,) = sessions
    # Each party latched where it really is, on a socket of its own network.
    legs = {str(session[leg]["latched"]).rpartition(":")[0]:
            (session[leg]["interface"], session[leg]["address"]) for leg in ("caller", "callee")}
    assert legs == {DAVE: ("internal", RELAY_SVC),
                    bob_seen_at: ("external", RELAY_PUB)}, session


def _relayed_on(target: tuple[str, int], address: str) -> bool:
    return target[0] == address and MEDIA_PORTS[0] <= target[1] <= MEDIA_PORTS[1]


def test_internal_phone_calls_public_phone_across_the_bridge(hosts: NatTopology,
                                                             phones: list[Phone]) -> None:
    dave = Phone(hosts.dave_ns, "dave", DAVE, rtp_port=4000)
    bob = Phone(hosts.bob_ns, "bob", BOB, rtp_port=4000)
    phones += [dave, bob]
    for phone in (dave, bob):
        assert phone.register().status == 200, hosts.diagnostics()

    invite = dave.call("bob")
    offer = bob.expect("INVITE")
    bob.answer(offer)
    dialog = dave.outcome(invite)
    assert dialog.final.status == 200, hosts.diagnostics()
    dave_sends_to, bob_sends_to = sdp_target(dialog.final), sdp_target(offer)
    # bob is given the relay's public address, dave its service-network one.
    assert _relayed_on(bob_sends_to, RELAY_PUB), (dave_sends_to, bob_sends_to)
    assert _relayed_on(dave_sends_to, RELAY_SVC), (dave_sends_to, bob_sends_to)

    _talk(hosts, dave, dave_sends_to, bob, bob_sends_to)
    assert dave.hang_up(dialog).status == 200
    wait_for(lambda: not hosts.relay_sessions(), 5, "the relay session to end at BYE")


def test_public_phone_calls_internal_phone_across_the_bridge(hosts: NatTopology,
                                                             phones: list[Phone]) -> None:
    dave = Phone(hosts.dave_ns, "dave", DAVE, rtp_port=4002)
    bob = Phone(hosts.bob_ns, "bob", BOB, rtp_port=4002)
    phones += [dave, bob]
    assert dave.register().status == 200, hosts.diagnostics()

    invite = bob.call("dave")
    offer = dave.expect("INVITE")
    dave.answer(offer)
    dialog = bob.outcome(invite)
    assert dialog.final.status == 200, hosts.diagnostics()
    bob_sends_to, dave_sends_to = sdp_target(dialog.final), sdp_target(offer)
    # dave (the callee, inside) is offered the internal address, bob the public.
    assert _relayed_on(dave_sends_to, RELAY_SVC), (dave_sends_to, bob_sends_to)
    assert _relayed_on(bob_sends_to, RELAY_PUB), (dave_sends_to, bob_sends_to)

    _talk(hosts, dave, dave_sends_to, bob, bob_sends_to)
    assert bob.hang_up(dialog).status == 200
    wait_for(lambda: not hosts.relay_sessions(), 5, "the relay session to end at BYE")


def test_nated_phone_calls_internal_phone_across_the_bridge(hosts: NatTopology,
                                                            phones: list[Phone]) -> None:
    # alice is behind her router: her SDP names 192.168.1.10, private but
    # not internal; she is judged by where she is, the router's address.
    alice = Phone(hosts.home, "alice", ALICE, rtp_port=4004)
    dave = Phone(hosts.dave_ns, "dave", DAVE, rtp_port=4004)
    phones += [alice, dave]
    for phone in (alice, dave):
        assert phone.register().status == 200, hosts.diagnostics()

    invite = alice.call("dave")
    offer = dave.expect("INVITE")
    dave.answer(offer)
    dialog = alice.outcome(invite)
    assert dialog.final.status == 200, hosts.diagnostics()
    alice_sends_to, dave_sends_to = sdp_target(dialog.final), sdp_target(offer)
    assert _relayed_on(dave_sends_to, RELAY_SVC), (dave_sends_to, alice_sends_to)
    assert _relayed_on(alice_sends_to, RELAY_PUB), (dave_sends_to, alice_sends_to)

    _talk(hosts, dave, dave_sends_to, alice, alice_sends_to, bob_seen_at=NAT_WAN)
    assert alice.hang_up(dialog).status == 200
    wait_for(lambda: not hosts.relay_sessions(), 5, "the relay session to end at BYE")
