"""HTTP Digest authentication for SIP (RFC 2617, RFC 7616, RFC 3261 22.4), sans-IO.

Server side: ``NonceFactory`` issues and checks stateless nonces (any proxy
node that shares the secret can check them, so a client may be challenged by
one node and answer to another), ``challenge`` builds the WWW-Authenticate /
Proxy-Authenticate value, ``parse_credentials`` reads the client's answer,
``verify`` checks it against a stored HA1 and ``NonceCounter`` rejects replays
of a nonce-count within this process.  Client side: ``authorization``.

A typical check::

    creds = parse_credentials(header_value)
    if creds is None or creds.realm != realm or creds.uri != request_uri: -> 401/407
    state = nonces.check(creds.nonce, now, realm)      # "stale" -> rechallenge stale=true
    verify(creds, method, ha1) and (creds.qop is None or
        counter.accept(creds.nonce, creds.nc, nonces.expires_at(creds.nonce, realm), now))

Nothing here reads a clock: every time is a float of seconds passed in.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import re
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

__all__ = [
    "ALGORITHMS",
    "Credentials",
    "NonceCounter",
    "NonceFactory",
    "authorization",
    "challenge",
    "compute_ha1",
    "compute_response",
    "parse_challenge",
    "parse_credentials",
    "verify",
]

ALGORITHMS = ("MD5", "SHA-256")


class _Hash(Protocol):
    def hexdigest(self) -> str: ...


_HASHES: dict[str, Callable[[bytes], _Hash]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}
_HEX_LEN = {"MD5": 32, "SHA-256": 64}

# Algorithm names are case-insensitive (RFC 7616 3.3); the canonical spellings
# are the IANA ones, so that a stored HA1 keyed "SHA-256" is found for "sha-256".
# The -sess and SHA-512-256 names are normalised too but not supported by verify.
_CANONICAL_ALGORITHM = {
    name.lower(): name
    for name in ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "SHA-512-256", "SHA-512-256-sess")
}

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _normalise_algorithm(algorithm: str) -> str:
    return _CANONICAL_ALGORITHM.get(algorithm.lower(), algorithm)


def _hash_for(algorithm: str) -> Callable[[bytes], _Hash]:
    try:
        return _HASHES[_normalise_algorithm(algorithm)]
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}") from None


def _encode(text: str) -> bytes:
    # UTF-8 as RFC 7616 charset=UTF-8 (SIP is UTF-8 throughout); surrogateescape
    # recovers the exact bytes of a header the parser decoded that way, so a
    # client that hashed raw non-UTF-8 octets still verifies.
    return text.encode("utf-8", "surrogateescape")


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX_DIGITS.issuperset(text)


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """Hex H(username:realm:password); ``ValueError`` for an unsupported algorithm."""
    h = _hash_for(algorithm)
    return h(_encode(f"{username}:{realm}:{password}")).hexdigest()


def compute_response(
    algorithm: str,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    *,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body_hash: str | None = None,
) -> str:
    """The request-digest (RFC 2617 3.2.2.1, RFC 7616 3.4.1) as lowercase hex.

    Without ``qop`` this is the RFC 2069 form H(HA1:nonce:HA2).  For qop
    "auth-int", ``body_hash`` is the hex hash of the message body with the same
    algorithm.  ``ValueError`` for an unsupported algorithm or qop, or a qop
    without nc/cnonce.
    """
    h = _hash_for(algorithm)
    qop_l = qop.lower() if qop is not None else None
    if qop_l == "auth-int":
        if body_hash is None:
            raise ValueError("qop=auth-int needs body_hash")
        a2 = f"{method}:{uri}:{body_hash}"
    elif qop_l is None or qop_l == "auth":
        a2 = f"{method}:{uri}"
    else:
        raise ValueError(f"unsupported qop {qop!r}")
    ha2 = h(_encode(a2)).hexdigest()
    if qop is None:
        return h(_encode(f"{ha1}:{nonce}:{ha2}")).hexdigest()
    if nc is None or cnonce is None:
        raise ValueError("qop needs nc and cnonce")
    # qop is hashed as sent: the client hashed its own spelling of it.
    return h(_encode(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")).hexdigest()


# --- parsing ---------------------------------------------------------------

_LWS = r"[ \t\r\n]*"
# RFC 3261 25.1 token characters.
_TOKEN = r"[!%'*+\-.0-9A-Z_`a-z~]+"
_SCHEME_RE = re.compile(rf"{_LWS}({_TOKEN})(?:[ \t\r\n]+|$)")
# Unquoted values are read leniently (anything up to LWS, ',' or '"'): they are
# hashed or compared as sent, so accepting e.g. an unquoted URI costs nothing.
_PARAM_RE = re.compile(
    rf'({_TOKEN}){_LWS}={_LWS}(?:"([^"\\]*+(?:\\.[^"\\]*+)*+)"|([^ \t\r\n,"]+))',
    re.DOTALL,
)
# A comma between params, with the empty list elements RFC 2616 #rule allows.
_SEP_RE = re.compile(rf"{_LWS}(,[ \t\r\n,]*)?")
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


def _parse_digest(value: str) -> dict[str, str] | None:
    """Params of a ``Digest`` header value (names lowercased), or None."""
    m = _SCHEME_RE.match(value)
    if m is None or m.group(1).lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = m.end()
    end = len(value)
    sep = _SEP_RE.match(value, pos)
    assert sep is not None  # the pattern matches the empty string
    pos = sep.end()
    while pos < end:
        m = _PARAM_RE.match(value, pos)
        if m is None:
            return None
        name = m.group(1).lower()
        # A repeated param would let two readers of one header disagree on it.
        if name in params:
            return None
        quoted = m.group(2)
        if quoted is not None:
            # split + join: the pieces around each quoted-pair and the
            # characters it escapes, in order.  (sub with a "\1" template
            # expands it in Python per match: thousands of escapes cost
            # more than the rest of the message.)
            params[name] = "".join(_UNESCAPE_RE.split(quoted)) if "\\" in quoted else quoted
        else:
            params[name] = m.group(3)
        sep = _SEP_RE.match(value, m.end())
        assert sep is not None
        if sep.group(1) is None and sep.end() < end:
            return None
        pos = sep.end()
    return params


def parse_challenge(value: str) -> dict[str, str]:
    """Params of a ``Digest`` WWW-Authenticate / Proxy-Authenticate value.

    Names are lowercased, quoted values unescaped, values otherwise raw.  An
    empty dict for another scheme or unparseable text.
    """
    try:
        params = _parse_digest(value)
    except (TypeError, ValueError):
        return {}
    return params if params is not None else {}


@dataclass(slots=True)
class Credentials:
    """A parsed ``Digest`` Authorization / Proxy-Authorization value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    params: dict[str, str] = field(default_factory=dict)


