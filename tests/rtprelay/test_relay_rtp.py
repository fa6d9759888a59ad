"""RTP/RTCP header inspection: what counts as RTP v2 and as RTCP."""

from __future__ import annotations

import struct

import pytest

from sipsuite.rtprelay.rtp import rtcp_ssrc, rtp_header


def rtp(
    seq: int = 1,
    ssrc: int = 0x11223344,
    pt: int = 0,
    ts: int = 160,
    payload: bytes = b"\xff" * 20,
    b0: int = 0x80,
    marker: bool = False,
) -> bytes:
    return struct.pack("!BBHII", b0, pt | (0x80 if marker else 0), seq, ts, ssrc) + payload


def rtcp(pt: int = 200, ssrc: int = 0xCAFE, words: int = 6, extra: bytes = b"") -> bytes:
    body = b"\0" * (4 * words - 4)
    return struct.pack("!BBHI", 0x80, pt, words, ssrc) + body + extra


def test_plain_packet() -> None:
    assert rtp_header(rtp(seq=7, ssrc=99, pt=8, ts=1234)) == (2, 8, 7, 1234, 99)


def test_marker_bit_is_not_payload_type() -> None:
    assert rtp_header(rtp(pt=101, marker=True)) == (2, 101, 1, 160, 0x11223344)


def test_header_only_is_enough() -> None:
    assert rtp_header(rtp(payload=b"")) is not None


def test_too_short() -> None:
    assert rtp_header(rtp()[:11]) is None
    assert rtp_header(b"") is None


@pytest.mark.parametrize("version", [0, 1, 3])
def test_other_versions(version: int) -> None:
    assert rtp_header(rtp(b0=version << 6)) is None


def test_csrc_list_must_fit() -> None:
    assert rtp_header(rtp(b0=0x82, payload=b"\0" * 8)) is not None
    assert rtp_header(rtp(b0=0x82, payload=b"\0" * 7)) is None
    assert rtp_header(rtp(b0=0x8F, payload=b"")) is None


def test_extension_must_fit() -> None:
    ext = struct.pack("!HH", 0xBEDE, 2) + b"\0" * 8
    assert rtp_header(rtp(b0=0x90, payload=ext)) is not None
    assert rtp_header(rtp(b0=0x90, payload=ext[:-1])) is None
    assert rtp_header(rtp(b0=0x90, payload=b"\0\0")) is None


def test_padding_must_be_sane() -> None:
    assert rtp_header(rtp(b0=0xA0, payload=b"\1\2\3\3")) is not None
    assert rtp_header(rtp(b0=0xA0, payload=b"\1\2\3\0")) is None  # zero padding count
    assert rtp_header(rtp(b0=0xA0, payload=b"\1\2\3\x09")) is None  # more than the payload


@pytest.mark.parametrize("pt", [72, 73, 74, 75, 76])
def test_rtcp_on_the_rtp_port_is_not_rtp(pt: int) -> None:
    # RFC 5761: SR..APP with the marker bit read as RTP payload types 72-76.
    assert rtp_header(rtp(pt=pt)) is None
    assert rtp_header(rtcp()) is None


def test_accepts_memoryview_and_bytearray() -> None:
    data = rtp(seq=3)
    assert rtp_header(memoryview(data)) == rtp_header(data)
    assert rtp_header(bytearray(data)) == rtp_header(data)


@pytest.mark.parametrize("pt", [200, 201, 202, 203, 204])
def test_rtcp_types(pt: int) -> None:
    assert rtcp_ssrc(rtcp(pt=pt, ssrc=0xDEADBEEF)) == 0xDEADBEEF


@pytest.mark.parametrize("pt", [199, 205, 0, 72])
def test_not_rtcp_types(pt: int) -> None:
    assert rtcp_ssrc(rtcp(pt=pt)) is None


def test_rtcp_version_length_and_size() -> None:
    good = rtcp()
    assert rtcp_ssrc(b"\x40" + good[1:]) is None
    assert rtcp_ssrc(good[:7]) is None
    assert rtcp_ssrc(good[:-1]) is None  # length field claims more than there is
    assert rtcp_ssrc(good + rtcp(pt=202)) == 0xCAFE  # compound: first packet's SSRC
    assert rtcp_ssrc(rtp()) is None  # RTP on the RTCP port
