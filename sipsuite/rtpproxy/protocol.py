"""RTPProxy control protocol: a sans-IO codec, the relay's side (commands
parsed, replies formatted) and the grammar both sides share; the proxy's
side (commands built, replies parsed) is :mod:`sipsuite.rtpproxy.controller`.

This is the text protocol Kamailio's ``rtpproxy`` module speaks to Sippy
RTPProxy.  Nothing here does I/O or reads a clock: bytes in, objects out, and
back.  Sources read (public): sippy/rtpproxy ``src/rtpp_command.c``
(splitting, cookie), ``src/rtpp_command_parse.c`` (verbs, argument counts),
``src/rtpp_command_ecodes.h`` (error numbers), ``src/commands/rpcpv1_*.c``
(per-verb modifiers and replies), ``src/rtpp_command_reply.c``; and
kamailio/kamailio ``src/modules/rtpproxy/rtpproxy.c`` and
``rtpproxy_stream.c`` (what Kamailio 5.6 sends and how it reads replies).

Wire format
    ``[COOKIE ]VERB[MODIFIERS] ARG...`` -- tokens separated by any run of
    space, tab, CR or LF (rtpproxy splits on exactly those four).  Kamailio
    sends no trailing newline; datagram boundaries frame a command.  The verb
    letter is case-insensitive; ``V`` followed by ``F`` is the separate verb
    ``VF``.  A token ``&&`` starts a sub-command (U, L and Q only).

Cookie
    Only datagram control sockets (``udp:``/``udp6:``) carry a cookie: the
    first token, echoed as ``COOKIE <body>`` in the reply so the client can
    match replies to retransmitted requests (Kamailio retries up to
    ``rtpproxy_retr`` times with the *same* cookie, ``<pid>_<seq>``; a relay
    should answer a repeated cookie from a reply cache, as rtpproxy does).
    Stream sockets (``unix:``, Kamailio's default) carry none: Kamailio opens
    a SOCK_STREAM connection per command, writes the command without a
    cookie, reads one reply (no cookie either) and closes.  Hence
    ``datagram=False`` here, and ``cookie == ""`` means "no cookie".

What Kamailio 5.6 sends (flags of ``rtpproxy_offer/answer/manage``):
    * ``V`` -- expects ``20040107``; then ``VF 20050322`` (required),
      ``VF 20071116`` (``Z`` allowed) and ``VF 20081102`` (``c`` allowed,
      and needed by P/S).  It asks for no other capability.
    * ``U``/``L`` + ``A`` (flag a), ``I``, ``E``, ``S`` (flag w: *symmetric*,
      not weak), ``IE``/``EI`` (flag x, by address family), ``6`` once per
      IPv6 stream (so ``66`` on a second one), then ``Z<ptime>`` (flag z),
      then ``c<pt,pt,...>``; then ``CALLID[;BRANCH] IP PORT FROMTAG;N``
      ``[TOTAG;N [TIMEOUT_SOCKET]]``.  L is the same with ``L``.
    * ``D CALLID[;BRANCH] FROMTAG [TOTAG]``, ``R CALLID FROMTAG [TOTAG]``,
      ``Q CALLID FROMTAG;1 TOTAG`` or ``Q CALLID FROMTAG``,
      ``P<count> CALLID PROMPT session FROMTAG;1 [TOTAG;1]``,
      ``S CALLID FROMTAG;1 [TOTAG;1]``.  It never sends I, X, G, C or N.

Divergence from rtpproxy master, on purpose: a 7-token U means
``... TOTAG NOTIFY_SOCKET`` as Kamailio sends it (and rtpproxy 1.x read it);
rtpproxy 2.x reads it as ``NOTIFY_SOCKET NOTIFY_TAG`` without a to-tag.
Checks that need server state (session lookup E50, bridging configured for
I/E E11/E12, ports E71/E72, notify sockets E75) belong to the relay.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import unquote

__all__ = [
    "BASE_VERSION", "CAPABILITIES", "KAMAILIO_CAPABILITIES", "QUERY_STATS", "DEFAULT_QUERY",
    "ErrorCode", "ProtocolError", "UpdateModifiers", "Command",
    "parse_command", "split_tag", "media_tag",
    "format_reply", "format_error", "format_number", "format_ok", "format_version",
    "format_capability", "format_port", "format_query", "format_info",
]

# The reply to "V": the base protocol every client checks for (rpcpv1_ver.c).
BASE_VERSION = "20040107"

# "VF <date>" capabilities rtpproxy knows (src/commands/rpcpv1_ver.c proto_caps).
# Which of them a relay answers "1" to is the relay's decision (rtpproxy says 0
# to 20081224 unless notifications are enabled with -n).
CAPABILITIES: dict[str, str] = {
    "20040107": "Basic RTP proxy functionality",
    "20050322": "Support for multiple RTP streams and MOH",
    "20060704": "Support for extra parameter in the V command",
    "20071116": "Support for RTP re-packetization",
    "20071218": "Support for forking (copying) RTP stream",
    "20080403": "Support for RTP statistics querying",
    "20081102": "Support for setting codecs in the update/lookup command",
    "20081224": "Support for session timeout notifications",
    "20090810": "Support for automatic bridging",
    "20140323": "Support for tracking/reporting load",
    "20140617": "Support for anchoring session connect time",
    "20141004": "Support for extendable performance counters",
    "20150330": "Support for allocating a new port (Un/Ln commands)",
    "20150420": "Support for SEQ tracking and new rtpa_ counters; Q command extended",
    "20191015": "Support for the && sub-command specifier",
}
# What Kamailio 5.6 asks, in order (REQ_CPROTOVER, REP_CPROTOVER, PTL_CPROTOVER).
KAMAILIO_CAPABILITIES = ("20050322", "20071116", "20081102")

# Counter names "Q CALLID FROM TO name..." may ask for (rpcpv1_query.c); the
# plain Q reply is DEFAULT_QUERY in this order.
QUERY_STATS = frozenset({
    "ttl", "npkts_ina", "npkts_ino", "nrelayed", "ndropped", "longest_ipi", "rtpa_jlast",
    "rtpa_jmax", "rtpa_javg", "rtpa_nsent", "rtpa_nrcvd", "rtpa_ndups", "rtpa_nlost",
    "rtpa_perrs",
})
DEFAULT_QUERY = ("ttl", "npkts_ina", "npkts_ino", "nrelayed", "ndropped")

MAX_ARGC = 20  # RTPC_MAX_ARGC: a command (or sub-command) reaching it is E5
MAX_SUBCOMMANDS = 15  # MAX_SUBC_NUM - 1


class ErrorCode(IntEnum):
    """Reply ``E<n>`` numbers, as src/rtpp_command_ecodes.h (rtpproxy master) has them.

    Kamailio only looks at the leading ``E`` (VF) or reads ``atoi() == 0`` as a
    bad port (U/L), so the numbers matter for logs and other clients.
    """

    CMDUNKN = 0  # unknown verb letter (rtpp_command_parse.c)
    PARSE_NARGS = 1  # wrong number of arguments for the verb
    PARSE_MODS = 2  # modifiers on a verb that takes none (V, VF, X, S)
    PARSE_SUBC = 3  # "&&" sub-command on a verb without them (or a bad one)
    PARSE_1 = 5  # general syntax: empty command, cookie only, NUL, too many tokens
    PARSE_2 = 6  # R/C "s" or N "a" followed by more modifiers
    PARSE_3 = 7  # R/C/N: any other modifier
    PARSE_4 = 8  # D: modifier other than w
    PARSE_5 = 9  # G: modifier other than v
    PARSE_10 = 10  # U: notify tag not valid %-encoding
    PARSE_11 = 11  # U/L "E": more than two I/E, or relay not bridging
    PARSE_12 = 12  # U/L "I": same, for I
    PARSE_13 = 13  # U/L "Z": ptime missing or outside 1..999
    PARSE_14 = 14  # U/L "c": empty codec list, or given twice
    PARSE_15 = 15  # U/L "L<addr>": malformed local address
    PARSE_16 = 16  # U/L "R<addr>": malformed remote address
    PARSE_6 = 17  # P: play count not a number
    PARSE_7 = 18  # I: modifier other than b/l
    PARSE_8 = 19  # Q: modifier other than v
    RTOOBIG_1 = 25  # reply too big
    RTOOBIG_2 = 26  # Q reply too big
    INVLARG_1 = 31  # U/L "L<addr>": not a usable local address
    INVLARG_2 = 32  # U/L "R<addr>": not a valid address
    INVLARG_3 = 33  # U/L "R<addr>": no local address routes to it
    INVLARG_4 = 34  # U/L "R<addr>": its local address is not one we bind
    INVLARG_5 = 35  # U/L: unknown modifier; P: "session" codecs but none saved
    INVLARG_6 = 36  # U/L: no local address of the stream's address family
    INVLARG_7 = 37  # U/L: remote address/port does not parse
    SESUNKN = 50  # session not found (any verb but U; L answers port 0 instead)
    PLRFAIL = 60  # P: player could not be created
    QRYFAIL = 62  # Q: unknown counter name
    CPYFAIL = 65  # C/R: recording could not be started
    STSFAIL = 68  # G: unknown statistic
    LSTFAIL_1 = 71  # no free port pair (re-allocating for an existing session)
    LSTFAIL_2 = 72  # no free port pair (new session)
    NSOFF = 75  # U: notify socket given but notifications are disabled
    NOMEM_1 = 81  # 81..89: out of memory at various points
    OVERLOAD = 98  # overload protection refused a new session
    SLOWSHTDN = 99  # shutting down: new sessions refused


class ProtocolError(Exception):
    """A command rtpproxy would refuse; ``reply()`` is what to send back."""

    def __init__(self, code: int, message: str, cookie: str = "") -> None:
        super().__init__(f"E{int(code)}: {message}")
        self.code = int(code)
        self.message = message
        self.cookie = cookie

    def reply(self) -> bytes:
        return format_error(self.cookie, self.code)


@dataclass(frozen=True, slots=True)
class UpdateModifiers:
    """The U/L modifier letters (rpcpv1_ul.c), case-insensitive on the wire."""

    raw: str
    asymmetric: bool | None = None  # A -> True, S -> False, absent -> relay default
    bridge: str = ""  # the I/E letters in order: first for lia[1], second for lia[0]
    ipv6: bool = False  # "6": remote address (and stream) is IPv6
    weak: bool = False  # W
    ptime: int | None = None  # Z<ms>: repacketize to this ptime
    codecs: tuple[int, ...] | None = None  # c<pt,pt,...>
    local_address: str | None = None  # L<addr> / L[<v6addr>]
    remote_hint: str | None = None  # R<addr>: pick the local address routing to it
    new_port: bool = False  # N: allocate a fresh port pair


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command.  ``known`` is False for a verb rtpproxy has not got:
    such commands are returned (not raised) so the caller can count them, and
    answered with ``E0`` (ErrorCode.CMDUNKN)."""

    cookie: str  # "" on stream sockets
    verb: str  # canonical: "U", "L", "D", "Q", "V", "VF", "I", "X", "G", "P", "S", "R", "C", "N"
    modifiers: str  # raw text after the verb letter(s)
    args: tuple[str, ...]  # the tokens after the verb token
    known: bool = True
    call_id: str | None = None  # includes any ";branch" Kamailio appended
    remote_address: str | None = None  # U/L as sent
    remote_port: str | None = None  # U/L as sent
    # U/L media address when usable, else None; the port may be 0, since Kamailio
    # forwards a disabled m= line's port 0 unchanged.
    remote: tuple[str, int] | None = None
    on_hold: bool = False  # U/L address is 0.0.0.0 / ::
    from_tag: str | None = None  # may end in ";medianum": see split_tag
    to_tag: str | None = None
    notify_socket: str | None = None  # U
    notify_tag: str | None = None  # U, %-decoded
    capability: str | None = None  # VF
    ul: UpdateModifiers | None = None  # U/L
    weak: bool = False  # D "w"
    verbose: bool = False  # Q/G "v"
    brief: bool = False  # I "b"
    load: bool = False  # I "l"
    stats: tuple[str, ...] = ()  # Q/G counter names
    play_count: int | None = None  # P
    name: str | None = None  # P prompt, C recording target
    play_codecs: str | None = None  # P: "session" or "0,8"
    single_file: bool = False  # R/C "s"
    all_streams: bool = False  # N "a"
    subcommands: tuple[tuple[str, ...], ...] = ()  # after "&&", unparsed


