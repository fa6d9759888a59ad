"""SDP parsing, exact round trip, and the rewriting that anchors media on a relay."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipsuite.sip.sdp import (
    SDPError,
    SessionDescription,
    connection_for,
    direction_for,
    has_private_address,
    is_hold,
    media_addresses,
    parse,
    rewrite,
)

REPO = Path(__file__).resolve().parents[2]
RFC5118_WIRE = REPO / "tests" / "data" / "rfc5118" / "wire"
SIPP_UAC_RTP = REPO / "examples" / "sipp" / "call_uac_rtp.xml"

RELAY = "203.0.113.7"
RELAY6 = "2001:db8:ffff::7"


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# RFC 4566 section 5 (the RFC 8866 example differs only in its addresses).
RFC4566 = crlf(
    "v=0\n"
    "o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5\n"
    "s=SDP Seminar\n"
    "i=A Seminar on the session description protocol\n"
    "u=http://www.example.com/seminars/sdp.pdf\n"
    "e=j.doe@example.com (Jane Doe)\n"
    "c=IN IP4 224.2.17.12/127\n"
    "t=2873397496 2873404696\n"
    "a=recvonly\n"
    "m=audio 49170 RTP/AVP 0\n"
    "m=video 51372 RTP/AVP 99\n"
    "a=rtpmap:99 h263-1998/90000\n"
)

# The INVITE body of examples/sipp/call_uac_rtp.xml, as sipp sends it (each
# line stripped of the XML indentation, CRLF) with its keywords filled in.
SIPP_TEMPLATE = (
    "v=0\n"
    "o=- 53655765 2353687637 IN IP[local_ip_type] [local_ip]\n"
    "s=-\n"
    "c=IN IP[media_ip_type] [media_ip]\n"
    "t=0 0\n"
    "m=audio [media_port] RTP/AVP 8\n"
    "a=rtpmap:8 PCMA/8000\n"
    "a=sendrecv\n"
)
SIPP_VALUES = {
    "local_ip_type": "4",
    "local_ip": "192.168.1.20",
    "media_ip_type": "4",
    "media_ip": "192.168.1.20",
    "media_port": "6000",
}


def fill_sipp(template: str) -> bytes:
    return crlf(re.sub(r"\[(\w+)\]", lambda m: SIPP_VALUES[m[1]], template))


SIPP = fill_sipp(SIPP_TEMPLATE)

ASTERISK = crlf(
    "v=0\n"
    "o=root 1821 1821 IN IP4 198.51.100.10\n"
    "s=Asterisk PBX 18.0.0\n"
    "c=IN IP4 198.51.100.10\n"
    "t=0 0\n"
    "m=audio 17228 RTP/AVP 0 8 101\n"
    "a=rtpmap:0 PCMU/8000\n"
    "a=rtpmap:8 PCMA/8000\n"
    "a=rtpmap:101 telephone-event/8000\n"
    "a=fmtp:101 0-16\n"
    "a=ptime:20\n"
    "a=maxptime:150\n"
    "a=sendrecv\n"
)

# A softphone offer sent with bare LF line endings, with RFC 3605 a=rtcp.
LINPHONE_LF = (
    b"v=0\n"
    b"o=alice 3421 1256 IN IP4 192.168.0.17\n"
    b"s=Talk\n"
    b"c=IN IP4 192.168.0.17\n"
    b"t=0 0\n"
    b"a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\n"
    b"m=audio 7078 RTP/AVP 96 0 8 101\n"
    b"a=rtpmap:96 opus/48000/2\n"
    b"a=fmtp:96 useinbandfec=1\n"
    b"a=rtpmap:101 telephone-event/8000\n"
    b"a=rtcp:7079\n"
    b"a=rtcp-fb:* trr-int 1000\n"
    b"m=video 9078 RTP/AVP 96\n"
    b"a=rtpmap:96 VP8/90000\n"
    b"a=rtcp:9079 IN IP4 192.168.0.17\n"
    b"a=rtcp-fb:96 nack pli\n"
)

IPV6 = crlf(
    "v=0\n"
    "o=- 1 1 IN IP6 2001:db8::1\n"
    "s=-\n"
    "c=IN IP6 2001:db8::1\n"
    "t=0 0\n"
    "m=audio 40000 RTP/AVP 0\n"
    "a=rtcp:40001 IN IP6 2001:db8::1\n"
)

# A WebRTC-style offer: ICE, BUNDLE, 0.0.0.0 placeholders, long attributes.
WEBRTC = crlf(
    "v=0\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\n"
    "s=-\n"
    "t=0 0\n"
    "a=group:BUNDLE 0\n"
    "a=msid-semantic: WMS\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63\n"
    "c=IN IP4 0.0.0.0\n"
    "a=rtcp:9 IN IP4 0.0.0.0\n"
    "a=ice-ufrag:EsAw\n"
    "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\n"
    "a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0\n"
    "a=setup:actpass\n"
    "a=mid:0\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\n"
    "a=sendrecv\n"
    "a=rtcp-mux\n"
    "a=rtpmap:111 opus/48000/2\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\n"
    "a=ssrc:3426317470 cname:Fn8dTvyMpXP3fUMh\n"
)

ROUND_TRIP = {
    "rfc4566": RFC4566,
    "sipp": SIPP,
    "asterisk": ASTERISK,
    "linphone-lf": LINPHONE_LF,
    "ipv6": IPV6,
    "webrtc": WEBRTC,
    "no-final-newline": SIPP.rstrip(b"\r\n"),
    "trailing-blank-line": SIPP + b"\r\n",
    "mixed-endings": b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\ns=-\r\nc=IN IP4 192.0.2.1\n",
    "odd-spacing": b"v=0 \r\no=-  1 1 IN IP4 192.0.2.1\r\nc=IN\tIP4 192.0.2.1 \r\n"
    b"m=audio  5004 RTP/AVP 0 \r\n",
    "not-utf8": b"v=0\r\ns=\xff\xfe caf\xe9\r\nc=IN IP4 192.0.2.1\r\n",
}


def wire_body(name: str) -> bytes:
    """The body of an RFC 5118 wire message (tests/data): what follows the blank line."""
    path = RFC5118_WIRE / f"{name}.dat"
    head, _, body = path.read_bytes().partition(b"\r\n\r\n")
    # expected.tsv notes that the archived messages' Content-Length does not
    # match their bodies; the wire/ copies are fixed, which this confirms.
    length = re.search(rb"\r\nContent-Length: *([0-9]+)", head, re.IGNORECASE)
    assert length is not None and int(length[1]) == len(body)
    return body


def changed_lines(before: SessionDescription, after: SessionDescription) -> dict[int, bytes]:
    assert len(before.lines) == len(after.lines)
    assert before.endings == after.endings
    return {
        i: new
        for i, (old, new) in enumerate(zip(before.lines, after.lines, strict=True))
        if old != new
    }


# -- round trip and structure ------------------------------------------------


@pytest.mark.parametrize("body", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_round_trip_is_exact(body: bytes) -> None:
    assert parse(body).to_bytes() == body


def test_rfc4566_example() -> None:
    sd = parse(RFC4566)
    origin = sd.origin
    assert origin is not None
    assert (origin.username, origin.sess_id, origin.sess_version) == (
        "jdoe",
        "2890844526",
        2890842807,
    )
    assert (origin.nettype, origin.addrtype, origin.address) == ("IN", "IP4", "10.47.16.5")
    connection = sd.connection
    assert connection is not None
    assert (connection.addrtype, connection.address, connection.ttl, connection.count) == (
        "IP4",
        "224.2.17.12",
        127,
        None,
    )
    assert sd.direction == "recvonly"
    audio, video = sd.media
    assert (audio.media, audio.port, audio.port_count, audio.proto, audio.formats) == (
        "audio",
        49170,
        None,
        "RTP/AVP",
        ("0",),
    )
    assert (video.media, video.port, video.formats) == ("video", 51372, ("99",))
    assert video.rtpmap == (b"a=rtpmap:99 h263-1998/90000",)
    assert audio.connections == video.connections == ()
    assert media_addresses(sd) == [("224.2.17.12", 49170), ("224.2.17.12", 51372)]
    assert [direction_for(sd, i) for i in range(2)] == ["recvonly", "recvonly"]
    assert not is_hold(sd, 0) and not has_private_address(sd)
    assert sd.lines[3] == b"i=A Seminar on the session description protocol"
    assert sd.newline == b"\r\n"


def test_rfc4566_example_rewrite_drops_multicast_suffix() -> None:
    sd = parse(RFC4566)
    out = rewrite(sd, [(RELAY, 30000), (RELAY, 30002)])
    assert changed_lines(sd, out) == {
        1: b"o=jdoe 2890844526 2890842808 IN IP4 10.47.16.5",
        6: b"c=IN IP4 203.0.113.7",
        9: b"m=audio 30000 RTP/AVP 0",
        10: b"m=video 30002 RTP/AVP 99",
    }
    assert out.connection is not None and out.connection.ttl is None


def test_sipp_template_is_the_one_in_the_scenario() -> None:
    xml = SIPP_UAC_RTP.read_text()
    start = xml.index("v=0")
    body = xml[start : xml.index("]]>", start)]
    lines = [line.strip() for line in body.splitlines()]
    assert "\n".join(line for line in lines if line) + "\n" == SIPP_TEMPLATE


def test_sipp_offer() -> None:
    sd = parse(SIPP)
    assert sd.origin is not None and sd.origin.sess_version == 2353687637
    (audio,) = sd.media
    assert (audio.port, audio.formats, audio.direction) == (6000, ("8",), "sendrecv")
    assert audio.rtpmap == (b"a=rtpmap:8 PCMA/8000",)
    assert media_addresses(sd) == [("192.168.1.20", 6000)]
    assert has_private_address(sd) and not is_hold(sd, 0)

    out = rewrite(sd, [(RELAY, 35000)])
    assert out.to_bytes() == (
        SIPP.replace(b"2353687637", b"2353687638")
        .replace(b"c=IN IP4 192.168.1.20", b"c=IN IP4 " + RELAY.encode())
        .replace(b"m=audio 6000", b"m=audio 35000")
    )
    assert media_addresses(out) == [(RELAY, 35000)]
    assert not has_private_address(out)
    # The parse it came from is left alone: it may be rewritten again for another branch.
    assert sd.to_bytes() == SIPP


def test_ptime_and_attributes() -> None:
    sd = parse(ASTERISK)
    assert sd.media[0].ptime == 20.0
    assert len(sd.media[0].rtpmap) == 3
    odd = parse(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 0\r\na=ptime:22.5\r\n")
    assert odd.media[0].ptime == 22.5
    bad = parse(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 0\r\na=ptime:soon\r\n")
    assert bad.media[0].ptime is None


# -- IPv6 -----------------------------------------------------------------------


def test_ipv6_sdp() -> None:
    sd = parse(IPV6)
    assert sd.connection is not None and sd.connection.addrtype == "IP6"
    (rtcp,) = sd.media[0].rtcp
    assert (rtcp.port, rtcp.addrtype, rtcp.address) == (40001, "IP6", "2001:db8::1")
    assert media_addresses(sd) == [("2001:db8::1", 40000)]

    to_v4 = rewrite(sd, [(RELAY, 30000)])
    assert changed_lines(sd, to_v4) == {
        1: b"o=- 1 2 IN IP6 2001:db8::1",
        3: b"c=IN IP4 203.0.113.7",
        5: b"m=audio 30000 RTP/AVP 0",
        6: b"a=rtcp:30001 IN IP4 203.0.113.7",
    }
    to_v6 = rewrite(parse(SIPP), [(RELAY6, 30000)])
    assert to_v6.lines[3] == b"c=IN IP6 2001:db8:ffff::7"


def test_rfc5118_ipv6_in_sdp() -> None:
    sd = parse(wire_body("ipv6-in-sdp"))
    assert sd.origin is not None
    assert (sd.origin.addrtype, sd.origin.address, sd.origin.sess_version) == (
        "IP6",
        "2001:db8::20",
        0,
    )
    assert media_addresses(sd) == [("2001:db8::20", 6000), ("2001:db8::20", 6024)]
    assert not has_private_address(sd)
    out = rewrite(sd, [(RELAY6, 20000), (RELAY6, 20002)])
    assert changed_lines(sd, out) == {
        1: b"o=assistant 971731711378798081 1 IN IP6 2001:db8::20",
        3: b"c=IN IP6 2001:db8:ffff::7",
        5: b"m=audio 20000 RTP/AVP 2",
        7: b"m=video 20002 RTP/AVP 107",
    }


def test_rfc5118_mult_ip_in_sdp() -> None:
    sd = parse(wire_body("mult-ip-in-sdp"))
    # Per-media c= lines, one IP4 one IP6, and no session-level c=.
    assert sd.connection is None
    assert [s.connection.addrtype for s in sd.media if s.connection] == ["IP4", "IP6"]
    assert media_addresses(sd) == [("192.0.2.1", 22334), ("2001:db8::1", 6024)]
    # The o= address is a domain name, which is fine: it is only an identifier.
    assert sd.origin is not None and sd.origin.address == "host.example.com"
    out = rewrite(sd, [(RELAY, 30000), (RELAY6, 30002)])
    assert changed_lines(sd, out) == {
        1: b"o=bob 280744730 28977632 IN IP4 host.example.com",
        4: b"m=audio 30000 RTP/AVP 0",
        5: b"c=IN IP4 203.0.113.7",
        6: b"m=video 30002 RTP/AVP 107",
        7: b"c=IN IP6 2001:db8:ffff::7",
    }


def test_ipv4_mapped_address_is_not_private_unless_the_ipv4_is() -> None:
    public = b"v=0\r\nc=IN IP6 ::ffff:192.0.2.2\r\nm=audio 6000 RTP/AVP 2\r\n"
    private = b"v=0\r\nc=IN IP6 ::ffff:192.168.0.2\r\nm=audio 6000 RTP/AVP 2\r\n"
    assert not has_private_address(parse(public))
    assert has_private_address(parse(private))


# -- hold ---------------------------------------------------------------------


def offer(session: str = "", media: str = "", address: str = "192.0.2.1") -> bytes:
    return crlf(
        f"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 {address}\nt=0 0\n{session}"
        f"m=audio 5004 RTP/AVP 0\n{media}"
    )


@pytest.mark.parametrize(
    ("body", "held"),
    [
        (offer(), False),
        (offer(address="0.0.0.0"), True),
        (offer(media="a=sendonly\n"), True),
        (offer(media="a=inactive\n"), True),
        (offer(media="a=recvonly\n"), False),
        (offer(media="a=sendrecv\n"), False),
        (offer(session="a=sendonly\n"), True),
        (offer(session="a=inactive\n", media="a=sendrecv\n"), False),
        (offer(media="c=IN IP4 0.0.0.0\n"), True),
    ],
)
def test_is_hold(body: bytes, held: bool) -> None:
    assert is_hold(parse(body), 0) is held


def test_hold_address_is_kept_unless_asked() -> None:
    sd = parse(offer(address="0.0.0.0", media="a=rtcp:5005 IN IP4 0.0.0.0\n"))
    kept = rewrite(sd, [(RELAY, 30000)])
    assert changed_lines(sd, kept) == {
        1: b"o=- 1 2 IN IP4 192.0.2.1",
        5: b"m=audio 30000 RTP/AVP 0",
        6: b"a=rtcp:30001 IN IP4 0.0.0.0",
    }
    assert is_hold(kept, 0)
    replaced = rewrite(sd, [(RELAY, 30000)], rewrite_hold=True)
    assert replaced.lines[3] == b"c=IN IP4 203.0.113.7"
    assert replaced.lines[6] == b"a=rtcp:30001 IN IP4 203.0.113.7"
    assert not is_hold(replaced, 0)


def test_webrtc_placeholder_address_reads_as_hold() -> None:
    # ICE offers put 0.0.0.0 in c= (RFC 8839 5.1); by the RFC 2543 rule that
    # is hold, and rewrite keeps it unless asked.
    sd = parse(WEBRTC)
    assert is_hold(sd, 0)
    assert rewrite(sd, [(RELAY, 30000)], rewrite_hold=True).lines[7] == b"c=IN IP4 203.0.113.7"


# -- a=rtcp, o=, ports ---------------------------------------------------------


def test_rtcp_rewrite_with_and_without_address() -> None:
    sd = parse(LINPHONE_LF)
    assert [(r.port, r.address) for s in sd.media for r in s.rtcp] == [
        (7079, None),
        (9079, "192.168.0.17"),
    ]
    out = rewrite(sd, [(RELAY, 40000), (RELAY, 40002)])
    assert changed_lines(sd, out) == {
        1: b"o=alice 3421 1257 IN IP4 192.168.0.17",
        3: b"c=IN IP4 203.0.113.7",
        6: b"m=audio 40000 RTP/AVP 96 0 8 101",
        10: b"a=rtcp:40001",
        12: b"m=video 40002 RTP/AVP 96",
        14: b"a=rtcp:40003 IN IP4 203.0.113.7",
    }
    # With an IPv6 relay address for video, a=rtcp follows it to IP6.  The
    # video section relied on the session-level c=, which now names the audio
    # relay address, so it gets its own c= (the only line ever added), LF-ended.
    mixed = rewrite(sd, [(RELAY, 40000), (RELAY6, 40002)]).to_bytes()
    assert (
        b"m=video 40002 RTP/AVP 96\nc=IN IP6 2001:db8:ffff::7\na=rtpmap:96 VP8/90000\n"
        b"a=rtcp:40003 IN IP6 2001:db8:ffff::7\n"
    ) in mixed


def test_lf_only_stays_lf() -> None:
    out = rewrite(parse(LINPHONE_LF), [(RELAY, 40000), (RELAY, 40002)]).to_bytes()
    assert b"\r" not in out
    assert out.count(b"\n") == LINPHONE_LF.count(b"\n")


def test_origin_version_bump() -> None:
    body = offer().replace(b"o=- 1 1 ", b"o=Sip Phone 42 18446744073709551615 ")
    sd = parse(body)
    assert sd.origin is not None
    assert (sd.origin.username, sd.origin.sess_version) == ("Sip Phone", 18446744073709551615)
    out = rewrite(sd, [(RELAY, 30000)])
    assert out.lines[1] == b"o=Sip Phone 42 18446744073709551616 IN IP4 192.0.2.1"
    assert rewrite(out, [(RELAY, 30000)]).lines[1].split()[3] == b"18446744073709551617"


def test_no_origin_is_tolerated() -> None:
    sd = parse(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5004 RTP/AVP 0\r\n")
    assert sd.origin is None
    assert rewrite(sd, [(RELAY, 30000)]).lines[1] == b"c=IN IP4 203.0.113.7"


def test_rejected_streams_and_port_count() -> None:
    body = crlf(
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"
        "m=audio 0 RTP/AVP 0\na=rtcp:5005 IN IP4 192.0.2.1\n"
        "m=video 5006/2 RTP/AVP 31\na=rtcp:5009\n"
    )
    sd = parse(body)
    assert [(s.port, s.port_count) for s in sd.media] == [(0, None), (5006, 2)]
    out = rewrite(sd, [(RELAY, 30000), (RELAY, 30002)])
    assert changed_lines(sd, out) == {
        1: b"o=- 1 2 IN IP4 192.0.2.1",
        3: b"c=IN IP4 203.0.113.7",
        # Rejected: port stays 0, its rtcp port too, but no client address is left.
        6: b"a=rtcp:5005 IN IP4 203.0.113.7",
        7: b"m=video 30002/2 RTP/AVP 31",
        8: b"a=rtcp:30003",
    }


def test_rejected_stream_without_connection_is_tolerated() -> None:
    body = crlf(
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\n"
        "m=audio 5004 RTP/AVP 0\nc=IN IP4 192.0.2.1\nm=video 0 RTP/AVP 31\n"
    )
    sd = parse(body)
    assert media_addresses(sd) == [("192.0.2.1", 5004), ("", 0)]
    assert connection_for(sd, 1) is None
    out = rewrite(sd, [(RELAY, 30000), (RELAY, 30002)])
    assert changed_lines(sd, out) == {
        1: b"o=- 1 2 IN IP4 192.0.2.1",
        4: b"m=audio 30000 RTP/AVP 0",
        5: b"c=IN IP4 203.0.113.7",
    }


# -- several m= sections with different c= ----------------------------------------


def test_multiple_sections_with_different_connections() -> None:
    body = crlf(
        "v=0\no=- 7 7 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\n"
        "m=audio 5004 RTP/AVP 0\n"
        "m=video 5006 RTP/AVP 31\nc=IN IP4 198.51.100.9\n"
        "m=application 5008 UDP/BFCP *\ni=floor control\na=floorctrl:c-only\n"
    )
    sd = parse(body)
    assert media_addresses(sd) == [
        ("10.0.0.1", 5004),
        ("198.51.100.9", 5006),
        ("10.0.0.1", 5008),
    ]
    assert has_private_address(sd)

    same = rewrite(sd, [(RELAY, 30000), (RELAY, 30002), (RELAY, 30004)])
    assert changed_lines(sd, same) == {
        1: b"o=- 7 8 IN IP4 10.0.0.1",
        3: b"c=IN IP4 203.0.113.7",
        5: b"m=audio 30000 RTP/AVP 0",
        6: b"m=video 30002 RTP/AVP 31",
        7: b"c=IN IP4 203.0.113.7",
        8: b"m=application 30004 UDP/BFCP *",
    }

    # Two sections share the session-level c= but get different relay
    # addresses: the second one gets its own c=, placed after its i= line.
    split = rewrite(sd, [(RELAY, 30000), (RELAY, 30002), (RELAY6, 30004)])
    assert split.lines[8:] == (
        b"m=application 30004 UDP/BFCP *",
        b"i=floor control",
        b"c=IN IP6 2001:db8:ffff::7",
        b"a=floorctrl:c-only",
    )
    assert media_addresses(split) == [(RELAY, 30000), (RELAY, 30002), (RELAY6, 30004)]
    assert split.to_bytes().endswith(b"a=floorctrl:c-only\r\n")


def test_added_connection_at_an_unterminated_end() -> None:
    body = crlf("v=0\nc=IN IP4 192.0.2.1\nm=audio 5004 RTP/AVP 0\nm=video 5006 RTP/AVP 31").rstrip(
        b"\r\n"
    )
    out = rewrite(parse(body), [(RELAY, 30000), (RELAY6, 30002)]).to_bytes()
    assert out.endswith(b"m=video 30002 RTP/AVP 31\r\nc=IN IP6 2001:db8:ffff::7")


def test_session_connection_follows_first_live_inheriting_section() -> None:
    body = crlf(
        "v=0\nc=IN IP4 192.0.2.1\n"
        "m=audio 5004 RTP/AVP 0\nc=IN IP4 192.0.2.9\n"
        "m=video 0 RTP/AVP 31\n"
        "m=text 5008 RTP/AVP 98\n"
    )
    out = rewrite(parse(body), [("198.51.100.1", 1000), ("198.51.100.2", 1002), (RELAY, 1004)])
    assert out.lines[1] == b"c=IN IP4 203.0.113.7"
    assert media_addresses(out) == [("198.51.100.1", 1000), (RELAY, 0), (RELAY, 1004)]


# -- tolerance and errors ---------------------------------------------------------


def test_unknown_lines_are_kept_verbatim() -> None:
    body = crlf(
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"
        "x=an unknown type\ntesting=123\n\nno equals sign at all\n"
        "m=audio 5004 RTP/AVP 0\nm =video 3227 RTP/AVP 31\n"
        'a=x-vendor:{"json": true}\na=sendrecv extra\nb=AS:64\nk=prompt\n'
    )
    sd = parse(body)
    assert sd.to_bytes() == body
    assert len(sd.media) == 1  # "m =video" is not an m= line
    assert sd.media[0].direction is None  # "sendrecv extra" is not a direction flag
    out = rewrite(sd, [(RELAY, 30000)])
    assert set(changed_lines(sd, out)) == {1, 3, 9}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"o=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n", "start with a v= line"),
        (b"\r\nv=0\r\n", "start with a v= line"),
        (b"INVITE sip:a@b SIP/2.0\r\n", "start with a v= line"),
        (b"v=1\r\n", "unsupported SDP version"),
        (b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio x RTP/AVP 0\r\n", "bad port"),
        (b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 70000 RTP/AVP 0\r\n", "out of range"),
        (b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio -1 RTP/AVP 0\r\n", "bad port"),
        (b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5004/0 RTP/AVP 0\r\n", "port count 0"),
        (b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5004\r\n", "at least"),
        (b"v=0\r\nc=IN IP5 192.0.2.1\r\n", "address type"),
        (b"v=0\r\nc=IN ip4 192.0.2.1\r\n", "address type"),
        (b"v=0\r\nc=ATM NSAP 47.0005.80\r\n", "network type"),
        (b"v=0\r\nc=IN IP4 2001:db8::1\r\n", "not an IP4 address"),
        (b"v=0\r\nc=IN IP6 192.0.2.1\r\n", "not an IP6 address"),
        (b"v=0\r\nc=IN IP4 192.0.2.999\r\n", "not an IP4 address or a domain name"),
        (b"v=0\r\nc=IN IP4 [192.0.2.1]\r\n", "not an IP4 address or a domain name"),
        (b"v=0\r\nc=IN IP4\r\n", "needs <nettype>"),
        (b"v=0\r\nc=IN IP4 192.0.2.1 x\r\n", "needs <nettype>"),
        (b"v=0\r\nc=IN IP4 224.2.1.1/x\r\n", "multicast suffix"),
        (b"v=0\r\nc=IN IP6 ff15::101/3/2\r\n", "multicast suffix"),
        (b"v=0\r\nc=IN IP4 caf\xc3\xa9.example\r\n", "not ASCII"),
        (b"v=0\r\no=- 1 1 IN IP4\r\n", "6 fields"),
        (b"v=0\r\no=- 1 one IN IP4 192.0.2.1\r\n", "sess-version"),
        (b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:\r\n", "a=rtcp"),
        (b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:x\r\n", "bad port"),
        (b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:5 IN\r\n", "a=rtcp"),
        (b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:5/2\r\n", "port count"),
        (b"v=0\r\nm=audio 5004 RTP/AVP 0\r\n", "no c= line"),
    ],
)
def test_bad_input_raises_sdp_error(body: bytes, message: str) -> None:
    with pytest.raises(SDPError, match=re.escape(message)):
        parse(body)


def test_sdp_error_is_a_value_error() -> None:
    assert issubclass(SDPError, ValueError)


def test_domain_name_connection_is_accepted() -> None:
    sd = parse(b"v=0\r\nc=IN IP4 media.example.com\r\nm=audio 5004 RTP/AVP 0\r\n")
    assert media_addresses(sd) == [("media.example.com", 5004)]
    assert not has_private_address(sd) and not is_hold(sd, 0)


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ([], "0 endpoints for 1"),
        ([(RELAY, 1), (RELAY, 2)], "2 endpoints for 1"),
        ([("relay.example.com", 30000)], "not an IP address"),
        ([("[2001:db8::1]", 30000)], "not an IP address"),
        ([(RELAY, 65536)], "out of range"),
        ([(RELAY, -2)], "out of range"),
        ([(RELAY, 65535)], "no port for a=rtcp"),
    ],
)
def test_rewrite_rejects_bad_arguments(endpoints: list[tuple[str, int]], message: str) -> None:
    sd = parse(IPV6)
    with pytest.raises(ValueError, match=re.escape(message)):
        rewrite(sd, endpoints)


# -- private addresses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "private"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("192.168.100.1", True),
        ("100.64.0.1", True),
        ("100.127.255.254", True),
        ("100.128.0.1", False),
        ("169.254.10.10", True),
        ("192.0.2.1", False),
        ("8.8.8.8", False),
        ("0.0.0.0", False),
        ("fd12:3456::1", True),
        ("fc00::1", True),
        ("fe80::1", True),
        ("2001:db8::1", False),
        ("::ffff:10.0.0.1", True),
        ("pbx.example.com", False),
    ],
)
def test_has_private_address(address: str, private: bool) -> None:
    addrtype = "IP6" if ":" in address else "IP4"
    body = f"v=0\r\nc=IN {addrtype} {address}\r\nm=audio 5004 RTP/AVP 0\r\n".encode()
    assert has_private_address(parse(body)) is private


def test_private_address_only_counts_where_it_applies() -> None:
    # The session-level c= is private but every section has its own public one.
    body = crlf("v=0\nc=IN IP4 192.168.1.1\nm=audio 5004 RTP/AVP 0\nc=IN IP4 192.0.2.1\n")
    assert not has_private_address(parse(body))
    assert has_private_address(parse(b"v=0\r\nc=IN IP4 10.0.0.1\r\n"))


# -- properties -------------------------------------------------------------------

# Lines an SDP parser meets: mostly well formed (so that many bodies parse
# and reach rewrite), some malformed, some stray.
GOOD_LINES = [
    b"o=- 1 1 IN IP4 192.0.2.1",
    b"s=-",
    b"t=0 0",
    b"c=IN IP4 192.0.2.1",
    b"c=IN IP4 0.0.0.0",
    b"c=IN IP6 2001:db8::1",
    b"c=IN IP4 224.2.1.1/127/3",
    b"c=IN IP4 10.0.0.1",
    b"c=IN IP4 pbx.example.com",
    b"m=audio 5004 RTP/AVP 0",
    b"m=video 0 RTP/AVP 31",
    b"m=audio 5004/2 RTP/AVP",
    b"a=rtcp:5005",
    b"a=rtcp:5005 IN IP4 192.0.2.1",
    b"a=rtcp:5005 IN IP6 ::",
    b"a=rtcp:9 IN IP4 0.0.0.0",
    b"a=sendonly",
    b"a=inactive",
    b"a=ptime:20",
    b"a=rtpmap:0 PCMU/8000",
    b"i=info",
    b"x=unknown",
    b"",
    b" ",
    b"\xff\xfe",
]
BAD_LINES = [b"v=", b"v=0", b"o=a b c", b"c=IN", b"m=audio 99999 RTP/AVP 0", b"a=rtcp:x"]

sdp_like = st.builds(
    lambda first, rest, endings, tail: (
        b"".join(line + ending for line, ending in zip([first, *rest], endings, strict=False))
        + tail
    ),
    st.sampled_from([b"v=0", b"v=0 ", b"v=1", b"o=x"]),
    st.lists(
        st.one_of(
            st.sampled_from(GOOD_LINES * 8 + BAD_LINES),
            st.binary(max_size=20).map(lambda b: b"a=" + b),
        ),
        max_size=20,
    ),
    st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=21, max_size=21),
    st.sampled_from([b"", b"\r", b"a=x"]),
)


MEDIA_LINES = [line for line in GOOD_LINES if not line.startswith(b"m=")]
M_LINES = [b"m=audio 5004 RTP/AVP 0", b"m=video 0 RTP/AVP 31", b"m=audio 5004/2 RTP/AVP"]

# Offers shaped like real ones (v=, o=, session lines, then m= sections),
# so that most of them parse and the rewrite property sees several sections;
# inside a section lines end in LF whatever the rest uses, as in a mixed body.
offer_like = st.builds(
    lambda session, sections, ending: ending.join([b"v=0", *session, *sections]) + ending,
    st.lists(st.sampled_from(MEDIA_LINES), max_size=6).map(lambda ls: [b"c=IN IP4 192.0.2.1", *ls]),
    st.lists(
        st.builds(
            lambda m, ls: b"\n".join([m, *ls]),
            st.sampled_from(M_LINES),
            st.lists(st.sampled_from(MEDIA_LINES), max_size=6),
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([b"\r\n", b"\n"]),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), sdp_like, offer_like))
def test_parse_never_raises_anything_but_sdp_error(body: bytes) -> None:
    try:
        sd = parse(body)
    except SDPError:
        return
    assert sd.to_bytes() == body


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(sdp_like, offer_like), st.data())
def test_rewrite_touches_only_what_it_must(body: bytes, data: st.DataObject) -> None:
    try:
        sd = parse(body)
    except SDPError:
        return
    endpoints = [
        (data.draw(st.sampled_from([RELAY, RELAY6])), data.draw(st.integers(0, 65534)))
        for _ in sd.media
    ]
    out = rewrite(sd, endpoints, rewrite_hold=data.draw(st.booleans()))
    assert len(out.media) == len(sd.media)
    assert [s.port for s in out.media] == [
        port if section.port else 0 for section, (_, port) in zip(sd.media, endpoints, strict=True)
    ]
    # Lines other than o=, c=, m= and a=rtcp come through unchanged and in order.
    keep = re.compile(rb"[ocm]=|a=rtcp:")
    assert [line for line in out.lines if not keep.match(line)] == [
        line for line in sd.lines if not keep.match(line)
    ]
