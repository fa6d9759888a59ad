"""A call through the deployment of docs/deployment.md on separate hosts
(nattopo.py: network namespaces, a home router that masquerades with
fully-random ports and forgets idle UDP mappings within seconds):

- the NAT'ed phone's media reaches the public phone and back, through the
  relay on its own host, driven by the proxy over mutual-TLS control, with
  registrations in Redis on its own host;
- the proxy's OPTIONS keep-alives keep the NAT'ed phone's mapping open past
  the router's timeout (an idle mapping of the same router is shown to
  expire), so a call to it still rings;
- an incoming call reaches the NAT'ed TCP phone over its own connection
  (it listens nowhere).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nattopo import (
    ALICE,
    BOB,
    CAROL,
    MEDIA_PORTS,
    NAT_WAN,
    RELAY_PUB,
    UDP_STREAM_TIMEOUT,
    NatTopology,
    Phone,
    rtp,
    running,
    sdp_target,
)
from netnskit import Topology, inside, wait_for

PACKETS = 50
SSRC_ALICE, SSRC_BOB = 0xA11CE000, 0xB0B0B0B0


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatTopology]:
    with running(tmp_path_factory.mktemp("nattopo")) as net:
        yield net


@pytest.fixture
def phones(hosts: NatTopology) -> Iterator[list[Phone]]:
    made: list[Phone] = []
    yield made
    for phone in made:
        phone.close()


def test_nated_phone_media_reaches_public_phone_and_back(hosts: NatTopology,
                                                          phones: list[Phone]) -> None:
    alice = Phone(hosts.home, "alice", ALICE, rtp_port=4000)
    bob = Phone(hosts.bob_ns, "bob", BOB, rtp_port=4000)
    phones += [alice, bob]
    for phone in (alice, bob):
        assert phone.register().status == 200, hosts.diagnostics()
    keys = hosts.redis_keys()
    assert any("alice" in k for k in keys) and any("bob" in k for k in keys), keys

    invite = alice.call("bob")
    offer = bob.expect("INVITE")
    bob.answer(offer)
    dialog = alice.outcome(invite)
    assert dialog.final.status == 200, hosts.diagnostics()
    # Each side is offered the relay's public address, not the other phone's.
    to_bob, to_alice = sdp_target(dialog.final), sdp_target(offer)
    for host, port in (to_bob, to_alice):
        assert host == RELAY_PUB and MEDIA_PORTS[0] <= port <= MEDIA_PORTS[1], (to_bob, to_alice)

    # alice speaks first: the relay learns her mapped address from it.
    for seq in range(PACKETS):
        alice.rtp.sendto(rtp(seq, SSRC_ALICE), to_bob)
        time.sleep(0.005)
        bob.rtp.sendto(rtp(seq, SSRC_BOB), to_alice)
        time.sleep(0.015)
    sessions = hosts.relay_sessions()
    at_bob, at_alice = bob.received_rtp(), alice.received_rtp()

    def from_(got: list[tuple[bytes, tuple[str, int]]], ssrc: int) -> int:
        return sum(1 for data, _ in got if data[8:12] == ssrc.to_bytes(4, "big"))

    counts = {"alice->bob": from_(at_bob, SSRC_ALICE), "bob->alice": from_(at_alice, SSRC_BOB)}
    assert all(n >= PACKETS - 2 for n in counts.values()), (counts, sessions, hosts.diagnostics())
    # Both hear the relay, never each other.
    assert {src[0] for _, src in at_bob + at_alice} == {RELAY_PUB}
    # The relay latched alice at the router's public address, on a port the
    # router picked (fully-random), not the port in her SDP.
    (session,) = sessions
    host, _, port = str(session["caller"]["latched"]).rpartition(":")
    # (1 chance in ~64,000 that the router's random pick is 4000 itself.)
    assert host == NAT_WAN and int(port) != alice.rtp_port, session
    assert session["caller"]["packets"] >= PACKETS - 2, session
    assert session["callee"]["packets"] >= PACKETS - 2, session
    stats = hosts.relay_stats()
    assert stats["packets_relayed"] >= 2 * (PACKETS - 2), stats

    assert alice.hang_up(dialog).status == 200
    wait_for(lambda: not hosts.relay_sessions(), 5, "the relay session to end at BYE")


def test_keepalives_hold_the_nat_mapping_past_its_timeout(hosts: NatTopology,
                                                          phones: list[Phone]) -> None:
    alice = Phone(hosts.home, "alice", ALICE, rtp_port=4002)
    bob = Phone(hosts.bob_ns, "bob", BOB, rtp_port=4002)
    phones += [alice, bob]
    assert alice.register().status == 200, hosts.diagnostics()

    # The control: a mapping of the same router with nothing on it after its
    # answer is gone once the router's timeout passes.
    with inside(hosts.home):
        inner = Phone.udp(ALICE, 40000)
    with inside(hosts.bob_ns):
        outer = Phone.udp(BOB, 40000)
    with inner, outer:
        inner.sendto(b"hello", (BOB, 40000))
        _, mapped = outer.recvfrom(64)
        assert mapped[0] == NAT_WAN
        outer.sendto(b"answer", mapped)
        assert inner.recvfrom(64)[0] == b"answer"
        options_before = alice.options
        time.sleep(UDP_STREAM_TIMEOUT + 3)
        outer.sendto(b"too late", mapped)
        inner.settimeout(1.0)
        with pytest.raises(TimeoutError):
            inner.recvfrom(64)

    # Meanwhile alice's mapping was kept open by the proxy's OPTIONS, which
    # she answered.
    assert alice.options - options_before >= UDP_STREAM_TIMEOUT, alice.options
    invite = bob.call("alice")
    offer = alice.expect("INVITE")
    alice.answer(offer)
    dialog = bob.outcome(invite)
    assert 180 in dialog.provisional and dialog.final.status == 200, (
        dialog.provisional, dialog.final, hosts.diagnostics())
    # The dialog's requests follow the mapping too (her Contact aliased).
    assert alice.expect("ACK").method == "ACK"
    assert bob.hang_up(dialog).status == 200
    assert alice.expect("BYE").method == "BYE"


def test_incoming_call_reaches_nated_tcp_phone_over_its_connection(
        hosts: NatTopology, phones: list[Phone]) -> None:
    carol = Phone(hosts.home, "carol", CAROL, transport="tcp", rtp_port=4004)
    bob = Phone(hosts.bob_ns, "bob", BOB, rtp_port=4004)
    phones += [carol, bob]
    assert carol.register().status == 200, hosts.diagnostics()

    invite = bob.call("carol")
    offer = carol.expect("INVITE")  # on the TCP connection: carol has no other socket
    assert offer.request_uri.startswith("sip:carol@"), offer.request_uri
    assert offer.vias[0].upper().startswith("SIP/2.0/TCP"), offer.vias[0]
    carol.answer(offer)
    dialog = bob.outcome(invite)
    assert 180 in dialog.provisional and dialog.final.status == 200, (
        dialog.provisional, dialog.final, hosts.diagnostics())
    # The proxy aliased her private Contact with the router's address and
    # port of her connection (Kamailio's set_contact_alias on the reply), so
    # the dialog's requests find the connection too.
    contact = dialog.final.header("contact") or ""
    assert f"alias={NAT_WAN}~" in contact and "~2" in contact, contact
    assert carol.expect("ACK").method == "ACK"
    bye = bob.hang_up(dialog)
    assert bye.status == 200, (str(bye), hosts.diagnostics())
    assert carol.expect("BYE").method == "BYE"


def test_topology_cleans_up_after_itself(tmp_path: Path) -> None:
    """The harness's promise: every namespace and link it made is gone after
    close(), even when the build fails half way."""
    topo = Topology()
    try:
        ns = topo.ns("x")
        topo.switch(ns, "br")
        topo.plug(topo.ns("y"), "198.18.9.2/24", ns, "br")
        with pytest.raises(RuntimeError):
            topo.plug("no-such-namespace", "198.18.9.3/24", ns, "br")
        assert topo.leftovers()
    finally:
        topo.close()
    assert topo.leftovers() == []