_REQUIRED = ("username", "realm", "nonce", "uri", "response")


def parse_credentials(value: str) -> Credentials | None:
    """Digest credentials, or None for another scheme, a missing field or garbage."""
    try:
        params = _parse_digest(value)
    except (TypeError, ValueError):
        return None
    if params is None or any(name not in params for name in _REQUIRED):
        return None
    return Credentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=_normalise_algorithm(params.get("algorithm", "MD5")),
        qop=params.get("qop"),
        nc=params.get("nc"),
        cnonce=params.get("cnonce"),
        opaque=params.get("opaque"),
        params=params,
    )


# --- nonces -------------------------------------------------------------------

_NONCE_TS = struct.Struct(">q")  # issue time in milliseconds; signed, so any float works
_NONCE_RANDOM = 6
_NONCE_MAC = 16
_NONCE_BYTES = _NONCE_TS.size + _NONCE_RANDOM + _NONCE_MAC
_NONCE_CHARS = (_NONCE_BYTES * 8 + 5) // 6
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# Clocks of the nodes sharing a secret are never exactly in step.
_FUTURE_SKEW = 5.0


class NonceState(StrEnum):
    """What NonceFactory.check says of a nonce (a StrEnum: equals its word)."""

    VALID = "valid"
    STALE = "stale"
    INVALID = "invalid"


