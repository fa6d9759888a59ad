"""Addresses the proxy advertises or refuses to send to."""

from __future__ import annotations

import pytest

from sipsuite.proxy.addresses import is_unicast, record_route_value, split_advertise
from sipsuite.proxy.transport import Listener


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


@pytest.mark.parametrize(
    ("host", "unicast"),
    [("192.0.2.1", True), ("255.255.255.255", False), ("192.0.2.255", True), ("0.0.0.0", False),
     ("224.0.0.1", False), ("ff02::1", False), ("[2001:db8::1]", True), ("host.example", True)],
)
def test_is_unicast(host: str, unicast: bool) -> None:
    assert is_unicast(host) is unicast
