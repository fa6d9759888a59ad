"""The HEP3 encoder (sipsuite/trace/hep.py), byte by byte against the
layout of HEP version 3: "HEP3", total length, then chunks of vendor id,
type id, length (chunk header included) and value, in network order."""

from __future__ import annotations

import struct

import pytest

from sipsuite.trace.hep import call_id, decode, encode

INVITE = (b"INVITE sip:bob@example.com SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK1\r\n"
          b"Call-ID: 1-4711@192.0.2.10\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def chunks(packet: bytes) -> list[tuple[int, int, int, bytes]]:
    """(vendor, type, length, value) of each chunk, walked by hand."""
    assert packet[:4] == b"HEP3"
    assert struct.unpack("!H", packet[4:6])[0] == len(packet)
    out, at = [], 6
    while at < len(packet):
        vendor, kind, length = struct.unpack_from("!HHH", packet, at)
        out.append((vendor, kind, length, packet[at + 6:at + length]))
        at += length
    assert at == len(packet)
    return out


def test_ipv4_udp_packet_chunk_by_chunk() -> None:
    packet = encode(INVITE, ("192.0.2.10", 5062), ("203.0.113.5", 5060), "udp",
                    1_800_000_000.25, 2001, correlation=b"1-4711@192.0.2.10")
    assert chunks(packet) == [
        (0, 0x01, 7, b"\x02"),                      # IP family: AF_INET
        (0, 0x02, 7, b"\x11"),                      # protocol: UDP (17)
        (0, 0x03, 10, bytes([192, 0, 2, 10])),      # IPv4 source
        (0, 0x04, 10, bytes([203, 0, 113, 5])),     # IPv4 destination
        (0, 0x07, 8, struct.pack("!H", 5062)),      # source port
        (0, 0x08, 8, struct.pack("!H", 5060)),      # destination port
        (0, 0x09, 10, struct.pack("!I", 1_800_000_000)),  # seconds
        (0, 0x0A, 10, struct.pack("!I", 250_000)),        # microseconds
        (0, 0x0B, 7, b"\x01"),                      # payload type: SIP
        (0, 0x0C, 10, struct.pack("!I", 2001)),     # capture agent id
        (0, 0x11, 6 + 17, b"1-4711@192.0.2.10"),    # correlation id
        (0, 0x0F, 6 + len(INVITE), INVITE),         # the message
    ]
    # The header of the packet, spelled out.
    assert packet[:6] == b"HEP3" + struct.pack("!H", len(packet))
    assert packet[6:13] == bytes([0, 0, 0, 1, 0, 7, 2])


def test_ipv6_tcp_packet_with_auth_key() -> None:
    packet = encode(b"SIP/2.0 200 OK\r\n\r\n", ("2001:db8::1", 5060), ("[2001:db8::2]", 40000),
                    "tcp", 5.000001, 0xFFFFFFFF, password=b"s3cret")
    got = {kind: (length, value) for _v, kind, length, value in chunks(packet)}
    assert got[0x01] == (7, b"\x0a")               # AF_INET6 (10)
    assert got[0x02] == (7, b"\x06")               # TCP
    assert got[0x05] == (22, bytes.fromhex("20010db8000000000000000000000001"))
    assert got[0x06] == (22, bytes.fromhex("20010db8000000000000000000000002"))
    assert 0x03 not in got and 0x04 not in got
    assert got[0x07] == (8, b"\x13\xc4") and got[0x08] == (8, b"\x9c\x40")
    assert got[0x09] == (10, struct.pack("!I", 5)) and got[0x0A] == (10, struct.pack("!I", 1))
    assert got[0x0C] == (10, b"\xff\xff\xff\xff")
    assert got[0x0E] == (12, b"s3cret")
    assert 0x11 not in got                         # no correlation id given: none written
    assert got[0x0F] == (6 + 18, b"SIP/2.0 200 OK\r\n\r\n")


def test_tls_is_written_as_tcp_and_a_v4_peer_of_a_v6_socket_is_mapped() -> None:
    packet = encode(INVITE, ("::", 5061), ("127.0.0.1", 5999), "tls", 0.0, 1)
    got = decode(packet)
    assert got[0x01] == b"\x0a" and got[0x02] == b"\x06"
    assert got[0x05] == bytes(16)
    assert got[0x06] == bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])


def test_no_auth_chunk_without_a_password_and_decode_reads_back() -> None:
    packet = encode(INVITE, ("10.0.0.1", 1), ("10.0.0.2", 2), "udp", 1.0, 7)
    got = decode(packet)
    assert 0x0E not in got
    assert got[0x0F] == INVITE and got[0x0C] == struct.pack("!I", 7)
    for bad in (b"HEP2" + packet[4:], packet[:-1], packet + b"x", packet[:8]):
        with pytest.raises(ValueError):
            decode(bad)


def test_call_id_full_and_compact_forms() -> None:
    assert call_id(INVITE) == b"1-4711@192.0.2.10"
    assert call_id(b"BYE sip:a@b SIP/2.0\r\ni:  x@y \r\n\r\n") == b"x@y"
    assert call_id(b"BYE sip:a@b SIP/2.0\r\ncall-id:z\r\n\r\n") == b"z"
    assert call_id(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n") == b""
