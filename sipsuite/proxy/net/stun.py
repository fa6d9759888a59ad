"""The STUN Binding answer RFC 5626 section 8 asks of a SIP port: a phone
using outbound over UDP sends STUN Binding requests to the port it
registered on, both to keep its NAT mapping and to learn that the mapping
changed (its XOR-MAPPED-ADDRESS no longer matches).

Only what that needs of RFC 5389: Binding requests in, success responses out
with XOR-MAPPED-ADDRESS (and FINGERPRINT when the request had one). Anything
else, or a malformed message, gets no answer.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib

MAGIC = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
_FINGERPRINT_XOR = 0x5354554E
_HEADER = struct.Struct("!HHI12s")


def _fingerprint(message: bytes) -> bytes:
    crc = (zlib.crc32(message) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
    return struct.pack("!HHI", FINGERPRINT, 4, crc)


def _has_fingerprint(data: bytes, length: int) -> bool:
    pos = 20
    end = 20 + length
    while pos + 4 <= end:
        kind, size = struct.unpack_from("!HH", data, pos)
        if kind == FINGERPRINT:
            return True
        pos += 4 + size + (-size % 4)
    return False


def stun_reply(data: bytes, host: str, port: int) -> bytes | None:
    """The Binding success response to ``data`` from (host, port), or None
    when ``data`` is not a well-formed STUN Binding request."""
    if len(data) < 20:
        return None
    kind, length, cookie, tid = _HEADER.unpack_from(data)
    if kind != BINDING_REQUEST or cookie != MAGIC or length % 4 or 20 + length != len(data):
        return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    xport = port ^ (MAGIC >> 16)
    if addr.version == 4:
        xaddr = (int(addr) ^ MAGIC).to_bytes(4, "big")
        value = struct.pack("!BBH", 0, 1, xport) + xaddr
    else:
        mask = int.from_bytes(struct.pack("!I", MAGIC) + tid, "big")
        value = struct.pack("!BBH", 0, 2, xport) + (int(addr) ^ mask).to_bytes(16, "big")
    attrs = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    fingerprint = _has_fingerprint(data, length)
    # The length in the header counts the FINGERPRINT, which covers the header.
    total = len(attrs) + (8 if fingerprint else 0)
    message = _HEADER.pack(BINDING_SUCCESS, total, MAGIC, tid) + attrs
    if fingerprint:
        message += _fingerprint(message)
    return message
