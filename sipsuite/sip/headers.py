"""Typed SIP header values: Via, name-addr (From/To/Contact/Route...), CSeq.

Each type has ``parse(text)`` (raises ValueError) and ``__str__``.  Header
names: ``canonical_name`` maps compact and any-case names to one lowercase
long form, the key every lookup in :mod:`sipsuite.sip.message` uses.
"""

from __future__ import annotations

import re
import string

from sipsuite.sip.uri import (
    PORTS,
    SIP_URI_BASE,
    SIP_URI_PATTERN,
    URI,
    parse_host_port,
    port_number,
    uri_from_match,
)

__all__ = [
    "COMPACT", "MULTI_VALUE", "CSeq", "NameAddr", "Via", "canonical_name",
    "parse_params", "split_values", "TOKEN_CHARS",
]

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
# gen-value = token / host / quoted-string; host adds IPv6 brackets and ':'
# (RFC 5118 4.5: received=[2001:db8::9:255] must be accepted).
_GEN_VALUE_CHARS = TOKEN_CHARS + "[]:"
_WS = " \t"

# Fast paths.  Each regex accepts only a common, plain shape of its header
# (no LWS around separators, no quoted parameter values, no escapes ...) and
# only text the general parser accepts too, splitting it at the same places;
# so a match builds exactly the object the general parser would, and any
# other text (odd but valid, or invalid) goes to the general parser, which
# gives the verdict.  The character classes below are TOKEN_CHARS and
# _GEN_VALUE_CHARS.  Runs are possessive where the character ending a run
# cannot belong to it (see uri.SIP_URI_PATTERN).
_TOKEN_RE = r"[A-Za-z0-9\-.!%*_+`'~]"
_GEN_VALUE_RE = r"[A-Za-z0-9\-.!%*_+`'~\[\]:]"
# A quoted-string without escapes or ';' (so that _fast_params may split on
# ';'), as a parameter value; kept with its quotes, like the general path.
_QUOTED_VALUE_RE = r'"[^";\\]*+"'
# Group: ';params' (possibly empty) of a header (Via, name-addr).
_PARAMS_RE = rf"((?:;{_TOKEN_RE}++(?:=(?:{_GEN_VALUE_RE}++|{_QUOTED_VALUE_RE}))?)*)"
_HOST_PORT_RE = r"([A-Za-z0-9\-.]++|\[[0-9A-Fa-f.]*+:[0-9A-Fa-f:.]*+\])(?::([0-9]{1,5}))?"
# 'SIP/2.0/UDP host:port;params': transport, host, port, params.
_VIA_FAST = re.compile(rf"SIP/2\.0/([A-Za-z]++) {_HOST_PORT_RE}{_PARAMS_RE}")
# '"display" <sip-uri>;params' / 'token display <sip-uri>' / '<sip-uri>':
# quoted display, token display, URI text, its 5 SIP_URI_PATTERN groups, params.
# The quoted display may hold quoted-pairs ('\\"'): a general-path parse per
# such value was most of the cost of thousands of them in one Contact.
_NAME_ADDR_FAST = re.compile(
    rf'(?:("[^"\\]*+(?:\\.[^"\\]*+)*+")[ \t]*|({_TOKEN_RE}+(?:[ \t]+{_TOKEN_RE}+)*)[ \t]*)?'
    rf"<({SIP_URI_PATTERN})>{_PARAMS_RE}"
)
# Bare addr-spec 'sip:user@host;tag=x': URI text, its 4 SIP_URI_BASE groups,
# header params (RFC 3261 20.10: after a bare URI they are header params).
_ADDR_SPEC_FAST = re.compile(rf"({SIP_URI_BASE}){_PARAMS_RE}")


def _fast_params(text: str) -> dict[str, str | None]:
    """Params of a _PARAMS_RE match: names and values already validated."""
    params: dict[str, str | None] = {}
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        params[name.lower()] = value if eq else None
    return params

