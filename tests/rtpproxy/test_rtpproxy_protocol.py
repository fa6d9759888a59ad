"""The RTPProxy control protocol codec (sipsuite/rtpproxy/protocol.py).

The Kamailio strings below are rebuilt from kamailio 5.6's
src/modules/rtpproxy/rtpproxy.c and rtpproxy_stream.c (the iovec each function
sends: cookie "<pid>_<seq> ", no trailing newline); error numbers are from
sippy/rtpproxy src/rtpp_command_ecodes.h.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipsuite.rtpproxy.controller import (
    build_capability_check,
    build_command,
    build_delete,
    build_delete_all,
    build_info,
    build_lookup,
    build_modifiers,
    build_query,
    build_update,
    build_version,
    parse_query_reply,
    parse_reply,
)
from sipsuite.rtpproxy.protocol import (
    BASE_VERSION,
    CAPABILITIES,
    KAMAILIO_CAPABILITIES,
    Command,
    ErrorCode,
    ProtocolError,
    format_capability,
    format_error,
    format_info,
    format_ok,
    format_port,
    format_query,
    format_reply,
    format_version,
    media_tag,
    parse_command,
    split_tag,
)

CALL_ID = "a84b4c76e66710@pc33.atlanta.com"


def parse(data: bytes, datagram: bool = True) -> Command:
    return parse_command(data, datagram=datagram)


def error_of(data: bytes, datagram: bool = True) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_command(data, datagram=datagram)
    return info.value


# -- what Kamailio 5.6 sends --------------------------------------------------------


def test_version_probe() -> None:
    cmd = parse(b"31337_0 V")
    assert (cmd.cookie, cmd.verb, cmd.modifiers, cmd.args, cmd.known) == (
        "31337_0", "V", "", (), True)


@pytest.mark.parametrize("cap", KAMAILIO_CAPABILITIES)
def test_capability_checks(cap: str) -> None:
    cmd = parse(f"31337_1 VF {cap}".encode())
    assert (cmd.verb, cmd.capability, cmd.modifiers) == ("VF", cap, "")
    assert cap in CAPABILITIES


def test_offer_with_codecs() -> None:
    # rtpproxy_offer() on an INVITE, one audio stream, node supports 20081102.
    cmd = parse(b"12345_1 Uc0,8,101 " + CALL_ID.encode() + b" 192.0.2.1 16000 fromtag;1")
    assert cmd.verb == "U" and cmd.cookie == "12345_1"
    assert (cmd.call_id, cmd.remote_address, cmd.remote_port) == (CALL_ID, "192.0.2.1", "16000")
    assert cmd.remote == ("192.0.2.1", 16000) and not cmd.on_hold
    assert (cmd.from_tag, cmd.to_tag) == ("fromtag;1", None)
    assert cmd.ul is not None and cmd.ul.raw == "c0,8,101"
    assert cmd.ul.codecs == (0, 8, 101)
    assert cmd.ul.asymmetric is None and cmd.ul.ptime is None and not cmd.ul.ipv6


def test_offer_with_flags_repacketization_and_codecs() -> None:
    # Flags "aiez20" (node supports 20071116): opts "UAIE", rep "Z20", pt "c18".
    cmd = parse(b"12345_2 UAIEZ20c18 cid 192.0.2.1 16000 ft;1")
    assert cmd.ul is not None
    assert (cmd.ul.asymmetric, cmd.ul.bridge, cmd.ul.ptime, cmd.ul.codecs) == (
        True, "IE", 20, (18,))


def test_flag_w_sends_s_which_means_symmetric_not_weak() -> None:
    cmd = parse(b"12345_3 UAS cid 192.0.2.1 16000 ft;1")
    assert cmd.ul is not None
    assert cmd.ul.asymmetric is False and not cmd.ul.weak  # the later letter wins
    weak = parse(b"1 Uw cid 192.0.2.1 16000 ft;1").ul
    assert weak is not None and weak.weak and weak.asymmetric is None


def test_answer_lookup_with_both_tags() -> None:
    # rtpproxy_answer() on a 200 OK: L, tags not swapped, medianum on both.
    cmd = parse(b"12345_4 Lc0,8 " + CALL_ID.encode() + b" 198.51.100.7 30000 fromtag;1 totag;1")
    assert (cmd.verb, cmd.from_tag, cmd.to_tag) == ("L", "fromtag;1", "totag;1")
    assert cmd.remote == ("198.51.100.7", 30000)


def test_ipv6_streams_repeat_the_6() -> None:
    # force_rtp_proxy appends '6' once per IPv6 stream, so stream 2 carries "66".
    first = parse(b"1_5 U6c0 cid 2001:db8::1 49170 ft;1")
    second = parse(b"1_6 U66c0 cid 2001:db8::1 49172 ft;2")
    for cmd, port in ((first, 49170), (second, 49172)):
        assert cmd.ul is not None and cmd.ul.ipv6
        assert cmd.remote == ("2001:db8::1", port)


@pytest.mark.parametrize("mods,bridge", [("IEc0", "IE"), ("EI6c0", "EI")])
def test_autobridge_flag_x(mods: str, bridge: str) -> None:
    addr = "2001:db8::5" if "6" in mods else "192.0.2.5"
    cmd = parse(f"1 U{mods} cid {addr} 4000 ft;1".encode())
    assert cmd.ul is not None and cmd.ul.bridge == bridge


def test_timeout_socket_after_to_tag() -> None:
    # Kamailio's timeout_socket: 7 tokens mean TOTAG SOCKET (rtpproxy 1.x reading).
    cmd = parse(b"1_7 Uc0 cid 192.0.2.1 16000 ft;1 tt;1 unix:/run/kamailio/rtpp_timeout")
    assert (cmd.to_tag, cmd.notify_socket, cmd.notify_tag) == (
        "tt;1", "unix:/run/kamailio/rtpp_timeout", None)
    full = parse(b"1 U cid 192.0.2.1 16000 ft;1 tt;1 udp:127.0.0.1:9 tag%20one")
    assert (full.notify_socket, full.notify_tag) == ("udp:127.0.0.1:9", "tag one")


def test_via_branch_is_part_of_the_call_id() -> None:
    cmd = parse(b"1 Uc0 cid;z9hG4bK776asdhds 192.0.2.1 16000 ft;1")
    assert cmd.call_id == "cid;z9hG4bK776asdhds"


def test_hold_address() -> None:
    cmd = parse(b"1 Uc0 cid 0.0.0.0 16000 ft;1")
    assert cmd.remote is None and cmd.on_hold


@pytest.mark.parametrize("data,to_tag", [
    (b"12345_9 D " + CALL_ID.encode() + b" fromtag totag", "totag"),
    (b"12345_9 D " + CALL_ID.encode() + b" fromtag", None),
])
def test_delete(data: bytes, to_tag: str | None) -> None:
    cmd = parse(data)
    assert (cmd.verb, cmd.call_id, cmd.from_tag, cmd.to_tag, cmd.weak) == (
        "D", CALL_ID, "fromtag", to_tag, False)
    assert parse(b"1 Dw cid ft").weak


def test_query_as_rtpstat_sends_it() -> None:
    cmd = parse(b"12345_10 Q cid fromtag;1 totag")
    assert (cmd.verb, cmd.from_tag, cmd.to_tag, cmd.stats, cmd.verbose) == (
        "Q", "fromtag;1", "totag", (), False)
    assert parse(b"12345_11 Q cid fromtag").to_tag is None
    named = parse(b"1 Qv cid ft tt ttl npkts_ina nrelayed")
    assert named.verbose and named.stats == ("ttl", "npkts_ina", "nrelayed")


def test_record_play_stop() -> None:
    rec = parse(b"1 R cid fromtag totag")
    assert (rec.verb, rec.from_tag, rec.to_tag, rec.single_file) == ("R", "fromtag", "totag", False)
    play = parse(b"1 P3 cid welcome.wav session fromtag;1 totag;1")
    assert (play.play_count, play.name, play.play_codecs, play.from_tag, play.to_tag) == (
        3, "welcome.wav", "session", "fromtag;1", "totag;1")
    forever = parse(b"1 P-1 cid moh session fromtag;1 ")  # Kamailio leaves a space
    assert forever.play_count == -1 and forever.to_tag is None
    stop = parse(b"1 S cid fromtag;1 ")
    assert (stop.verb, stop.from_tag, stop.to_tag) == ("S", "fromtag;1", None)


def test_unix_socket_mode_has_no_cookie() -> None:
    # unix: sockets: Kamailio writes the command without the cookie iovec.
    cmd = parse(b"Uc0,8 cid 192.0.2.1 16000 ft;1", datagram=False)
    assert cmd.cookie == "" and cmd.verb == "U"
    assert parse(b"V", datagram=False).verb == "V"
    assert format_version("") == b"20040107\n"


def test_other_verbs() -> None:
    assert parse(b"1 I").verb == "I"
    info = parse(b"1 Ibl")
    assert info.brief and info.load
    assert parse(b"1 X").verb == "X"
    assert parse(b"1 Gv nsess_created").stats == ("nsess_created",)
    copy = parse(b"1 Cs cid /tmp/rec ft tt")
    assert (copy.name, copy.from_tag, copy.to_tag, copy.single_file) == (
        "/tmp/rec", "ft", "tt", True)
    assert parse(b"1 Na cid ft").all_streams


def test_verbs_are_case_insensitive_and_whitespace_is_any_of_four() -> None:
    cmd = parse(b"1\tu\r\ncid  192.0.2.1 16000 ft\n")
    assert (cmd.verb, cmd.call_id, cmd.from_tag) == ("U", "cid", "ft")
    assert parse(b"1 vf 20081102").verb == "VF"


def test_unknown_verb_parses_flagged() -> None:
    cmd = parse(b"c Zq a b")
    assert (cmd.known, cmd.verb, cmd.modifiers, cmd.args) == (False, "Z", "q", ("a", "b"))


def test_subcommands_kept_for_u_l_q() -> None:
    cmd = parse(b"1 U cid 192.0.2.1 16000 ft && M4:1 && G")
    assert cmd.subcommands == (("M4:1",), ("G",))


def test_tag_helpers() -> None:
    assert split_tag("abc;2") == ("abc", 2)
    assert split_tag("abc") == ("abc", None)
    assert split_tag("a;b") == ("a;b", None)
    assert media_tag("abc", 1) == "abc;1" and media_tag("abc", None) == "abc"


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize("data,code,cookie", [
    (b"", ErrorCode.PARSE_1, ""),
    (b"  \r\n", ErrorCode.PARSE_1, ""),
    (b"cookie", ErrorCode.PARSE_1, "cookie"),
    (b"cookie && V", ErrorCode.PARSE_1, "cookie"),
    (b"c U cid 192.0.2.1 16000 f\0", ErrorCode.PARSE_1, "c"),
    (b"c\0 V", ErrorCode.PARSE_1, ""),
    (b"c G" + b" x" * 19, ErrorCode.PARSE_1, "c"),
    (b"c U cid 192.0.2.1 16000", ErrorCode.PARSE_NARGS, "c"),
    (b"c L cid 192.0.2.1 16000 f t x", ErrorCode.PARSE_NARGS, "c"),
    (b"c U cid 192.0.2.1 16000 f t s g x", ErrorCode.PARSE_NARGS, "c"),
    (b"c D cid", ErrorCode.PARSE_NARGS, "c"),
    (b"c VF", ErrorCode.PARSE_NARGS, "c"),
    (b"c V 20040107", ErrorCode.PARSE_NARGS, "c"),
    (b"c Vx", ErrorCode.PARSE_MODS, "c"),
    (b"c VFx 20050322", ErrorCode.PARSE_MODS, "c"),
    (b"c Xa", ErrorCode.PARSE_MODS, "c"),
    (b"c Sx cid ft", ErrorCode.PARSE_MODS, "c"),
    (b"c D cid ft && G", ErrorCode.PARSE_SUBC, "c"),
    (b"c Rsx cid ft", ErrorCode.PARSE_2, "c"),
    (b"c Nax cid ft", ErrorCode.PARSE_2, "c"),
    (b"c Rx cid ft", ErrorCode.PARSE_3, "c"),
    (b"c Nq cid ft", ErrorCode.PARSE_3, "c"),
    (b"c Dx cid ft", ErrorCode.PARSE_4, "c"),
    (b"c Gx", ErrorCode.PARSE_5, "c"),
    (b"c U cid 192.0.2.1 16000 f t s bad%zz", ErrorCode.PARSE_10, "c"),
    (b"c UIEE cid 192.0.2.1 16000 f", ErrorCode.PARSE_11, "c"),
    (b"c UEII cid 192.0.2.1 16000 f", ErrorCode.PARSE_12, "c"),
    (b"c UZ cid 192.0.2.1 16000 f", ErrorCode.PARSE_13, "c"),
    (b"c UZ0 cid 192.0.2.1 16000 f", ErrorCode.PARSE_13, "c"),
    (b"c UZ1000 cid 192.0.2.1 16000 f", ErrorCode.PARSE_13, "c"),
    (b"c UZ" + b"9" * 5000 + b" cid 192.0.2.1 16000 f", ErrorCode.PARSE_13, "c"),
    (b"c Uc cid 192.0.2.1 16000 f", ErrorCode.PARSE_14, "c"),
    (b"c Uc0c8 cid 192.0.2.1 16000 f", ErrorCode.PARSE_14, "c"),
    (b"c UL cid 192.0.2.1 16000 f", ErrorCode.PARSE_15, "c"),
    (b"c UL[::1 cid 192.0.2.1 16000 f", ErrorCode.PARSE_15, "c"),
    (b"c UR cid 192.0.2.1 16000 f", ErrorCode.PARSE_16, "c"),
    (b"c Px cid p session ft", ErrorCode.PARSE_6, "c"),
    (b"c Ix", ErrorCode.PARSE_7, "c"),
    (b"c Qx cid ft", ErrorCode.PARSE_8, "c"),
    (b"c UL999.1.1.1 cid 192.0.2.1 16000 f", ErrorCode.INVLARG_1, "c"),
    (b"c UR1.2.3.400 cid 192.0.2.1 16000 f", ErrorCode.INVLARG_2, "c"),
    (b"c Uq cid 192.0.2.1 16000 f", ErrorCode.INVLARG_5, "c"),
    (b"c U cid 192.0.2.999 16000 f", ErrorCode.INVLARG_7, "c"),
    (b"c U cid 192.0.2.1 http f", ErrorCode.INVLARG_7, "c"),
    (b"c U cid 192.0.2.1 65536 f", ErrorCode.INVLARG_7, "c"),
    (b"c U cid 2001:db8::1 16000 f", ErrorCode.INVLARG_7, "c"),  # IPv6 without '6'
    (b"c U6 cid 192.0.2.1 16000 f", ErrorCode.INVLARG_7, "c"),  # '6' with IPv4
    (b"c Q cid ft tt bogus", ErrorCode.QRYFAIL, "c"),
])
def test_malformed_commands(data: bytes, code: ErrorCode, cookie: str) -> None:
    err = error_of(data)
    assert (err.code, err.cookie) == (int(code), cookie)
    assert err.reply() == format_error(cookie, code)


def test_error_codes_are_rtpproxys_numbers() -> None:
    assert [int(c) for c in (ErrorCode.CMDUNKN, ErrorCode.PARSE_NARGS, ErrorCode.PARSE_1,
                             ErrorCode.SESUNKN, ErrorCode.LSTFAIL_1, ErrorCode.LSTFAIL_2)] == [
        0, 1, 5, 50, 71, 72]


def test_implausible_address_is_ignored_like_rtpproxy() -> None:
    # Outside IS_IPSTR_VALID's length bounds rtpproxy neither resolves nor complains.
    cmd = parse(b"c U cid foo 16000 f")
    assert cmd.remote is None and not cmd.on_hold


def test_local_and_remote_address_modifiers() -> None:
    cmd = parse(b"c UL[2001:db8::9]R192.0.2.8N cid 192.0.2.1 16000 f")
    assert cmd.ul is not None
    assert (cmd.ul.local_address, cmd.ul.remote_hint, cmd.ul.new_port) == (
        "2001:db8::9", "192.0.2.8", True)


# -- replies -----------------------------------------------------------------------


def test_reply_formats() -> None:
    assert format_reply("12345_1", "0") == b"12345_1 0\n"
    assert format_reply("", "0\n") == b"0\n"
    assert format_error("12345_1", ErrorCode.LSTFAIL_2) == b"12345_1 E72\n"
    assert format_ok("k") == b"k 0\n"
    assert format_version("k") == b"k " + BASE_VERSION.encode() + b"\n"
    assert format_capability("k", True) == b"k 1\n"
    assert format_capability("k", False) == b"k 0\n"
    assert format_port("k", 35000, "203.0.113.5") == b"k 35000 203.0.113.5\n"
    assert format_port("k", 35000, "2001:db8::7") == b"k 35000 2001:db8::7 6\n"
    assert format_port("k", 0) == b"k 0\n"


def test_query_reply_field_order() -> None:
    stats = {"ttl": 58, "npkts_ina": 100, "npkts_ino": 98, "nrelayed": 197, "ndropped": 1}
    assert format_query("k", stats) == b"k 58 100 98 197 1\n"
    assert format_query("k", stats, verbose=True) == (
        b"k ttl=58 npkts_ina=100 npkts_ino=98 nrelayed=197 ndropped=1\n")
    assert format_query("k", {"rtpa_javg": 1.5}, names=["rtpa_javg"]) == b"k 1.500000\n"
    for verbose in (False, True):
        reply = parse_reply(format_query("k", stats, verbose=verbose))
        assert parse_query_reply(reply.body) == stats


def test_info_reply() -> None:
    data = format_info("k", 10, 2, 4, 1000, 990, average_load=0.25)
    assert data == (b"k sessions created: 10\nactive sessions: 2\nactive streams: 4\n"
                    b"packets received: 1000\npackets transmitted: 990\naverage load: 0.250000\n")
    assert format_info("", 0, 0, 0, 0, 0).count(b"\n") == 5


def test_reply_parse_as_kamailio_reads_it() -> None:
    v4 = parse_reply(b"12345_1 35000 203.0.113.5\n")
    assert (v4.cookie, v4.port, v4.address, v4.ipv6, v4.error) == (
        "12345_1", 35000, "203.0.113.5", False, None)
    v6 = parse_reply(b"12345_1 35000 2001:db8::7 6\n")
    assert (v6.port, v6.address, v6.ipv6) == (35000, "2001:db8::7", True)
    bare = parse_reply(b"12345_1 35000\n")
    assert (bare.port, bare.address) == (35000, None)
    err = parse_reply(b"12345_1 E71\n")
    assert (err.error, err.port, err.number) == (71, None, None)
    assert parse_reply(b"20040107\n", datagram=False).number == 20040107
    assert parse_reply(b"E5\n").cookie == ""  # a cookie-less syntax error reply
    sub = parse_reply(b"k 35000 203.0.113.5 && 0\n")
    assert sub.fields == ("35000", "203.0.113.5")


# -- client builders ---------------------------------------------------------------


def test_builders_reproduce_kamailio_bytes() -> None:
    assert build_version("12345_0") == b"12345_0 V"
    assert build_capability_check("12345_1", "20050322") == b"12345_1 VF 20050322"
    assert build_update("12345_2", CALL_ID, "192.0.2.1", 16000, media_tag("fromtag", 1),
                        modifiers="c0,8,101") == (
        b"12345_2 Uc0,8,101 " + CALL_ID.encode() + b" 192.0.2.1 16000 fromtag;1")
    assert build_lookup("k", "cid", "192.0.2.1", 16000, "ft;1", "tt;1", modifiers="S") == (
        b"k LS cid 192.0.2.1 16000 ft;1 tt;1")
    assert build_delete("k", "cid", "ft", "tt") == b"k D cid ft tt"
    assert build_delete("", "cid", "ft", weak=True) == b"Dw cid ft"
    assert build_query("k", "cid", "ft;1", "tt") == b"k Q cid ft;1 tt"
    assert build_query("k", "cid", "ft", "tt", stats=["ttl"], verbose=True) == (
        b"k Qv cid ft tt ttl")
    assert build_info("k", brief=True) == b"k Ib"
    assert build_delete_all("k") == b"k X"
    assert build_update("k", "c", "192.0.2.1", 1, "f", "t", notify_socket="s",
                        notify_tag="a b") == b"k U c 192.0.2.1 1 f t s a%20b"


def test_build_modifiers() -> None:
    assert build_modifiers(asymmetric=True, bridge="IE", ptime=20, codecs=[0, 8, 101]) == (
        "AIEZ20c0,8,101")
    assert build_modifiers(asymmetric=False, ipv6=True, weak=True, new_port=True) == "S6WN"
    with pytest.raises(ValueError):
        build_modifiers(bridge="IEI")
    with pytest.raises(ValueError):
        build_modifiers(ptime=0)


@pytest.mark.parametrize("bad", ["", "a b", "x\ny", "&&", "nul\0"])
def test_builders_refuse_non_tokens(bad: str) -> None:
    with pytest.raises(ValueError):
        build_command("k", "D", "cid", bad)


def test_notify_socket_needs_a_to_tag() -> None:
    # Seven tokens would be read as TOTAG SOCKET, so the builder refuses the gap.
    with pytest.raises(ValueError):
        build_update("k", "c", "192.0.2.1", 1, "f", notify_socket="s")
    with pytest.raises(ValueError):
        build_query("k", "c", "f", stats=["ttl"])


# -- properties --------------------------------------------------------------------

TOKEN = st.text(st.characters(min_codepoint=33, max_codepoint=255, exclude_characters="\x7f"),
                min_size=1, max_size=12).filter(lambda t: t != "&&")
WORDS = st.sampled_from([b"U", b"L", b"D", b"Q", b"V", b"VF", b"I", b"X", b"G", b"P", b"S",
                         b"R", b"C", b"N", b"u6", b"UAIEZ20c0,8", b"Lc", b"Dw", b"Qv", b"Ib",
                         b"&&", b"192.0.2.1", b"0.0.0.0", b"::1", b"16000", b"ft;1", b"20050322",
                         b"ttl", b"x", b"UL[::1]", b"URZ", b"Z", b"%zz", b"\0", b"\xff"])
SEPS = st.sampled_from([b" ", b"\t", b"\r\n", b"  "])


def _parses_or_refuses(data: bytes) -> None:
    for datagram in (True, False):
        try:
            cmd = parse_command(data, datagram=datagram)
        except ProtocolError as e:
            reply = parse_reply(e.reply(), datagram=bool(e.cookie))
            assert reply.error == e.code and reply.cookie == e.cookie
        else:
            assert isinstance(cmd, Command)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_command_or_protocol_error(data: bytes) -> None:
    _parses_or_refuses(data)
    parse_reply(data)
    parse_reply(data, datagram=False)
    parse_query_reply(data.decode("latin-1"))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(WORDS, SEPS), max_size=10))
def test_command_shaped_junk_gives_command_or_protocol_error(
        parts: list[tuple[bytes, bytes]]) -> None:
    _parses_or_refuses(b"ck " + b"".join(w + s for w, s in parts))


@settings(max_examples=200, deadline=None)
@given(cookie=TOKEN, call_id=TOKEN, from_tag=TOKEN, to_tag=st.none() | TOKEN,
       port=st.integers(0, 65535), ptime=st.none() | st.integers(1, 999),
       codecs=st.none() | st.lists(st.integers(0, 127), min_size=1, max_size=5),
       asymmetric=st.none() | st.booleans(), bridge=st.sampled_from(["", "I", "E", "IE", "EI"]),
       verb=st.sampled_from(["U", "L"]))
def test_update_lookup_round_trip(cookie: str, call_id: str, from_tag: str, to_tag: str | None,
                                  port: int, ptime: int | None, codecs: list[int] | None,
                                  asymmetric: bool | None, bridge: str, verb: str) -> None:
    mods = build_modifiers(asymmetric=asymmetric, bridge=bridge, ptime=ptime, codecs=codecs)
    build = build_update if verb == "U" else build_lookup
    cmd = parse_command(build(cookie, call_id, "198.51.100.3", port, from_tag, to_tag,
                              modifiers=mods))
    assert (cmd.cookie, cmd.verb, cmd.call_id, cmd.from_tag, cmd.to_tag) == (
        cookie, verb, call_id, from_tag, to_tag)
    assert cmd.remote == ("198.51.100.3", port)
    assert cmd.ul is not None
    assert (cmd.ul.asymmetric, cmd.ul.bridge, cmd.ul.ptime) == (asymmetric, bridge, ptime)
    assert cmd.ul.codecs == (tuple(codecs) if codecs else None)


@settings(max_examples=200, deadline=None)
@given(cookie=st.just("") | TOKEN, call_id=TOKEN, from_tag=TOKEN, to_tag=st.none() | TOKEN,
       weak=st.booleans(), verbose=st.booleans())
def test_delete_query_round_trip(cookie: str, call_id: str, from_tag: str, to_tag: str | None,
                                 weak: bool, verbose: bool) -> None:
    datagram = bool(cookie)
    d = parse_command(build_delete(cookie, call_id, from_tag, to_tag, weak=weak),
                      datagram=datagram)
    assert (d.cookie, d.verb, d.call_id, d.from_tag, d.to_tag, d.weak) == (
        cookie, "D", call_id, from_tag, to_tag, weak)
    q = parse_command(build_query(cookie, call_id, from_tag, to_tag, verbose=verbose),
                      datagram=datagram)
    assert (q.verb, q.call_id, q.from_tag, q.to_tag, q.verbose) == (
        "Q", call_id, from_tag, to_tag, verbose)


@settings(max_examples=200, deadline=None)
@given(cookie=TOKEN, port=st.integers(0, 65535),
       address=st.none() | st.ip_addresses().map(str), code=st.integers(0, 99))
def test_reply_round_trip(cookie: str, port: int, address: str | None, code: int) -> None:
    reply = parse_reply(format_port(cookie, port, address))
    assert (reply.cookie, reply.port, reply.address, reply.error) == (
        cookie, port, address, None)
    assert reply.ipv6 == (address is not None and ":" in address)
    err = parse_reply(format_error(cookie, code))
    assert (err.cookie, err.error, err.port) == (cookie, code, None)
    assert parse_reply(format_capability(cookie, True)).number == 1
    assert parse_reply(format_version(cookie)).number == int(BASE_VERSION)
