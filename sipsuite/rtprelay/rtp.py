"""Just enough RTP/RTCP header inspection to decide whom to trust.

The relay forwards payloads untouched; it looks at headers only to latch
(learn a peer's real address) safely: a source is learnt only from a packet
that is plausibly RTP, and a moved source is followed only when its SSRC and
sequence number continue the stream already seen (see session.py).  Being
strict here makes stray datagrams and port scanners harder to latch on to.
Every function returns None for anything it cannot vouch for and never raises
on any bytes.
"""

from __future__ import annotations

import struct

__all__ = ["RTCP_TYPES", "rtcp_ssrc", "rtp_header"]

_RTP_FIXED = struct.Struct("!BBHII")
_RTCP_FIXED = struct.Struct("!BBHI")
_EXT_LENGTH = struct.Struct("!H")

# SR, RR, SDES, BYE, APP (RFC 3550 section 12.1).
RTCP_TYPES = range(200, 205)

# RFC 5761 section 4: RTP payload types 64-95 would collide with RTCP packet
# types when multiplexed on one port; 72-76 are exactly SR..APP with the marker
# bit set, i.e. RTCP arriving on the RTP port.  Not RTP.
_MUX_CONFLICT = range(72, 77)


def rtp_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(version, payload_type, seq, timestamp, ssrc), or None if not RTP v2.

    Beyond the 12-byte fixed header, the CSRC list, the header extension and
    the padding count must fit in the datagram (RFC 3550 section 5.1 and A.1):
    a packet that claims more than it carries is not RTP, whatever its first
    two bits say.
    """
    n = len(data)
    if n < 12:
        return None
    b0, b1, seq, timestamp, ssrc = _RTP_FIXED.unpack_from(data)
    if b0 >> 6 != 2:
        return None
    payload_type = b1 & 0x7F
    if payload_type in _MUX_CONFLICT:
        return None
    end = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if end + 4 > n:
            return None
        (words,) = _EXT_LENGTH.unpack_from(data, end + 2)
        end += 4 + 4 * words
    if end > n:
        return None
    if b0 & 0x20:
        padding = data[n - 1]
        if padding == 0 or end + padding > n:
            return None
    return 2, payload_type, seq, timestamp, ssrc


def rtcp_ssrc(data: bytes) -> int | None:
    """The sender SSRC of an RTCP packet (the first of a compound), or None.

    Version 2, a packet type 200-204, and a length field that fits the
    datagram.  RFC 3550 A.2 would also insist on SR/RR first, but reduced-size
    RTCP (RFC 5506) sends other types alone, so any of the five is accepted.
    """
    if len(data) < 8:
        return None
    b0, packet_type, length, ssrc = _RTCP_FIXED.unpack_from(data)
    if b0 >> 6 != 2 or packet_type not in RTCP_TYPES:
        return None
    if (length + 1) * 4 > len(data):
        return None
    return ssrc
