"""Caller-id rewriting with automatic restore: Kamailio's uac module
(``uac_replace_from`` / ``uac_replace_to`` with ``restore_mode = "auto"``),
reached by a routing script as ``ctx.replace_from(uri, display)`` and
``ctx.replace_to(...)``.

What each side sees:

* the callee gets the new From (To) in the request and in every later
  request of the caller in the dialog;
* the caller gets its own From (To) back in every answer, and in every
  request the callee sends in the dialog (BYE, re-INVITE: there the To
  carries the replaced value and is set back to the caller's original).

The state is not kept in memory: the original and the new values travel in
a parameter of our own Record-Route (``;uac=TOKEN``), which every in-dialog
request brings back in its Route, so a restart, another worker process or
another node sharing ``[uac] secret`` restores the same way.  The token is
encrypted (the callee, who sees our Record-Route, does not learn the
caller's original identity) and authenticated together with the dialog's
Call-ID and the caller's From tag: no UA can forge one or replay one taken
from another dialog.  A token that does not verify is ignored (the headers
stay as sent), counted (``uac.forged``) and logged.

Which way a request goes is told by the tag the token verifies with: the
caller's From tag in the From means caller to callee, in the To the
opposite (Kamailio compares the Route's ``ftag`` the same way).  Tags are
never changed.

The replies are restored by the core, just before each answer goes
upstream (``CallState.upstream_fix``): to the From and To the request had
as received, so answers made here (``ctx.reply``, a timeout's 408) are
restored like the callee's.

``ctx.request`` itself carries the new values once ``replace_from`` returns
(the next read of the From sees them; Kamailio needs ``msg_apply_changes()``
for that), so every branch, the CANCEL and the ACK the proxy builds carry
them too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.log import get_logger
from sipsuite.proxy.routing.base import DIALOG_CREATING
from sipsuite.proxy.services import UAC
from sipsuite.sip.headers import NameAddr
from sipsuite.sip.uri import URI

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.routing.base import RequestContext
    from sipsuite.sip.message import Response

log = get_logger("sipsuite.proxy.uac")

#: The Record-Route parameter (Kamailio's uac names its own vsf and vst).
PARAM = "uac"

_NONCE = 12
_MAC = 16
# Token versions: a change of the layout gets a new label, so an old
# token fails the MAC instead of being misread.
_LABEL = b"sipsuite uac restore v1"


class ReplaceError(RuntimeError):
    """replace_from/replace_to cannot be done (no secret, a bad value)."""


class TokenError(ValueError):
    """A token that does not verify."""


# -- the token: encrypt-then-MAC with the standard library only ----------------------


class Sealer:
    """Encrypts and authenticates small payloads under one secret.

    There is no block cipher in the standard library, so the cipher is a
    PRF in counter mode: keyed BLAKE2b of (nonce, counter) gives 64 bytes of
    key stream per call, XORed with the plaintext; a random 96-bit nonce per
    token keeps the streams apart.  The MAC is HMAC-SHA-256 (truncated to
    128 bits) over the associated data, the nonce and the ciphertext, under
    a second key: encrypt-then-MAC, verified before anything is decrypted.
    Both keys are derived from the secret, so neither doubles as the other.
    """

    __slots__ = ("_enc", "_mac")

    def __init__(self, secret: bytes) -> None:
        root = hmac.digest(secret, _LABEL, "sha256")
        self._enc = hmac.digest(root, b"encrypt", "sha256")
        self._mac = hmac.digest(root, b"authenticate", "sha256")

    def _stream(self, nonce: bytes, size: int) -> bytes:
        out = bytearray()
        counter = 0
        while len(out) < size:
            out += hashlib.blake2b(nonce + counter.to_bytes(4, "big"), key=self._enc).digest()
            counter += 1
        return bytes(out[:size])

    def _tag(self, ad: bytes, nonce: bytes, ct: bytes) -> bytes:
        msg = len(ad).to_bytes(4, "big") + ad + nonce + ct
        return hmac.digest(self._mac, msg, "sha256")[:_MAC]

    def seal(self, plaintext: bytes, ad: bytes) -> str:
        nonce = os.urandom(_NONCE)
        ct = _xor(plaintext, self._stream(nonce, len(plaintext)))
        raw = nonce + ct + self._tag(ad, nonce, ct)
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def open(self, token: str, ad: bytes) -> bytes:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise TokenError("not base64") from None
        if len(raw) < _NONCE + _MAC:
            raise TokenError("too short")
        nonce, ct, tag = raw[:_NONCE], raw[_NONCE:-_MAC], raw[-_MAC:]
        if not hmac.compare_digest(tag, self._tag(ad, nonce, ct)):
            raise TokenError("MAC mismatch")
        return _xor(ct, self._stream(nonce, len(ct)))


def _xor(data: bytes, stream: bytes) -> bytes:
    # As two big integers: one C operation instead of a loop per byte.
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def _ad(call_id: str, ftag: str) -> bytes:
    return f"{call_id}\x00{ftag}".encode("utf-8", "surrogateescape")


# -- per-call state ----------------------------------------------------------------------


@dataclass(slots=True)
class UacState:
    """What a transaction's replacement needs: the values to put in the
    token and the From/To as received, which every answer gets back."""

    # (original, new) name-addr text without parameters, per header.
    from_pair: tuple[str, str] | None = None
    to_pair: tuple[str, str] | None = None
    received_from: str | None = None
    received_to: str | None = None
    received_to_tagged: bool = False

    def fix(self, resp: Response) -> None:
        """CallState.upstream_fix: the caller's own From/To in an answer."""
        if self.received_from is not None:
            resp.set_header("From", self.received_from)
        if self.received_to is not None:
            tag = resp.to_tag
            value = self.received_to
            if tag and not self.received_to_tagged:
                value = f"{value};tag={tag}"
            resp.set_header("To", value)