class NonceFactory:
    """Stateless nonces: issue time + random bytes + truncated HMAC-SHA256.

    The realm is under the MAC, so a nonce issued for one realm is invalid in
    another.  Nonces are url-safe base64 without padding: no character needs
    escaping in a quoted string or a Redis key.
    """

    __slots__ = ("_pool", "_pos", "_secret", "lifetime")

    def __init__(self, secret: bytes, lifetime: float) -> None:
        if not secret:
            raise ValueError("nonce secret must not be empty")
        if lifetime <= 0:
            raise ValueError("nonce lifetime must be positive")
        self._secret = secret
        self.lifetime = lifetime
        # Random bytes drawn from the OS a few hundred nonces at a time: one
        # getrandom() call per challenge was a visible part of a REGISTER.
        self._pool = b""
        self._pos = 0

    def _mac(self, head: bytes, realm: str) -> bytes:
        # surrogatepass: a realm from a hostile header must not make this raise.
        msg = b"sipsuite-nonce\x00" + realm.encode("utf-8", "surrogatepass") + b"\x00" + head
        # hmac.digest is OpenSSL's one-shot HMAC: no Python-level HMAC object.
        return hmac.digest(self._secret, msg, "sha256")[:_NONCE_MAC]

    def make(self, now: float, realm: str = "") -> str:
        pos = self._pos
        if pos + _NONCE_RANDOM > len(self._pool):
            self._pool = secrets.token_bytes(_NONCE_RANDOM * 512)
            pos = 0
        self._pos = pos + _NONCE_RANDOM
        head = _NONCE_TS.pack(round(now * 1000)) + self._pool[pos : pos + _NONCE_RANDOM]
        raw = head + self._mac(head, realm)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _issued_at(self, nonce: str, realm: str) -> float | None:
        if len(nonce) != _NONCE_CHARS or not _B64URL.issuperset(nonce):
            return None
        padded = nonce + "=" * (-len(nonce) % 4)
        try:
            raw = base64.urlsafe_b64decode(padded)
        except ValueError:
            return None
        # Unused low bits of the last character would give several spellings of
        # one nonce; NonceCounter keys on the spelling, so accept only one.
        if base64.urlsafe_b64encode(raw).decode("ascii") != padded:
            return None
        head, mac = raw[:-_NONCE_MAC], raw[-_NONCE_MAC:]
        if not hmac.compare_digest(mac, self._mac(head, realm)):
            return None
        return _NONCE_TS.unpack_from(head)[0] / 1000

    def check(self, nonce: str, now: float, realm: str = "") -> NonceState:
        """VALID, STALE (authentic but expired: rechallenge with stale=true) or INVALID."""
        issued = self._issued_at(nonce, realm)
        if issued is None or issued > now + _FUTURE_SKEW:
            return NonceState.INVALID
        if now - issued > self.lifetime:
            return NonceState.STALE
        return NonceState.VALID

    def expires_at(self, nonce: str, realm: str = "") -> float | None:
        """When an authentic nonce goes stale (for ``NonceCounter.accept``); else None."""
        issued = self._issued_at(nonce, realm)
        return None if issued is None else issued + self.lifetime