# verb: (min argc, max argc, takes modifiers, takes sub-commands); argc counts the
# verb token, as rtpp_command_parse.c does.
_VERBS: dict[str, tuple[int, int, bool, bool]] = {
    "U": (5, 8, True, True), "L": (5, 6, True, True), "D": (3, 4, True, False),
    "P": (5, 6, True, False), "R": (3, 4, True, False), "C": (4, 5, True, False),
    "S": (3, 4, False, False), "N": (3, 4, True, False), "V": (1, 1, False, False),
    "VF": (2, 2, False, False), "I": (1, 1, True, False),
    "Q": (3, 4 + len(QUERY_STATS), True, True), "X": (1, 1, False, False),
    "G": (1, MAX_ARGC - 1, True, False),
}
_SEPARATORS = re.compile(rb"[ \t\r\n]+")
# The same set for text: str.split() would also split on \x85, \xa0, \x1c...
_TEXT_SEPARATORS = re.compile(r"[ \t\r\n]+")
_DIGITS = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]*")
_ESCAPES_OK = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
# 64-bit strtol saturates; past this many digits the value no longer matters.
_MAX_DIGITS = 18


def _text(token: bytes) -> str:
    # latin-1 maps every byte to one code point and back, so nothing on the wire
    # can fail to decode and identifiers round-trip exactly; real ones are ASCII.
    return token.decode("latin-1")


