"""Addresses the proxy advertises or refuses to send to."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipsuite.proxy.net.addresses import is_unicast, record_route_value, split_advertise
from sipsuite.proxy.net.listener import Listener
from sipsuite.proxy.net.transport import TransportLayer


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ("", None)),
        ("sip.example.com", ("sip.example.com", None)),
        ("192.0.2.7:5099", ("192.0.2.7", 5099)),
        ("[2001:db8::7]", ("2001:db8::7", None)),
        ("[2001:db8::7]:5080", ("2001:db8::7", 5080)),
    ],
)
def test_split_advertise(value: str, expected: tuple[str, int | None]) -> None:
    assert split_advertise(value) == expected


def test_record_route_uses_the_advertised_port_and_transport() -> None:
    udp = Listener("udp", "0.0.0.0", 5060, "192.0.2.7", 5099)
    tcp = Listener("tcp", "::1", 5060, "::1")
    assert record_route_value(udp) == "<sip:192.0.2.7:5099;lr>"
    assert record_route_value(tcp) == "<sip:[::1]:5060;transport=tcp;lr>"


def test_via_carries_the_advertised_address_transport_and_rport_on_request() -> None:
    udp = Listener("udp", "0.0.0.0", 5060, "192.0.2.7", 5099)
    tls = Listener("tls", "::1", 5061, "::1")
    assert udp.via("z9hG4bKx") == "SIP/2.0/UDP 192.0.2.7:5099;branch=z9hG4bKx"
    assert tls.via("z9hG4bKy", rport=True) == "SIP/2.0/TLS [::1]:5061;branch=z9hG4bKy;rport"


@pytest.mark.parametrize(
    ("host", "unicast"),
    [("192.0.2.1", True), ("255.255.255.255", False), ("192.0.2.255", True), ("0.0.0.0", False),
     ("224.0.0.1", False), ("ff02::1", False), ("[2001:db8::1]", True), ("host.example", True)],
)
def test_is_unicast(host: str, unicast: bool) -> None:
    assert is_unicast(host) is unicast


class _Routes:
    """The kernel's source address per destination, as RouteSources answers."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def source(self, host: str) -> str | None:
        return self.table.get(host)


def _wildcard_layer(advertise: str = "192.0.2.2", pinned: bool = False) -> TransportLayer:
    layer = TransportLayer(Clock(), lambda msg, src: None)
    layer.listeners.append(Listener("udp", "0.0.0.0", 5060, advertise, None, pinned))
    # Two networks: 10.0.1.0/24 behind 10.0.1.5, everything else from 192.0.2.2.
    layer.routes = _Routes({"127.0.0.1": "127.0.0.1", "10.0.1.9": "10.0.1.5",
                            "10.0.1.20": "10.0.1.5", "203.0.113.9": "192.0.2.2"})
    return layer


def test_wildcard_child_advertises_its_address_unless_pinned() -> None:
    layer = _wildcard_layer()
    root = layer.listeners[0]
    child = layer.local_listener(root, "127.0.0.2")
    assert child.sent_by() == "127.0.0.2:5060" and child.root is root
    assert layer.local_listener(root, "127.0.0.2") is child  # one object per address
    assert record_route_value(child) == "<sip:127.0.0.2:5060;lr>"
    assert layer.listener_named("udp:127.0.0.2:5060") is child
    pinned = _wildcard_layer("sip.example.com", pinned=True)
    assert pinned.local_listener(pinned.listeners[0], "127.0.0.2").sent_by() == "sip.example.com:5060"


def test_forwarding_keeps_the_arrival_address_on_the_same_side() -> None:
    layer = _wildcard_layer()
    root = layer.listeners[0]
    # From 127.0.0.1 to 127.0.0.2, on to 127.0.0.1: loopback both ways.
    arrived = layer.local_listener(root, "127.0.0.2")
    assert layer.pick_listener("udp", "127.0.0.1", arrived, "127.0.0.1") is arrived
    # From the LAN, to another LAN host: the arrival address.
    lan = layer.local_listener(root, "10.0.1.5")
    assert layer.pick_listener("udp", "10.0.1.20", lan, "10.0.1.9") is lan


def test_forwarding_to_another_network_uses_the_kernels_source() -> None:
    """Arrived from the LAN on 10.0.1.5, the next hop is on the Internet: the
    request leaves from (and its Via names) the address the kernel routes
    that way from, and the in-and-out Record-Route pair tells both."""
    layer = _wildcard_layer()
    lan = layer.local_listener(layer.listeners[0], "10.0.1.5")
    out = layer.pick_listener("udp", "203.0.113.9", lan, "10.0.1.9")
    assert out is not None and out.host == "192.0.2.2" and out.root is layer.listeners[0]
    # No inbound side (keep-alives, probes): the kernel's choice as well.
    assert layer.pick_listener("udp", "10.0.1.20", None).host == "10.0.1.5"


def test_children_are_bounded() -> None:
    layer = _wildcard_layer()
    root = layer.listeners[0]
    for i in range(layer.MAX_CHILDREN + 10):
        layer.local_listener(root, f"127.0.{i // 256}.{i % 256 + 1}")
    assert len(layer.children[root]) == layer.MAX_CHILDREN
    assert layer.local_listener(root, "127.9.9.9") is root


def test_ipv4_peer_of_an_ipv6_wildcard_sees_its_ipv4_address() -> None:
    layer = TransportLayer(Clock(), lambda msg, src: None)
    root = Listener("udp", "::", 5060, "2001:db8::2")
    layer.listeners.append(root)
    assert layer.local_listener(root, "::ffff:127.0.0.1").sent_by() == "127.0.0.1:5060"
    assert layer.local_listener(root, "::1").sent_by() == "[::1]:5060"