def _bare(addr: NameAddr) -> str:
    """name-addr text of ``addr`` without its header parameters (the tag)."""
    return str(NameAddr(addr.uri, addr.display, {}, True))


def _with_params(bare: str, params: Mapping[str, str | None]) -> str:
    addr = NameAddr.parse(bare)
    addr.params = dict(params)
    return str(addr)


def _pair(value: object) -> tuple[str, str] | None:
    """A token's (original, new) for one header; ValueError for anything else."""
    if value is None:
        return None
    if (isinstance(value, list) and len(value) == 2
            and isinstance(value[0], str) and isinstance(value[1], str)):
        return (value[0], value[1])
    raise ValueError(f"not a pair of name-addrs: {value!r}")


def _quote_display(display: str) -> str:
    escaped = display.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _check_text(what: str, text: str) -> None:
    # A value with CR/LF or other controls would break the header (or add
    # one): refused rather than cleaned, so a script bug shows.
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ReplaceError(f"{what} {text!r}: control characters are not allowed")


def _new_uri(uri: URI | str) -> URI:
    if isinstance(uri, URI):
        text = str(uri)
    else:
        text = uri.strip()
        _check_text("uri", text)
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1]
        if any(c in text for c in '<> "'):
            raise ReplaceError(f"uri {uri!r}: expected a bare SIP URI")
    try:
        parsed = URI.parse(text)
    except ValueError as e:
        raise ReplaceError(f"uri {uri!r}: {e}") from None
    if parsed.scheme not in ("sip", "sips", "tel"):
        raise ReplaceError(f"uri {uri!r}: expected a sip:, sips: or tel: URI")
    return parsed


# -- the module ---------------------------------------------------------------------------