def _upper(letter: str) -> str:
    # ASCII only: str.upper() turns some latin-1 letters into two ("ß" -> "SS").
    return letter.upper() if letter.isascii() else letter


def _strtol(text: str) -> int:
    """C strtol on a whole string of [+-]digits, saturating like it does."""
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if not digits:
        return 0
    return sign * (int(digits) if len(digits) <= _MAX_DIGITS else 2**63 - 1)


def parse_command(data: bytes, *, datagram: bool = True) -> Command:
    """Parse one command; ``datagram`` says whether the first token is a cookie.

    Raises ProtocolError for anything rtpproxy answers with an ``E`` code,
    and nothing else whatever the input.
    """
    tokens = [t for t in _SEPARATORS.split(data) if t]
    cookie = ""
    # A NUL in the cookie token itself fails before the cookie is taken, so
    # that error goes back without one (rtpp_command_split).
    if datagram and tokens and b"\0" not in tokens[0]:
        cookie = _text(tokens.pop(0))
    if b"\0" in data:
        raise ProtocolError(ErrorCode.PARSE_1, "NUL inside a parameter", cookie)
    groups: list[list[str]] = [[]]
    for token in tokens:
        if token == b"&&":
            groups.append([])
        else:
            groups[-1].append(_text(token))
    if len(groups) - 1 > MAX_SUBCOMMANDS or any(len(g) >= MAX_ARGC for g in groups):
        raise ProtocolError(ErrorCode.PARSE_1, "too many arguments", cookie)
    if not all(groups):
        raise ProtocolError(ErrorCode.PARSE_1, "empty command", cookie)
    head, *subs = groups
    verb_token, args = head[0], tuple(head[1:])
    verb = _upper(verb_token[0])
    modifiers = verb_token[1:]
    if verb == "V" and _upper(modifiers[:1]) == "F":
        verb, modifiers = "VF", modifiers[1:]
    spec = _VERBS.get(verb)
    if spec is None:
        return Command(cookie, verb, modifiers, args, known=False,
                       subcommands=tuple(tuple(g) for g in subs))
    min_argc, max_argc, takes_mods, takes_subc = spec
    if not min_argc <= len(head) <= max_argc:
        raise ProtocolError(ErrorCode.PARSE_NARGS, f"{verb}: {len(head)} arguments", cookie)
    if modifiers and not takes_mods:
        raise ProtocolError(ErrorCode.PARSE_MODS, f"{verb} takes no modifiers", cookie)
    if subs and not takes_subc:
        raise ProtocolError(ErrorCode.PARSE_SUBC, f"{verb} takes no sub-command", cookie)
    fields: dict[str, object] = {"subcommands": tuple(tuple(g) for g in subs)}
    _PARSERS[verb](cookie, modifiers, args, fields)
    return Command(cookie, verb, modifiers, args, **fields)  # type: ignore[arg-type]


