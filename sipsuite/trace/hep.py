"""HEP version 3 (the Homer Encapsulation Protocol): one SIP message as
Homer's capture server (heplify-server, Kamailio's sipcapture) takes it.

A packet is the ASCII ``HEP3``, its total length (16 bits, header
included) and then chunks, each a vendor id (0: the generic chunks), a
type id and a length (16 bits each, the 6 bytes of this chunk header
included) before its value; every number in network byte order.  The
chunks written here are those Homer indexes a SIP message by:

====== ================================ ============================
type   what                             value
====== ================================ ============================
0x0001 IP family                        8 bits: 2 IPv4, 10 IPv6
0x0002 IP protocol                      8 bits: 17 UDP, 6 TCP
0x0003 IPv4 source / 0x0004 destination 4 bytes
0x0005 IPv6 source / 0x0006 destination 16 bytes
0x0007 source port / 0x0008 dest. port  16 bits
0x0009 time, seconds                    32 bits, Unix time
0x000a time, microseconds               32 bits
0x000b payload type                     8 bits: 1 SIP
0x000c capture agent id                 32 bits
0x000e authentication key               the password's bytes
0x000f the payload                      the SIP message as on the wire
0x0011 correlation id                   the Call-ID
====== ================================ ============================
"""

from __future__ import annotations

import ipaddress
import re
import struct

__all__ = ["AF_INET", "AF_INET6", "PROTO_SIP", "decode", "encode"]

AF_INET, AF_INET6 = 2, 10
IPPROTO_TCP, IPPROTO_UDP = 6, 17
PROTO_SIP = 1
#: The length field has 16 bits: a bigger SIP message (over TCP) cannot be sent.
MAX_PACKET = 0xFFFF

FAMILY, IP_PROTO, SRC_IP4, DST_IP4, SRC_IP6, DST_IP6 = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
SRC_PORT, DST_PORT, TIME_SEC, TIME_USEC, PROTO_TYPE, CAPTURE_ID = 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C
AUTH_KEY, PAYLOAD, CORRELATION_ID = 0x0E, 0x0F, 0x11

_U8, _HEAD = struct.Struct("!HHHB"), struct.Struct("!HHH")
_ADDR4, _ADDR6 = struct.Struct("!HHH4sHHH4s"), struct.Struct("!HHH16sHHH16s")
# Ports, time, payload type and capture id: chunks of a fixed layout, packed at once.
_PORTS_TIME = struct.Struct("!HHHH HHHH HHHI HHHI HHHB HHHI".replace(" ", ""))
_V4_MAPPED = bytes(10) + b"\xff\xff"
_FAMILY_PROTO = {(family, udp): _U8.pack(0, FAMILY, 7, family)
                 + _U8.pack(0, IP_PROTO, 7, IPPROTO_UDP if udp else IPPROTO_TCP)
                 for family in (AF_INET, AF_INET6) for udp in (True, False)}
_CALL_ID = re.compile(rb"\r\n(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def _raw(kind: int, value: bytes) -> bytes:
    return _HEAD.pack(0, kind, 6 + len(value)) + value


# host -> packed address: a proxy talks to the same few peers, and parsing
# an address is most of what encoding a packet costs.
_packed: dict[str, bytes] = {}


def _address(host: str) -> bytes:
    """The 4 or 16 bytes of an IP address ("[v6]" and "%zone" allowed)."""
    packed = _packed.get(host)
    if packed is None:
        try:
            packed = ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).packed
        except ValueError:
            packed = bytes(4)  # a name, not an address: nothing better to say
        if len(_packed) >= 4096:
            _packed.clear()
        _packed[host] = packed
    return packed


def call_id(data: bytes) -> bytes:
    """The Call-ID of a SIP message (compact form too), b"" if it has none."""
    match = _CALL_ID.search(data)
    return match.group(1).strip() if match else b""


def encode(payload: bytes, src: tuple[str, int], dst: tuple[str, int], transport: str,
           t: float, capture_id: int, password: bytes = b"", correlation: bytes = b"") -> bytes:
    """The HEP3 packet of one SIP message ``payload`` sent from ``src`` to
    ``dst`` (host, port) over ``transport`` ("udp", "tcp", "tls"; TLS is
    sent as the TCP it rode, its plaintext being the payload) at Unix time
    ``t``.  An IPv4 address beside an IPv6 one (an IPv6 socket's peer) is
    written IPv4-mapped.  ValueError when it would be over 64 kB."""
    s, d = _address(src[0]), _address(dst[0])
    if len(s) != len(d):
        s = s if len(s) == 16 else _V4_MAPPED + s
        d = d if len(d) == 16 else _V4_MAPPED + d
    if len(s) == 4:
        family = AF_INET
        addresses = _ADDR4.pack(0, SRC_IP4, 10, s, 0, DST_IP4, 10, d)
    else:
        family = AF_INET6
        addresses = _ADDR6.pack(0, SRC_IP6, 22, s, 0, DST_IP6, 22, d)
    # Every chunk but the variable ones is of a fixed size: check the total
    # before packing (a chunk's length would overflow its 16 bits too).
    size = 6 + 7 + 7 + 2 * (6 + len(s)) + 16 + 20 + 7 + 10 + 6 + len(payload)
    size += (6 + len(password) if password else 0) + (6 + len(correlation) if correlation else 0)
    if size > MAX_PACKET:
        raise ValueError(f"a message of {len(payload)} bytes does not fit one HEP3 packet")
    sec = int(t)
    usec = min(int(round((t - sec) * 1_000_000)), 999_999)
    body = b"".join((
        _FAMILY_PROTO[family, transport == "udp"],
        addresses,
        _PORTS_TIME.pack(0, SRC_PORT, 8, src[1] & 0xFFFF, 0, DST_PORT, 8, dst[1] & 0xFFFF,
                         0, TIME_SEC, 10, sec & 0xFFFFFFFF, 0, TIME_USEC, 10, usec,
                         0, PROTO_TYPE, 7, PROTO_SIP, 0, CAPTURE_ID, 10, capture_id & 0xFFFFFFFF),
        _raw(AUTH_KEY, password) if password else b"",
        _raw(CORRELATION_ID, correlation) if correlation else b"",
        _HEAD.pack(0, PAYLOAD, 6 + len(payload)), payload,
    ))
    assert len(body) + 6 == size
    return b"HEP3" + struct.pack("!H", size) + body


def decode(packet: bytes) -> dict[int, bytes]:
    """The chunks of a HEP3 packet by type id (vendor 0 only): what a test
    collector, or anyone checking what was sent, reads back.  Raises
    ValueError on anything that is not one well-formed HEP3 packet."""
    if packet[:4] != b"HEP3" or len(packet) < 6:
        raise ValueError("not HEP3")
    total = struct.unpack_from("!H", packet, 4)[0]
    if total != len(packet):
        raise ValueError(f"length {total}, packet {len(packet)}")
    chunks: dict[int, bytes] = {}
    at = 6
    while at < total:
        if at + 6 > total:
            raise ValueError("truncated chunk header")
        vendor, kind, length = _HEAD.unpack_from(packet, at)
        if length < 6 or at + length > total:
            raise ValueError(f"chunk {kind:#06x}: bad length {length}")
        if vendor == 0:
            chunks[kind] = packet[at + 6:at + length]
        at += length
    return chunks
