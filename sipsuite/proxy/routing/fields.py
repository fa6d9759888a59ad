"""The request's fields as properties of ``ctx``: Kamailio's ``$ru``, ``$fU``...

=====================  =======  =====  ==============================================
ctx.                   Kamailio write  what
=====================  =======  =====  ==============================================
``ruri``               ``$ru``  yes    the Request-URI, as text
``ruri_user``          ``$rU``  yes    its user part (None: none)
``ruri_host``          ``$rd``  yes    its host (an IPv6 one in brackets)
``dst_uri``            ``$du``  yes    the next hop of a ``relay()`` with no targets
``from_uri``           ``$fu``  yes    the From URI
``from_user``          ``$fU``  yes    its user part
``from_display``       ``$fn``  yes    the From display name, unquoted (None: none)
``to_uri``             ``$tu``  yes    the To URI
``to_user``            ``$tU``  yes    its user part
``call_id``            ``$ci``  no     the Call-ID
``user_agent``         ``$ua``  no     the User-Agent header (None: none)
``source_ip``          ``$si``  no     the address the request came from
``source_port``        ``$sp``  no     ... and its port
``proto``              ``$pr``  no     its transport: "udp", "tcp" or "tls"
=====================  =======  =====  ==============================================

A write changes ``ctx.request`` itself, so the next read sees it at once and
what ``relay()`` sends carries it; Kamailio queues the change until the
message is sent or ``msg_apply_changes()`` runs.  Here each write is as if
``msg_apply_changes()`` ran right after it: an answer the proxy makes
itself later in the transaction (``ctx.reply``, a 408, a 487) is built from
the changed request too.  Tags and header parameters are kept.  Nothing is
restored in the answers the callee sends back: the caller sees the changed
From in them.  ``ctx.replace_from`` (``uac_replace_from``) restores it.

In ``branch_route`` these are the transaction's request, not the branch's:
edit ``branch.request`` there to change one branch only.  In
``reply_route`` they are still the request's, never the response's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sipsuite.sip.headers import NameAddr
from sipsuite.sip.uri import URI

if TYPE_CHECKING:
    from sipsuite.proxy.api import CallState
    from sipsuite.sip.message import Request

__all__ = ["DstUri", "MessageFields"]


class DstUri:
    """The transaction's ``$du``, in its CallState: kept for every relay()
    of the transaction (failure_route's too) until written again."""

    __slots__ = ("uri",)

    def __init__(self) -> None:
        self.uri: URI | None = None


def _uri(value: str | URI) -> URI:
    return value.copy() if isinstance(value, URI) else URI.parse(value)


def _quoted(display: str) -> str:
    return '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'


class MessageFields:
    """Mixed into RequestContext: the Kamailio pseudo-variables of the request."""

    __slots__ = ()

    # Provided by RequestContext.
    request: Request
    source: Any
    call: CallState

    # -- Request-URI ---------------------------------------------------------------
    @property
    def ruri(self) -> str:
        """``$ru``: the Request-URI; assign a string or a URI."""
        return str(self.request.uri)

    @ruri.setter
    def ruri(self, value: str | URI) -> None:
        self.request.uri = _uri(value)

    @property
    def ruri_user(self) -> str | None:
        """``$rU``: the Request-URI's user; None removes it."""
        return self.request.uri.user

    @ruri_user.setter
    def ruri_user(self, value: str | None) -> None:
        uri = self.request.uri.copy()
        uri.user = value or None
        if uri.user is None:
            uri.password = None
        self.request.uri = uri

    @property
    def ruri_host(self) -> str:
        """``$rd``: the Request-URI's host."""
        return self.request.uri.host

    @ruri_host.setter
    def ruri_host(self, value: str) -> None:
        # Parsed as a URI would be, so a bad host fails here, not on the wire;
        # a port or a user in it would be lost, so they are refused.
        parsed = URI.parse(f"sip:{value}") if isinstance(value, str) else None
        if parsed is None or parsed.user is not None or parsed.port is not None or parsed.params \
                or parsed.headers is not None:
            raise ValueError(f"not a host: {value!r} (set the port with ctx.request.uri.port)")
        uri = self.request.uri.copy()
        uri.host = parsed.host
        self.request.uri = uri

    # -- next hop ------------------------------------------------------------------
    @property
    def dst_uri(self) -> str | None:
        """``$du``: where ``relay()`` with no targets sends the request
        instead of the Request-URI or the Route (resolved by RFC 3263 like
        them); None: not set.  It stays set for the transaction: in
        failure_route assign None before relaying by the Request-URI again
        (Kamailio's ``resetdsturi()``)."""
        uri = self.call.get(DstUri).uri
        return None if uri is None else str(uri)

    @dst_uri.setter
    def dst_uri(self, value: str | URI | None) -> None:
        uri = None if value is None else _uri(value)
        if uri is not None and uri.scheme not in ("sip", "sips"):
            raise ValueError(f"dst_uri must be a sip: or sips: URI, not {value!r}")
        self.call.get(DstUri).uri = uri

    @property
    def _dst_hop(self) -> URI | None:
        # The parsed dst_uri, for relay(); no state made just to read it.
        state = self.call.peek(DstUri)
        return None if state is None else state.uri

    # -- From, To --------------------------------------------------------------------
    def _addr(self, name: str) -> NameAddr:
        return (self.request.from_ if name == "From" else self.request.to).copy()

    def _put(self, name: str, addr: NameAddr) -> None:
        self.request.set_header(name, str(addr))

    def _set_uri(self, name: str, value: str | URI) -> None:
        addr = self._addr(name)
        addr.uri = _uri(value)
        self._put(name, addr)

    def _set_user(self, name: str, value: str | None) -> None:
        addr = self._addr(name)
        addr.uri.user = value or None
        self._put(name, addr)

    @property
    def from_uri(self) -> str:
        """``$fu``: the From URI (its tag and parameters stay on a write)."""
        return str(self.request.from_.uri)

    @from_uri.setter
    def from_uri(self, value: str | URI) -> None:
        self._set_uri("From", value)

    @property
    def from_user(self) -> str | None:
        """``$fU``: the From URI's user."""
        return self.request.from_.uri.user

    @from_user.setter
    def from_user(self, value: str | None) -> None:
        self._set_user("From", value)

    @property
    def from_display(self) -> str | None:
        """``$fn``: the From display name, without its quotes; a write is
        quoted as needed, None removes it."""
        return self.request.from_.display_unquoted

    @from_display.setter
    def from_display(self, value: str | None) -> None:
        addr = self._addr("From")
        addr.display = _quoted(value) if value else None
        addr.angle = True
        self._put("From", addr)

    @property
    def to_uri(self) -> str:
        """``$tu``: the To URI (its tag and parameters stay on a write)."""
        return str(self.request.to.uri)

    @to_uri.setter
    def to_uri(self, value: str | URI) -> None:
        self._set_uri("To", value)

    @property
    def to_user(self) -> str | None:
        """``$tU``: the To URI's user."""
        return self.request.to.uri.user

    @to_user.setter
    def to_user(self, value: str | None) -> None:
        self._set_user("To", value)

    # -- read-only ------------------------------------------------------------------
    @property
    def call_id(self) -> str:
        """``$ci``: the Call-ID (read-only, as Kamailio's)."""
        return self.request.call_id

    @property
    def user_agent(self) -> str | None:
        """``$ua``: the User-Agent header, None without one (read-only)."""
        return self.request.header("User-Agent")

    @property
    def source_ip(self) -> str:
        """``$si``: the address the request came from (IPv6 unbracketed)."""
        return str(self.source.host)

    @property
    def source_port(self) -> int:
        """``$sp``: the port it came from."""
        return int(self.source.port)

    @property
    def proto(self) -> str:
        """``$pr``: the transport it came over: "udp", "tcp" or "tls"."""
        return str(self.source.transport)
