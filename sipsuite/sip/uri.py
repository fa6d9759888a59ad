"""SIP, SIPS and tel URIs (RFC 3261 19.1, RFC 3966), plus opaque absolute URIs.

Character-class checks use ``str.strip(allowed) == ''``: the loop runs in C
and is cheap for the short strings a SIP message is made of.  The usual
``sip:user@host:port;params`` shape is matched first by one precompiled
regex (``SIP_URI_RE``) that only accepts what the general parser would
accept, with the same result; anything else takes the general path.
"""

from __future__ import annotations

import re
import string
from urllib.parse import unquote

__all__ = ["URI"]

_ALNUM = string.ascii_letters + string.digits
_HEX = string.hexdigits
_UNRESERVED = _ALNUM + "-_.!~*'()"
# RFC 3261 25.1; '%' is allowed by the class check and validated separately.
_USER_CHARS = _UNRESERVED + "%&=+$,;?/"
_PASSWORD_CHARS = _UNRESERVED + "%&=+$,"
_PARAM_CHARS = _UNRESERVED + "%[]/:&+$"
_HEADERS_CHARS = _UNRESERVED + "%[]/?:+$=&"
_HOST_CHARS = _ALNUM + "-."
_IPV6_CHARS = _HEX + ":."
_SCHEME_CHARS = _ALNUM + "+-."
# Anything an absolute URI can never contain; also what makes a Request-URI
# with LWS or angle brackets invalid (RFC 4475 lwsruri, ltgtruri).
_FORBIDDEN = frozenset(" \t\r\n<>\"\x00\x7f")
_SIP_SCHEMES = frozenset(("sip", "sips"))

# The common sip/sips URI, as a regex fragment that headers.py embeds in its
# name-addr patterns too.  Deliberately narrower than RFC 3261: lowercase
# scheme, no password, no '%' escapes (so no escape check is needed), no ';'
# or '?' in the user part, no '?headers'; a URI outside it takes the general path
# in URI.parse, which then decides.  Within it every character class is a
# subset of the general parser's, and '@', ':', ';', '=' cannot occur inside
# a component, so the groups split the text exactly where URI.parse would.
# Runs are possessive (``++``, Python 3.11): no class can hold the character
# that ends its run, so giving characters back could never lead to a match
# and the engine need not try (measurably cheaper).
# Groups: scheme, user, host, port.
SIP_URI_BASE = (
    r"(sips?):"
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,/]++)@)?"
    r"([A-Za-z0-9\-.]++|\[[0-9A-Fa-f.]*+:[0-9A-Fa-f:.]*+\])"
    r"(?::([0-9]{1,5}))?"
)
# Group: ';params' (possibly empty); names and values in _PARAM_CHARS less '%'.
SIP_URI_PARAMS = r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]++(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]++)?)*)"
SIP_URI_PATTERN = SIP_URI_BASE + SIP_URI_PARAMS
SIP_URI_RE = re.compile(SIP_URI_PATTERN)


def _check_escapes(text: str) -> None:
    if "%" in text:
        for chunk in text.split("%")[1:]:
            if len(chunk) < 2 or chunk[:2].strip(_HEX):
                raise ValueError(f"bad %-escape in {text!r}")


def _check_chars(text: str, allowed: str, what: str) -> None:
    if text.strip(allowed):
        raise ValueError(f"invalid character in {what}: {text!r}")
    _check_escapes(text)