def _parse_update(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    call_id, address, port, from_tag, *rest = args
    out.update(call_id=call_id, remote_address=address, remote_port=port, from_tag=from_tag)
    if rest:
        out["to_tag"] = rest[0]
    if len(rest) >= 2:
        out["notify_socket"] = rest[1]
    if len(rest) == 3:
        if not _ESCAPES_OK.fullmatch(rest[2]):
            raise ProtocolError(ErrorCode.PARSE_10, "bad %-escape in notify tag", cookie)
        out["notify_tag"] = unquote(rest[2], encoding="latin-1")
    ul = _parse_ul_modifiers(cookie, mods)
    out["ul"] = ul
    remote, on_hold = _parse_remote(cookie, address, port, ul.ipv6)
    out.update(remote=remote, on_hold=on_hold)


def _parse_ul_modifiers(cookie: str, mods: str) -> UpdateModifiers:
    asymmetric: bool | None = None
    bridge = ""
    ipv6 = weak = new_port = False
    ptime: int | None = None
    codecs: tuple[int, ...] | None = None
    local: str | None = None
    hint: str | None = None
    i = 0
    while i < len(mods):
        letter = _upper(mods[i])
        i += 1
        if letter == "A":
            asymmetric = True
        elif letter == "S":
            asymmetric = False
        elif letter in ("I", "E"):
            if len(bridge) == 2:
                code = ErrorCode.PARSE_11 if letter == "E" else ErrorCode.PARSE_12
                raise ProtocolError(code, "more than two I/E modifiers", cookie)
            bridge += letter
        elif letter == "6":
            ipv6 = True
        elif letter == "W":
            weak = True
        elif letter == "N":
            new_port = True
        elif letter == "Z":
            match = _SIGNED.match(mods, i)
            assert match is not None  # the pattern matches the empty string
            i = match.end()
            ptime = _strtol(match.group())
            if not 0 < ptime < 1000:
                raise ProtocolError(ErrorCode.PARSE_13, f"ptime {match.group()!r}", cookie)
        elif letter == "C":
            start = i
            while i < len(mods) and (mods[i] in "0123456789,"):
                i += 1
            pieces = [p for p in mods[start:i].split(",") if p]
            # Payload types are 0..127; the length cap keeps int() cheap and safe.
            if i == start or codecs is not None or any(len(p) > 9 for p in pieces):
                raise ProtocolError(ErrorCode.PARSE_14, "bad or repeated codec list", cookie)
            codecs = tuple(int(p) for p in pieces)
        elif letter in ("L", "R"):
            address, i = _extract_address(mods, i)
            if address is None:
                code = ErrorCode.PARSE_15 if letter == "L" else ErrorCode.PARSE_16
                raise ProtocolError(code, f"malformed {letter} address", cookie)
            if _ip(address) is None:
                code = ErrorCode.INVLARG_1 if letter == "L" else ErrorCode.INVLARG_2
                raise ProtocolError(code, f"invalid {letter} address {address!r}", cookie)
            if letter == "L":
                local = address
            else:
                hint = address
        else:
            raise ProtocolError(ErrorCode.INVLARG_5, f"unknown modifier {mods[i - 1]!r}", cookie)
    return UpdateModifiers(mods, asymmetric, bridge, ipv6, weak, ptime, codecs, local, hint,
                           new_port)


def _extract_address(mods: str, i: int) -> tuple[str | None, int]:
    """rtpproxy's extractaddr(): dotted digits, or hex digits and ':' in brackets."""
    if mods[i:i + 1] == "[":
        end = i + 1
        while end < len(mods) and mods[end] in "0123456789abcdefABCDEF:":
            end += 1
        if end == i + 1 or mods[end:end + 1] != "]":
            return None, end
        return mods[i + 1:end], end + 1
    end = i
    while end < len(mods) and mods[end] in "0123456789.":
        end += 1
    return (mods[i:end] or None), end


def _ip(text: str, ipv6: bool | None = None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        if ipv6 is None:
            return ipaddress.ip_address(text)
        return ipaddress.IPv6Address(text) if ipv6 else ipaddress.IPv4Address(text)
    except ValueError:
        return None


def _parse_remote(cookie: str, address: str, port: str,
                  ipv6: bool) -> tuple[tuple[str, int] | None, bool]:
    # rtpproxy only resolves an address of plausible length for the family
    # (IS_IPSTR_VALID) and silently ignores any other; a plausible one that
    # getaddrinfo(AI_NUMERICHOST) refuses is E37.
    low, high = (2, 45) if ipv6 else (7, 15)
    if not low <= len(address) <= high:
        return None, False
    ip = _ip(address, ipv6)
    if ip is None or not _DIGITS.fullmatch(port) or len(port) > 5 or int(port) > 65535:
        raise ProtocolError(ErrorCode.INVLARG_7, f"bad remote {address!r} {port!r}", cookie)
    if ip.is_unspecified:
        return None, True
    return (str(ip), int(port)), False


def _parse_delete(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    if mods.strip("wW"):
        raise ProtocolError(ErrorCode.PARSE_4, f"D modifier {mods!r}", cookie)
    out.update(weak=bool(mods), **_tags(args, 1))


def _tags(args: tuple[str, ...], from_pos: int) -> dict[str, object]:
    """call_id and the from/to tags at from_pos, from_pos + 1 (0-based in args)."""
    fields: dict[str, object] = {"call_id": args[0], "from_tag": args[from_pos]}
    if len(args) > from_pos + 1:
        fields["to_tag"] = args[from_pos + 1]
    return fields


def _parse_query(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    if mods.strip("vV"):
        raise ProtocolError(ErrorCode.PARSE_8, f"Q modifier {mods!r}", cookie)
    stats = args[3:]
    unknown = [s for s in stats if s not in QUERY_STATS]
    if unknown:
        raise ProtocolError(ErrorCode.QRYFAIL, f"unknown counter {unknown[0]!r}", cookie)
    out.update(verbose=bool(mods), stats=stats, **_tags(args, 1))


def _parse_nothing(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    pass  # V and X take nothing: the generic checks said all there is


def _parse_feature(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    out["capability"] = args[0]


def _parse_info(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    if mods.strip("bBlL"):
        raise ProtocolError(ErrorCode.PARSE_7, f"I modifier {mods!r}", cookie)
    out.update(brief=any(c in "bB" for c in mods), load=any(c in "lL" for c in mods))


def _parse_stats(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    if mods.strip("vV"):
        raise ProtocolError(ErrorCode.PARSE_5, f"G modifier {mods!r}", cookie)
    out.update(verbose=bool(mods), stats=args)


def _parse_play(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    count = 1
    if mods:
        if not re.fullmatch(r"[+-]?[0-9]+", mods):
            raise ProtocolError(ErrorCode.PARSE_6, f"play count {mods!r}", cookie)
        count = _strtol(mods)
    out.update(play_count=count, name=args[1], play_codecs=args[2], **_tags(args, 3))


def _parse_record(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    # C shares R's modifier rules (COPY falls through to RECORD in handle_command).
    if mods[:1] in ("s", "S"):
        if mods[1:]:
            raise ProtocolError(ErrorCode.PARSE_2, f"modifiers after s: {mods!r}", cookie)
        out["single_file"] = True
    elif mods:
        raise ProtocolError(ErrorCode.PARSE_3, f"modifier {mods!r}", cookie)
    out.update(_tags(args, 1))


def _parse_copy(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    _parse_record(cookie, mods, args, out)
    out.update(name=args[1], **_tags(args, 2))


def _parse_noplay(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    out.update(_tags(args, 1))


def _parse_norecord(cookie: str, mods: str, args: tuple[str, ...], out: dict[str, object]) -> None:
    if mods[:1] in ("a", "A"):
        if mods[1:]:
            raise ProtocolError(ErrorCode.PARSE_2, f"modifiers after a: {mods!r}", cookie)
        out["all_streams"] = True
    elif mods:
        raise ProtocolError(ErrorCode.PARSE_3, f"modifier {mods!r}", cookie)
    out.update(_tags(args, 1))


_PARSERS = {
    "U": _parse_update, "L": _parse_update, "D": _parse_delete, "Q": _parse_query,
    "V": _parse_nothing, "X": _parse_nothing, "VF": _parse_feature, "I": _parse_info,
    "G": _parse_stats, "P": _parse_play, "R": _parse_record, "C": _parse_copy,
    "S": _parse_noplay, "N": _parse_norecord,
}


def split_tag(tag: str) -> tuple[str, int | None]:
    """``"abc;2"`` -> ``("abc", 2)``; a tag without ``;N`` has no media number.

    rtpproxy keys streams by the full tag and lets a tag without ``;N`` match
    every ``tag;N`` (compare_session_tags), which is how a plain D removes all
    media of a call.
    """
    base, sep, number = tag.rpartition(";")
    if sep and _DIGITS.fullmatch(number) and len(number) <= 9:
        return base, int(number)
    return tag, None


def media_tag(tag: str, medianum: int | None) -> str:
    """The tag as Kamailio sends it for U/L: ``tag;medianum``."""
    return tag if medianum is None else f"{tag};{medianum}"


# -- replies (relay side) -----------------------------------------------------------


def format_reply(cookie: str, body: str) -> bytes:
    """``COOKIE BODY\\n`` (``BODY\\n`` without a cookie); one trailing newline."""
    text = body if body.endswith("\n") else body + "\n"
    if cookie:
        text = f"{cookie} {text}"
    return text.encode("latin-1")


def format_error(cookie: str, code: int) -> bytes:
    return format_reply(cookie, f"E{int(code)}")


def format_number(cookie: str, number: int) -> bytes:
    return format_reply(cookie, str(int(number)))


def format_ok(cookie: str) -> bytes:
    """What D, R, S, N, X and a successful P answer: ``0``."""
    return format_number(cookie, 0)


def format_version(cookie: str) -> bytes:
    return format_reply(cookie, BASE_VERSION)


def format_capability(cookie: str, supported: bool) -> bytes:
    return format_number(cookie, 1 if supported else 0)


def format_port(cookie: str, port: int, address: str | None = None) -> bytes:
    """U/L reply: ``PORT ADDRESS`` for IPv4, ``PORT ADDRESS 6`` for IPv6, ``PORT``
    without an address (Kamailio then uses the address the SIP message arrived
    on, force_rtp_proxy's msg->rcv.dst_ip).  L of an unknown session
    answers ``format_port(cookie, 0)``, which Kamailio reads as failure."""
    if address is None:
        return format_reply(cookie, str(int(port)))
    suffix = " 6" if ":" in address else ""
    return format_reply(cookie, f"{int(port)} {address}{suffix}")


def _stat(value: int | float) -> str:
    return f"{value:f}" if isinstance(value, float) else str(int(value))


def format_query(cookie: str, stats: Mapping[str, int | float],
                 names: Sequence[str] = DEFAULT_QUERY, verbose: bool = False) -> bytes:
    """Q reply: the values of ``names`` space-separated, or ``name=value`` with Qv.

    The plain reply is ``TTL NPKTS_INA NPKTS_INO NRELAYED NDROPPED``: the session
    ttl, packets received on the stream the query's tags select, packets received
    on the other one, packets relayed, packets dropped (rpcpv1_query.c).
    """
    items = [f"{n}={_stat(stats[n])}" if verbose else _stat(stats[n]) for n in names]
    return format_reply(cookie, " ".join(items))


def format_info(cookie: str, sessions_created: int, active_sessions: int, active_streams: int,
                packets_received: int, packets_transmitted: int,
                average_load: float | None = None) -> bytes:
    """I reply: rtpproxy's multi-line text (handle_info in rtpp_command.c)."""
    text = (f"sessions created: {sessions_created}\nactive sessions: {active_sessions}\n"
            f"active streams: {active_streams}\npackets received: {packets_received}\n"
            f"packets transmitted: {packets_transmitted}\n")
    if average_load is not None:
        text += f"average load: {average_load:f}\n"
    return format_reply(cookie, text)