class Uac:
    """The UAC service (``ctx.replace_from`` / ``replace_to``) and the
    request_received hook that rewrites in-dialog requests."""

    name: ClassVar[str] = "uac"

    __slots__ = ("core", "_sealer", "_sealer_secret", "forged", "restored")

    def __init__(self, core: CoreAPI) -> None:
        self.core = core
        self._sealer: Sealer | None = None
        self._sealer_secret = ""
        self.forged = 0
        self.restored = 0

    def _keys(self) -> Sealer | None:
        secret = self.core.config.uac.secret
        if not secret:
            return None
        if secret != self._sealer_secret or self._sealer is None:
            self._sealer = Sealer(secret.encode())
            self._sealer_secret = secret
        return self._sealer

    # -- the script's call -----------------------------------------------------------
    def replace(self, ctx: RequestContext, which: str, uri: URI | str | None,
                display: str | None) -> None:
        sealer = self._keys()
        if sealer is None:
            raise ReplaceError(f"replace_{which} needs [uac] secret (it is empty): the original"
                               " travels in our Record-Route, sealed with that secret")
        if uri is None and display is None:
            return
        req = ctx.request
        header = "From" if which == "from" else "To"
        current = req.from_ if which == "from" else req.to
        new = current.copy()
        if uri is not None:
            new.uri = _new_uri(uri)
            new.angle = True
        if display is not None:
            _check_text("display", display)
            new.display = _quote_display(display) if display else None
        state = ctx.call.get(UacState)
        received = req.header(header) or ""
        if which == "from":
            if state.received_from is None:
                state.received_from = received
            original = state.from_pair[0] if state.from_pair else _bare(current)
            state.from_pair = (original, _bare(new))
        else:
            if state.received_to is None:
                state.received_to = received
                state.received_to_tagged = current.tag is not None
            original = state.to_pair[0] if state.to_pair else _bare(current)
            state.to_pair = (original, _bare(new))
        req.set_header(header, str(new))
        ctx.call.upstream_fix = state.fix
        if ctx.in_dialog or req.method not in DIALOG_CREATING:
            # No dialog is made here, so nothing comes back to restore:
            # this request and its answers only.
            return
        # The restore needs the dialog's later requests to pass here.
        ctx.record_route()
        payload: dict[str, list[str]] = {}
        if state.from_pair:
            payload["f"] = list(state.from_pair)
        if state.to_pair:
            payload["t"] = list(state.to_pair)
        plain = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        token = sealer.seal(plain, _ad(req.call_id, req.from_tag or ""))
        params = [p for p in ctx.call.rr_params if not p.startswith(PARAM + "=")]
        params.append(f"{PARAM}={token}")
        ctx.call.rr_params = params

    # -- in-dialog requests (request_received) ------------------------------------------
    def in_dialog(self, ctx: RequestContext) -> None:
        removed = ctx.removed_routes
        if not removed:
            return
        token = None
        for route in removed:
            token = route.uri.params.get(PARAM)
            if token:
                break
        if not token:
            return
        req = ctx.request
        to_tag = req.to_tag
        sealer = self._keys()
        if to_tag is None or sealer is None:
            # Our token on an initial request (a Route copied by hand), or
            # a secret taken away: nothing can be verified.
            self._forged(ctx, "no secret" if sealer is None else "not in a dialog")
            return
        call_id = req.call_id
        downstream = True
        try:
            plain = sealer.open(token, _ad(call_id, req.from_tag or ""))
        except TokenError:
            downstream = False
            try:
                plain = sealer.open(token, _ad(call_id, to_tag))
            except TokenError as e:
                self._forged(ctx, str(e))
                return
        try:
            payload = json.loads(plain)
            from_pair = _pair(payload.get("f"))
            to_pair = _pair(payload.get("t"))
        except (ValueError, AttributeError):
            # Authentic but unreadable: a token of another version, or a
            # bug of ours; never a UA's doing (it could not seal one).
            log.warn("uac: unreadable restore token in {m} (call-id {c})", m=req.method, c=call_id)
            return
        state = ctx.call.get(UacState)
        # Caller to callee: the new values again.  Callee to caller: the To
        # holds the caller's replaced From (and the From the replaced To):
        # back to the originals.
        if downstream:
            changes = (("From", from_pair, 1), ("To", to_pair, 1))
        else:
            changes = (("To", from_pair, 0), ("From", to_pair, 0))
        for header, pair, index in changes:
            if not pair:
                continue
            current = req.from_ if header == "From" else req.to
            received = req.header(header) or ""
            try:
                value = _with_params(pair[index], current.params)
            except ValueError:
                continue
            if header == "From":
                state.received_from = received
            else:
                state.received_to = received
                state.received_to_tagged = current.tag is not None
            req.set_header(header, value)
        ctx.call.upstream_fix = state.fix
        self.restored += 1

    def _forged(self, ctx: RequestContext, why: str) -> None:
        self.forged += 1
        self.core.stats.count("uac.forged")
        req = ctx.request
        log.warn("uac: restore parameter ignored ({why}): {m} {u} from {s} (call-id {c});"
                 " From and To left as sent", why=why, m=req.method, u=req.uri, s=ctx.source,
                 c=req.call_id)

    # -- the module's life ------------------------------------------------------------
    def start(self) -> None:
        pass

    def reconfigure(self, old: Config, new: Config) -> None:
        pass  # the secret is read at use

    def stats(self) -> Mapping[str, object]:
        return {"restored": self.restored, "forged": self.forged}

    def stop(self) -> None:
        pass


class UacSpec:
    """Set up when ``[uac] secret`` is set (a start-up key): without it no
    token can be made or read, and its request_received hook would cost
    every request of a proxy that never rewrites a From."""

    name = "uac"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return bool(config.uac.secret)

    def setup(self, core: CoreAPI, config: Config) -> Uac:
        module = Uac(core)
        core.hooks.on_request_received(module.in_dialog)
        core.modules.provide(UAC, module)
        return module


SPEC = UacSpec()