COMPACT: dict[str, str] = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "r": "refer-to", "b": "referred-by", "o": "event", "u": "allow-events",
    "x": "session-expires", "y": "identity", "n": "identity-info", "a": "accept-contact",
    "j": "reject-contact", "d": "request-disposition",
}

MULTI_VALUE: frozenset[str] = frozenset((
    "via", "route", "record-route", "contact", "allow", "supported", "require",
    "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
    "allow-events", "in-reply-to", "content-encoding", "content-language", "path",
    "service-route", "warning", "alert-info", "call-info", "error-info",
    "p-asserted-identity", "reason", "security-client", "security-server",
    "security-verify",
))

_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 4096
_NAME_CACHED_LEN = 64  # longer names (never a real header's) are not cached


def canonical_name(name: str) -> str:
    """Lowercase long form of a header name; raises ValueError if not a token.

    Accepts the name with surrounding whitespace as it sits before the colon
    (``'TO '``), and memoises: messages repeat the same few spellings, so a
    dict hit replaces strip/validate/lower on the hot path.
    """
    key = _NAME_CACHE.get(name)
    if key is not None:
        return key
    stripped = name.strip(_WS)
    if not stripped or stripped.strip(TOKEN_CHARS):
        raise ValueError(f"bad header name {name!r}")
    lower = stripped.lower()
    key = COMPACT.get(lower, lower)
    if len(name) > _NAME_CACHED_LEN:
        return key  # kept out: 4096 names of 60 KB each would be 250 MB
    if len(_NAME_CACHE) >= _NAME_CACHE_MAX:
        # Bounded so a peer sending endless novel names cannot grow it.
        _NAME_CACHE.clear()
    _NAME_CACHE[name] = key
    return key