def _parse_uri_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name:
            raise ValueError(f"empty URI parameter in {text!r}")
        _check_chars(name, _PARAM_CHARS, "URI parameter")
        if eq:
            if not value:
                raise ValueError(f"empty value of URI parameter {name!r}")
            _check_chars(value, _PARAM_CHARS, "URI parameter")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def parse_host_port(text: str) -> tuple[str, int | None]:
    """Split and validate ``host[:port]``; IPv6 references keep their brackets.

    The IPv6 check is deliberately loose (hex digits, colons, dots): RFC 5118
    4.10 asks to tolerate the three-colon form the RFC 3261 ABNF allowed.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"unterminated IPv6 reference in {text!r}")
        inner = text[1:close]
        if not inner or ":" not in inner or inner.strip(_IPV6_CHARS):
            raise ValueError(f"bad IPv6 reference in {text!r}")
        host = text[: close + 1].lower()
        rest = text[close + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise ValueError(f"junk after IPv6 reference in {text!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not host or host.strip(_HOST_CHARS):
            raise ValueError(f"bad host in {text!r}")
        host = host.lower()
        if not colon:
            return host, None
    if not port_text or not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        raise ValueError(f"bad port in {text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


class URI:
    """A parsed URI.  ``str()`` of an unmodified parsed URI is its original text."""

    __slots__ = (
        "scheme", "user", "password", "host", "port", "params", "headers", "opaque",
        "_text", "_orig",
    )

    def __init__(
        self,
        scheme: str = "sip",
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        headers: str | None = None,
        opaque: str = "",
    ) -> None:
        self.scheme = scheme.lower()
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = {} if params is None else params
        self.headers = headers
        self.opaque = opaque
        self._text: str | None = None
        self._orig: tuple[object, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> URI:
        """Parse ``text``; raises ValueError on bad syntax."""
        m = SIP_URI_RE.fullmatch(text)
        if m is not None:
            uri = uri_from_match(text, *m.groups())
            if uri is not None:
                return uri
        return cls._parse_general(text)

    @classmethod
    def _parse_general(cls, text: str) -> URI:
        scheme_end = text.find(":")
        if scheme_end <= 0:
            raise ValueError(f"URI without scheme: {text!r}")
        scheme = text[:scheme_end]
        if scheme.strip(_SCHEME_CHARS) or not scheme[0].isalpha():
            raise ValueError(f"bad URI scheme in {text!r}")
        if not _FORBIDDEN.isdisjoint(text):
            raise ValueError(f"forbidden character in URI {text!r}")
        scheme = scheme.lower()
        rest = text[scheme_end + 1 :]
        if not rest:
            raise ValueError(f"empty URI after scheme: {text!r}")
        uri = cls.__new__(cls)
        uri.scheme = scheme
        uri.password = None
        uri.headers = None
        if scheme in _SIP_SCHEMES:
            uri.opaque = ""
            # Neither user, password, params nor headers may contain a bare
            # '@' (RFC 3261 25.1), so the first '@' ends the userinfo even
            # when the user part carries ';' or '?' (RFC 4475 semiuri, intmeth).
            at = rest.find("@")
            if at >= 0:
                user, colon, password = rest[:at].partition(":")
                if not user or user.strip(_USER_CHARS):
                    raise ValueError(f"bad user part in {text!r}")
                if "%" in user:
                    _check_escapes(user)
                if colon:
                    _check_chars(password, _PASSWORD_CHARS, "password")
                    uri.password = password
                uri.user = user
                rest = rest[at + 1 :]
            else:
                uri.user = None
            qmark = rest.find("?")
            if qmark >= 0:
                headers = rest[qmark + 1 :]
                if not headers:
                    raise ValueError("empty URI headers")
                _check_chars(headers, _HEADERS_CHARS, "URI headers")
                uri.headers = headers
                rest = rest[:qmark]
            semi = rest.find(";")
            if semi >= 0:
                uri.params = _parse_uri_params(rest[semi + 1 :])
                rest = rest[:semi]
            else:
                uri.params = {}
            if ":" in rest or not rest or rest.strip(_HOST_CHARS):
                uri.host, uri.port = parse_host_port(rest)
            else:
                uri.host = rest.lower()
                uri.port = None
        elif scheme == "tel":
            uri.port = None
            uri.opaque = rest
            uri.host = ""
            number, has_params, ptext = rest.partition(";")
            if not number:
                raise ValueError(f"empty tel number: {text!r}")
            _check_chars(number, _PARAM_CHARS, "tel number")
            uri.user = number
            uri.params = _parse_uri_params(ptext) if has_params else {}
        else:
            uri.port = None
            uri.opaque = rest
            uri.user = None
            uri.host = ""
            uri.params = {}
        uri._text = text
        uri._orig = uri._snapshot()
        return uri

    def _snapshot(self) -> tuple[object, ...]:
        return (
            self.scheme, self.user, self.password, self.host, self.port,
            self.headers, self.opaque, dict(self.params),
        )

    def __str__(self) -> str:
        # Comparing a snapshot instead of intercepting every attribute write
        # keeps reads at plain slot speed and still sees in-place edits of
        # the params dict.
        text = self._text
        if text is not None and self._orig == (
            self.scheme, self.user, self.password, self.host, self.port,
            self.headers, self.opaque, self.params,
        ):
            # (_snapshot() inline, without its dict copy: == compares the
            # params dict by value all the same.)
            return text
        return self._build()

    def _build(self) -> str:
        scheme = self.scheme
        if scheme in _SIP_SCHEMES:
            out = [scheme, ":"]
            if self.user is not None:
                out.append(self.user)
                if self.password is not None:
                    out += (":", self.password)
                out.append("@")
            out.append(self.host)
            if self.port is not None:
                out += (":", str(self.port))
        elif scheme == "tel":
            out = [scheme, ":", self.user or ""]
        else:
            return f"{scheme}:{self.opaque}"
        for name, value in self.params.items():
            out += (";", name) if value is None else (";", name, "=", value)
        if self.headers is not None:
            out += ("?", self.headers)
        return "".join(out)

    def __repr__(self) -> str:
        return f"URI({str(self)!r})"

    @property
    def user_unescaped(self) -> str:
        user = self.user or ""
        return unquote(user, errors="surrogateescape") if "%" in user else user

    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def aor(self) -> str:
        """Address-of-record key: scheme, user and host only.

        Escapes in the user part are normalised (``%75ser`` == ``user``, RFC
        3261 19.1.4) but characters that must stay escaped stay escaped, so
        ``%40`` never turns into a second '@' and ``%00`` is kept intact.
        """
        if self.scheme not in _SIP_SCHEMES:
            return str(self)
        if self.user is None:
            return f"{self.scheme}:{self.host}"
        return f"{self.scheme}:{_normalise_escapes(self.user)}@{self.host}"

    def equivalent(self, other: URI) -> bool:
        """RFC 3261 19.1.4 comparison: the registrar's test for "the same
        contact". Escapes are decoded, host and scheme compared without case;
        user, ttl, method, maddr and transport must agree wherever either URI
        has them, any other parameter only where both have it."""
        if self.scheme != other.scheme:
            return False
        if self.scheme not in _SIP_SCHEMES:
            return str(self).lower() == str(other).lower()
        if (
            self.user_unescaped != other.user_unescaped
            or self.password != other.password
            or self.host.lower() != other.host.lower()
            or self.port != other.port
        ):
            return False
        mine = {k.lower(): v for k, v in self.params.items()}
        theirs = {k.lower(): v for k, v in other.params.items()}
        for name in ("user", "ttl", "method", "maddr", "transport"):
            a, b = mine.get(name), theirs.get(name)
            if (a is None) != (b is None) or (a is not None and a.lower() != (b or "").lower()):
                return False
        for name in mine.keys() & theirs.keys():
            a, b = mine[name], theirs[name]
            if (a or "").lower() != (b or "").lower():
                return False
        def hdrs(uri: URI) -> set[str]:
            return {unquote(h) for h in (uri.headers or "").split("&") if h}

        return hdrs(self) == hdrs(other)

    def copy(self) -> URI:
        new = URI.__new__(URI)
        new.scheme = self.scheme
        new.user = self.user
        new.password = self.password
        new.host = self.host
        new.port = self.port
        new.params = dict(self.params)
        new.headers = self.headers
        new.opaque = self.opaque
        new._text = self._text
        new._orig = self._orig
        return new

    def with_params(self, **params: str | None) -> URI:
        """A copy with ``params`` added or replaced (``lr=None`` -> ``;lr``)."""
        new = self.copy()
        for name, value in params.items():
            new.params[name.lower()] = value
        return new

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None


# Port text -> number, for the fast paths: int() of a str costs several
# times a dict hit, and a proxy sees the same few ports over and over.  Only
# valid ports (0..65535) are stored; bounded against a peer cycling ports.
PORTS: dict[str, int] = {}
_PORTS_MAX = 1024


def port_number(text: str) -> int | None:
    """Number of a 1-5 digit ASCII port text, None when over 65535."""
    port = PORTS.get(text)
    if port is None:
        port = int(text)
        if port > 65535:
            return None
        if len(PORTS) >= _PORTS_MAX:
            PORTS.clear()
        PORTS[text] = port
    return port


_NO_PARAMS: dict[str, str | None] = {}  # never mutated (see uri_from_match)


def uri_from_match(
    text: str, scheme: str, user: str | None, host: str, port_text: str | None, ptext: str,
) -> URI | None:
    """Build the URI for a ``SIP_URI_PATTERN`` match (groups as arguments).

    None when the port is out of range: the caller then takes the general
    path, which raises the proper error.
    """
    if port_text is None:
        port = None
    else:
        port = PORTS.get(port_text) or port_number(port_text)
        if port is None:
            return None
    params: dict[str, str | None] = {}
    if ptext:
        # The pattern guarantees non-empty names, values and no '%'.
        for item in ptext[1:].split(";"):
            name, eq, value = item.partition("=")
            params[name.lower()] = value if eq else None
    host = host.lower()
    uri = URI.__new__(URI)
    uri.scheme = scheme
    uri.user = user
    uri.password = None
    uri.host = host
    uri.port = port
    uri.params = params
    uri.headers = None
    uri.opaque = ""
    uri._text = text
    # Same tuple as _snapshot(), built inline on this hot path; the snapshot
    # of no params can share one empty dict, as snapshots are only compared.
    uri._orig = (scheme, user, None, host, port, None, "", dict(params) if params else _NO_PARAMS)
    return uri


_KEEP_UNESCAPED = frozenset(_UNRESERVED + "&=+$,;?/")


def _normalise_escapes(text: str) -> str:
    if "%" not in text:
        return text
    chunks = text.split("%")
    out = [chunks[0]]
    for chunk in chunks[1:]:
        char = chr(int(chunk[:2], 16))
        if char in _KEEP_UNESCAPED:
            out.append(char + chunk[2:])
        else:
            out.append("%" + chunk[:2].upper() + chunk[2:])
    return "".join(out)

