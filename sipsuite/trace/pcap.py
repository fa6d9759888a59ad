"""A call's recorded SIP messages as a pcap file that Wireshark and tshark
open as SIP.

The recorder keeps messages, not packets, so the packets are made up from
what it knows: a Linux "cooked" link header (no MAC addresses to invent),
an IPv4 or IPv6 header from the recorded local and remote addresses, and a
UDP header, or for TCP and TLS a TCP header whose sequence numbers grow
with each message of the flow (the TLS ones are written as the plaintext
TCP they carried: the recorder sees SIP, not records).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from typing import Any, BinaryIO

__all__ = ["LINKTYPE_LINUX_SLL", "packets", "write_pcap"]

LINKTYPE_LINUX_SLL = 113
_SLL_HOST, _SLL_OUTGOING = 0, 4
_ETH_IPV4, _ETH_IPV6 = 0x0800, 0x86DD
_UDP, _TCP = 17, 6


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return ipaddress.IPv4Address("0.0.0.0")  # a name, not an address: nothing better to say


def packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes, transport: str,
           seq: int = 0, ack: int = 0) -> tuple[int, bytes]:
    """(ethertype, IP packet) carrying ``payload`` from ``src`` to ``dst``."""
    s, d = _address(src[0]), _address(dst[0])
    if s.version != d.version:  # an IPv4-mapped peer on an IPv6 socket
        s = ipaddress.IPv6Address(f"::ffff:{s}") if s.version == 4 else s
        d = ipaddress.IPv6Address(f"::ffff:{d}") if d.version == 4 else d
    sport, dport = src[1] & 0xFFFF, dst[1] & 0xFFFF
    if transport == "udp":
        proto = _UDP
        head = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    else:
        proto = _TCP
        # PSH|ACK, a window, no options.
        head = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                           5 << 4, 0x18, 65535, 0, 0)
    segment_len = len(head) + len(payload)
    pseudo = (s.packed + d.packed + struct.pack("!BBH", 0, proto, segment_len) if s.version == 4
              else s.packed + d.packed + struct.pack("!IxxxB", segment_len, proto))
    check = _checksum(pseudo + head + payload)
    if proto == _UDP:
        head = head[:6] + struct.pack("!H", check or 0xFFFF)
    else:
        head = head[:16] + struct.pack("!H", check) + head[18:]
    if s.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + segment_len, 0, 0x4000, 64, proto, 0,
                         s.packed, d.packed)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        return _ETH_IPV4, ip + head + payload
    ip = struct.pack("!IHBB16s16s", 6 << 28, segment_len, proto, 64, s.packed, d.packed)
    return _ETH_IPV6, ip + head + payload


def packets(events: Iterable[dict[str, Any]]) -> list[tuple[float, bool, int, bytes]]:
    """(time, outgoing, ethertype, IP packet) for each SIP event of a trace
    (the dicts of ``calls.trace``)."""
    out: list[tuple[float, bool, int, bytes]] = []
    seqs: dict[tuple[Any, ...], int] = {}
    for e in events:
        if e.get("type") != "sip":
            continue
        payload = e["data"].encode("latin-1")
        local, remote = (e["local"][0], int(e["local"][1])), (e["remote"][0], int(e["remote"][1]))
        outgoing = e["dir"] == "out"
        src, dst = (local, remote) if outgoing else (remote, local)
        transport = "udp" if e["transport"] == "udp" else "tcp"
        seq = ack = 0
        if transport == "tcp":
            seq = seqs.get((src, dst), 1)
            seqs[(src, dst)] = seq + len(payload)
            ack = seqs.get((dst, src), 1)
        ethertype, ip = packet(src, dst, payload, transport, seq, ack)
        out.append((float(e["t"]), outgoing, ethertype, ip))
    return out


def write_pcap(stream: BinaryIO, events: Iterable[dict[str, Any]]) -> int:
    """Write the SIP events as a pcap (microsecond times); returns the
    number of packets written."""
    stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_LINUX_SLL))
    n = 0
    for t, outgoing, ethertype, ip in packets(events):
        sll = struct.pack("!HHH8sH", _SLL_OUTGOING if outgoing else _SLL_HOST, 772, 0, b"",
                          ethertype)
        frame = sll + ip
        sec = int(t)
        usec = int(round((t - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        stream.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
        stream.write(frame)
        n += 1
    return n