# The rest of a quoted string after its opening '"': plain runs and
# quoted-pairs, then the closing '"'.  Possessive and unrolled, so one pass
# in C whatever the escapes (a Python loop per '"' was the cost of a value
# made of thousands of escaped quotes).
_QUOTED_REST = re.compile(r'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def _quote_end(text: str, start: int) -> int:
    """Index of the '"' closing the quoted string opened at ``start``."""
    m = _QUOTED_REST.match(text, start + 1)
    if m is None:
        raise ValueError(f"unterminated quoted string in {text[:200]!r}")
    return m.end() - 1


# The characters _split_outside_quotes stops at, per (separator, angles):
# the regex search jumps over everything else in C instead of a Python
# loop visiting every character.
_SPLIT_STOPS = {
    (",", True): re.compile(r'[",<]'), (",", False): re.compile(r'[",]'),
    (";", True): re.compile(r'[";<]'), (";", False): re.compile(r'[";]'),
}


def _split_outside_quotes(text: str, sep: str, angles: bool) -> list[str]:
    parts: list[str] = []
    begin = 0
    search = _SPLIT_STOPS[sep, angles].search
    m = search(text)
    while m is not None:
        i = m.start()
        ch = text[i]
        if ch == '"':
            i = _quote_end(text, i)
        elif ch == "<":
            i = text.find(">", i)
            if i < 0:
                raise ValueError(f"unterminated '<' in {text!r}")
        else:
            parts.append(text[begin:i])
            begin = i + 1
        m = search(text, i + 1)
    parts.append(text[begin:])
    return parts


def split_values(value: str) -> list[str]:
    """Split a header value on commas outside quotes and <>; values stripped.

    Empty elements are kept (as '') so callers that must reject them (Via,
    RFC 4475 badinv01) can; ValueError on an unterminated quote or '<'.
    """
    if '"' in value or "<" in value:
        parts = _split_outside_quotes(value, ",", True)
    else:
        parts = value.split(",")
    return [p.strip(_WS) for p in parts]


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``name[=value]`` items separated by ';' (text after the first ';').

    LWS around ';' and '=' is allowed (RFC 3261 SEMI/EQUAL); an empty item
    (';;') or a name that is not a token raises ValueError.  Quoted values
    are kept with their quotes so that ``str()`` reproduces them.
    """
    items = _split_outside_quotes(text, ";", False) if '"' in text else text.split(";")
    params: dict[str, str | None] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip(_WS)
        if not name or name.strip(TOKEN_CHARS):
            raise ValueError(f"bad parameter {item!r}")
        if eq:
            value = value.strip(_WS)
            if not value:
                raise ValueError(f"empty value of parameter {name!r}")
            if value[0] == '"':
                if _quote_end(value, 0) != len(value) - 1:
                    raise ValueError(f"junk after quoted parameter {name!r}")
            elif value.strip(_GEN_VALUE_CHARS):
                raise ValueError(f"bad value of parameter {name!r}: {value!r}")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...``."""

    # _src: the ';params' text of a value parsed with lazy_params, which
    # ``params`` is built from on first use (see __getattr__).
    __slots__ = ("protocol", "transport", "host", "port", "params", "_src")
    _src: str | None

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        protocol: str = "SIP/2.0",
    ) -> None:
        self.protocol = protocol
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = {} if params is None else params

    def __getattr__(self, name: str) -> object:
        # Only called for a slot never set: ``params`` of a value parsed with
        # lazy_params, already validated by the fast path.
        if name == "params":
            try:
                ptext = self._src
            except AttributeError:
                raise AttributeError(name) from None
            params = self.params = _fast_params(ptext) if ptext else {}
            return params
        raise AttributeError(name)

    @classmethod
    def parse(cls, text: str, *, lazy_params: bool = False) -> Via:
        """Parse one Via value; raises ValueError.

        ``lazy_params``: when the value takes the fast path, build the
        params dict on first use only.  The parser uses it for the Vias
        below the top one: a proxy forwarding a response reads only the
        top Via, and the params are most of the cost.  Validation is the
        same either way.
        """
        m = _VIA_FAST.fullmatch(text)
        if m is not None:
            transport, host, port_text, ptext = m.groups()
            # (PORTS.get first: a hit, the usual case, skips a call.)
            port = None if port_text is None else PORTS.get(port_text) or port_number(port_text)
            if port is not None or port_text is None:
                via = cls.__new__(cls)
                via.protocol = "SIP/2.0"
                via.transport = transport.upper()
                via.host = host.lower()
                via.port = port
                if lazy_params:
                    via._src = ptext
                else:
                    via.params = _fast_params(ptext) if ptext else {}
                return via
        return cls._parse_general(text)

    @classmethod
    def _parse_general(cls, text: str) -> Via:
        semi = text.find(";")
        head = text if semi < 0 else text[:semi]
        parts = head.split("/", 2)
        if len(parts) != 3:
            raise ValueError(f"bad Via sent-protocol in {text!r}")
        name = parts[0].strip(_WS)
        version = parts[1].strip(_WS)
        rest = parts[2].split(None, 1)
        if len(rest) != 2:
            raise ValueError(f"Via without sent-by: {text!r}")
        transport, sent_by = rest
        for tok in (name, version, transport):
            if not tok or tok.strip(TOKEN_CHARS):
                raise ValueError(f"bad Via sent-protocol in {text!r}")
        sent_by = sent_by.strip()
        if " " in sent_by or "\t" in sent_by:
            # sent-by = host [COLON port] with COLON = SWS ":" SWS.
            host_text, colon, port_text = sent_by.rpartition(":")
            if not colon or "]" in port_text:
                raise ValueError(f"bad Via sent-by in {text!r}")
            sent_by = f"{host_text.rstrip()}:{port_text.lstrip()}"
        via = cls.__new__(cls)
        via.host, via.port = parse_host_port(sent_by)
        via.protocol = f"{name}/{version}".upper()
        via.transport = transport.upper()
        via.params = parse_params(text[semi + 1 :]) if semi >= 0 else {}
        return via

    def __str__(self) -> str:
        hp = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {hp}{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def copy(self) -> Via:
        return Via(self.transport, self.host, self.port, dict(self.params), self.protocol)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> str | None:
        params = self.params
        if "rport" not in params:
            return None
        value = params["rport"]
        return "" if value is None else value

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def ttl(self) -> str | None:
        return self.params.get("ttl")


class NameAddr:
    """name-addr / addr-spec with header parameters (RFC 3261 20.10)."""

    # _src: for a value taken by the fast path, its regex match, which
    # ``uri`` is built from on first use (see __getattr__).
    __slots__ = ("display", "uri", "params", "angle", "_src")
    _src: re.Match[str]

    def __init__(
        self,
        uri: URI,
        display: str | None = None,
        params: dict[str, str | None] | None = None,
        angle: bool = True,
    ) -> None:
        self.uri = uri
        self.display = display
        self.params: dict[str, str | None] = {} if params is None else params
        self.angle = angle

    def __getattr__(self, name: str) -> object:
        # Only called for a slot never set: ``uri`` of a value the fast path
        # validated but did not build.  A proxy reads the URIs of Route, but
        # rarely those of From, To, Contact or Record-Route, so the URI is
        # built on first read; from then on it is a plain slot again.
        if name == "uri":
            try:
                m = self._src
            except AttributeError:
                raise AttributeError(name) from None
            if m.re is _NAME_ADDR_FAST:
                uri = uri_from_match(*m.group(3, 4, 5, 6, 7, 8))
            else:  # _ADDR_SPEC_FAST: no URI params, they are the header's
                text, scheme, user, host, port_text = m.group(1, 2, 3, 4, 5)
                uri = uri_from_match(text, scheme, user, host, port_text, "")
            if uri is None:  # the fast path checked the port already
                raise AssertionError(f"unbuildable URI {m.group()!r}")
            self.uri = uri
            return uri
        raise AttributeError(name)

    def __getstate__(self) -> tuple[None, dict[str, object]]:
        # For pickle / copy: the built value, not the regex match behind it.
        return None, {"display": self.display, "uri": self.uri, "params": self.params,
                      "angle": self.angle}

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip(_WS)
        m = _NAME_ADDR_FAST.fullmatch(text)
        if m is not None:
            # (Only the groups needed now: the URI's are read if it is built.)
            quoted, tokens, port, ptext = m.group(1, 2, 7, 9)
            # The port range is the one check the pattern leaves to code.
            if port is None or len(port) < 5 or int(port) <= 65535:
                addr = cls.__new__(cls)
                addr.display = quoted if quoted is not None else tokens
                addr.angle = True
                addr.params = _fast_params(ptext) if ptext else {}
                addr._src = m
                return addr
        elif text[:3] == "sip":
            m = _ADDR_SPEC_FAST.fullmatch(text)
            # A ',' in a bare addr-spec needs <> (the user class allows it).
            if m is not None and "," not in m.group(1):
                port, ptext = m.group(5, 6)
                if port is None or len(port) < 5 or int(port) <= 65535:
                    addr = cls.__new__(cls)
                    addr.display = None
                    addr.angle = False
                    addr.params = _fast_params(ptext) if ptext else {}
                    addr._src = m
                    return addr
        return cls._parse_general(text)

    @classmethod
    def _parse_general(cls, text: str) -> NameAddr:
        if not text:
            raise ValueError("empty address")
        display: str | None
        if text[0] == '"':
            end = _quote_end(text, 0)
            display = text[: end + 1]
            lt = len(text) - len(text[end + 1 :].lstrip(_WS))
            if lt >= len(text) or text[lt] != "<":
                raise ValueError(f"quoted display name without <URI>: {text!r}")
        else:
            lt = text.find("<")
            # A display name is tokens only, so a ':' before '<' means the
            # '<' belongs to something after a bare addr-spec.
            if lt >= 0 and ":" in text[:lt]:
                lt = -1
            if lt >= 0:
                display = text[:lt].strip(_WS) or None
                # RFC 4475 lwsdisp: no LWS before '<' is accepted.
                if display is not None and display.strip(TOKEN_CHARS + _WS):
                    raise ValueError(f"display name is not tokens: {display!r}")
            else:
                display = None
        addr = cls.__new__(cls)
        addr.display = display
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise ValueError(f"unterminated <URI> in {text!r}")
            uri_text = text[lt + 1 : gt]
            if uri_text != uri_text.strip():
                raise ValueError(f"LWS inside <URI>: {text!r}")
            addr.uri = URI.parse(uri_text)
            addr.angle = True
            tail = text[gt + 1 :].lstrip(_WS)
            if not tail:
                addr.params = {}
            elif tail[0] == ";":
                addr.params = parse_params(tail[1:])
            else:
                raise ValueError(f"junk after <URI>: {text!r}")
        else:
            semi = text.find(";")
            uri_text = text if semi < 0 else text[:semi].rstrip(_WS)
            if "?" in uri_text or "," in uri_text:
                raise ValueError(f"addr-spec with '?' or ',' needs <>: {text!r}")
            addr.uri = URI.parse(uri_text)
            addr.angle = False
            addr.params = parse_params(text[semi + 1 :]) if semi >= 0 else {}
        return addr

    def __str__(self) -> str:
        uri = str(self.uri)
        params = format_params(self.params) if self.params else ""
        if self.display:
            return f"{self.display} <{uri}>{params}"
        if self.angle or ";" in uri or "?" in uri or "," in uri:
            return f"<{uri}>{params}"
        return uri + params

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"

    def copy(self) -> NameAddr:
        return NameAddr(self.uri.copy(), self.display, dict(self.params), self.angle)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def display_unquoted(self) -> str | None:
        """Display name without quotes and quoted-pair backslashes."""
        d = self.display
        if d is None or not d.startswith('"'):
            return d
        inner = d[1:-1]
        if "\\" not in inner:
            return inner
        # The pieces around each quoted-pair and the characters they escape,
        # in order (C speed, where a loop per character was not).
        return "".join(_QUOTED_PAIR.split(inner))


class CSeq:
    """``CSeq: <number> <method>``; number limited to 2**32-1 (RFC 3261 8.1.1.5)."""

    __slots__ = ("number", "method")

    def __init__(self, number: int, method: str) -> None:
        self.number = number
        self.method = method

    @classmethod
    def parse(cls, text: str) -> CSeq:
        # Fast path for '<digits> <letters>', checked with str methods
        # (cheaper than a regex here); anything else takes the general path.
        num, sp, method = text.partition(" ")
        if (sp and num.isdigit() and len(num) <= 10 and num.isascii()
                and method.isalpha() and method.isascii()):
            number = int(num)
            if number <= 0xFFFFFFFF:
                cseq = cls.__new__(cls)
                cseq.number = number
                cseq.method = method
                return cseq
        return cls._parse_general(text)

    @classmethod
    def _parse_general(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(f"bad CSeq {text!r}")
        num, method = parts
        # The length bound keeps int() away from megabyte-long digit strings.
        if not num.isdigit() or not num.isascii() or len(num.lstrip("0")) > 10:
            raise ValueError(f"bad CSeq number {num!r}")
        number = int(num)
        if number > 0xFFFFFFFF:
            raise ValueError(f"CSeq number too large: {num}")
        if method.strip(TOKEN_CHARS):
            raise ValueError(f"bad CSeq method {method!r}")
        return cls(number, method)

    def __str__(self) -> str:
        return f"{self.number} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.number}, {self.method!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return self.number == other.number and self.method == other.method

    def __hash__(self) -> int:
        return hash((self.number, self.method))