class NonceCounter:
    """Per-process nonce-count replay check (RFC 7616 3.4).

    Remembers the highest nc accepted per nonce until the nonce expires.  When
    ``max_entries`` nonces are live, the one expiring soonest is forgotten, and
    a replay with that nonce would then pass here: call ``accept`` only after
    ``verify`` succeeded, so that only authenticated clients can fill the table.
    """

    __slots__ = ("_entries", "_heap", "max_entries")

    def __init__(self, max_entries: int = 100000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        # nonce -> [highest nc, expires_at]; expires_at is fixed at first sight,
        # so _heap holds exactly one (expires_at, nonce) per entry.
        self._entries: dict[str, list[float]] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            del self._entries[heapq.heappop(heap)[1]]

    def accept(self, nonce: str, nc: str, expires_at: float, now: float) -> bool:
        if not _is_hex(nc, 8):
            return False
        count = int(nc, 16)
        self._prune(now)
        if expires_at <= now:
            # Nothing to remember it by once forgotten; the nonce is stale anyway.
            return False
        entry = self._entries.get(nonce)
        if entry is not None:
            if count <= entry[0]:
                return False
            entry[0] = count
            return True
        if count < 1:
            return False
        while len(self._entries) >= self.max_entries:
            del self._entries[heapq.heappop(self._heap)[1]]
        self._entries[nonce] = [count, expires_at]
        heapq.heappush(self._heap, (expires_at, nonce))
        return True


# --- headers --------------------------------------------------------------------


def _quote(value: str) -> str:
    # CR/LF would end the header (injection); NUL is not allowed in a quoted-pair.
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"control character in digest parameter {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(
    realm: str,
    nonce: str,
    algorithm: str = "MD5",
    *,
    stale: bool = False,
    opaque: str | None = None,
    qop: str | None = "auth",
) -> str:
    """A WWW-Authenticate / Proxy-Authenticate value; one per algorithm offered."""
    alg = _normalise_algorithm(algorithm)
    if alg not in _HASHES:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    parts = [f"Digest realm={_quote(realm)}", f"nonce={_quote(nonce)}"]
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    parts.append(f"algorithm={alg}")
    if qop is not None:
        parts.append(f"qop={_quote(qop)}")
    if stale:
        parts.append("stale=true")
    return ", ".join(parts)


def verify(creds: Credentials, method: str, ha1: str, *, body: bytes | None = None) -> bool:
    """Whether ``creds.response`` is right for ``method`` and the stored ``ha1``.

    Only the response is checked: the caller checks realm, nonce (``NonceFactory``),
    nc (``NonceCounter``) and that ``creds.uri`` is the Request-URI.  qop
    "auth-int" verifies only when ``body`` is given.
    """
    alg = _normalise_algorithm(creds.algorithm)
    h = _HASHES.get(alg)
    if h is None or not _is_hex(creds.response, _HEX_LEN[alg]):
        return False
    body_hash = None
    if creds.qop is not None:
        qop = creds.qop.lower()
        if qop == "auth-int":
            if body is None:
                return False
            body_hash = h(body).hexdigest()
        elif qop != "auth":
            return False
        if creds.nc is None or not _is_hex(creds.nc, 8) or not creds.cnonce:
            return False
    try:
        expected = compute_response(
            alg, ha1.lower(), creds.nonce, method, creds.uri,
            qop=creds.qop, nc=creds.nc, cnonce=creds.cnonce, body_hash=body_hash,
        )
    except (ValueError, UnicodeError):
        return False
    return hmac.compare_digest(expected, creds.response.lower())


def authorization(
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    *,
    algorithm: str = "MD5",
    qop: str | None = "auth",
    nc: int = 1,
    cnonce: str | None = None,
    opaque: str | None = None,
    body: bytes | None = None,
) -> str:
    """An Authorization / Proxy-Authorization value, as a SIP client builds it.

    ``qop=None`` gives the RFC 2069 form (no nc/cnonce); a missing ``cnonce`` is
    random.  qop "auth-int" hashes ``body`` (empty if not given).
    """
    alg = _normalise_algorithm(algorithm)
    h = _hash_for(alg)
    ha1 = compute_ha1(alg, username, realm, password)
    nc_text: str | None = None
    body_hash = None
    if qop is not None:
        nc_text = f"{nc:08x}"
        if cnonce is None:
            cnonce = secrets.token_hex(8)
        if qop.lower() == "auth-int":
            body_hash = h(body or b"").hexdigest()
    response = compute_response(
        alg, ha1, nonce, method, uri, qop=qop, nc=nc_text, cnonce=cnonce, body_hash=body_hash
    )
    parts = [
        f"Digest username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={alg}",
    ]
    if qop is not None:
        assert cnonce is not None
        # message-qop and nc are unquoted tokens (RFC 2617 3.2.2).
        parts += [f"qop={qop}", f"nc={nc_text}", f"cnonce={_quote(cnonce)}"]
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    return ", ".join(parts)
