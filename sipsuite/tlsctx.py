"""TLS contexts from ``[tls]``: for the proxy's tls: listeners and outgoing
SIP over TLS, and for the relay's control channel (both ends).

One :class:`TLSContexts` holds the loaded OpenSSL contexts and hands Twisted
connection creators that look the *current* context up per connection, so
:meth:`TLSContexts.reload` changes what new connections get while open ones
keep the context they were made with.  A file that does not load raises
:class:`TLSError`, one line naming the key and the file; a reload that fails
leaves the old contexts serving.

Outgoing connections check the server's chain against ``ca_list`` and its
certificate's name or IP address (service_identity, through Twisted's
``ClientTLSOptions``) against the host we meant to reach (RFC 5922: the host
of the URI, not the address DNS gave).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet._sslverify import ClientTLSOptions
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from sipsuite.config import Config, TLSConfig
from sipsuite.hosts import host_port, is_ip, unbracket
from sipsuite.log import get_logger
from sipsuite.startup import StartupError

log = get_logger("sipsuite.tlsctx")


class TLSError(Exception):
    """A certificate, key or CA file that cannot be used; one line."""


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSError(f"tls.{key}: cannot read {path!r}: {e.strerror or e}") from None


def _certificates(key: str, path: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(key, path))
    except ValueError:
        certs = []
    if not certs:
        raise TLSError(f"tls.{key}: {path!r} holds no PEM certificate")
    return certs


def _ssl_reason(err: SSL.Error) -> str:
    """OpenSSL's error queue as one short phrase."""
    try:
        return "; ".join(str(e[2]) for e in err.args[0]) or str(err)
    except (IndexError, TypeError):
        return str(err)


class _Material:
    """What one load of the files produced: the contexts and a description."""

    def __init__(self, cfg: TLSConfig) -> None:
        if not cfg.certificate or not cfg.private_key:
            missing = "certificate" if not cfg.certificate else "private_key"
            raise TLSError(f"tls.{missing}: no file configured")
        self.chain = _certificates("certificate", cfg.certificate)
        self.cas = _certificates("ca_list", cfg.ca_list) if cfg.ca_list else []
        self.cfg = cfg
        self.server = self._context(cfg, mutual=False)
        self.server_mutual = self._context(cfg, mutual=True)
        self.client = self._context(cfg, mutual=False)
        self.loaded_at = time.time()

    def _context(self, cfg: TLSConfig, *, mutual: bool) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        try:
            ctx.use_certificate_chain_file(cfg.certificate.encode())
        except SSL.Error as e:
            raise TLSError(f"tls.certificate: cannot load {cfg.certificate!r}: "
                           f"{_ssl_reason(e)}") from None
        _read("private_key", cfg.private_key)
        mismatch = TLSError(f"tls.private_key: {cfg.private_key!r} does not match the"
                            f" certificate in {cfg.certificate!r}")
        try:
            ctx.use_privatekey_file(cfg.private_key.encode())
        except SSL.Error as e:
            reason = _ssl_reason(e)
            if "mismatch" in reason:
                raise mismatch from None
            raise TLSError(f"tls.private_key: cannot load {cfg.private_key!r}: {reason}") from None
        try:
            ctx.check_privatekey()
        except SSL.Error:
            raise mismatch from None
        if cfg.ca_list:
            try:
                ctx.load_verify_locations(cfg.ca_list.encode())
            except SSL.Error as e:
                raise TLSError(f"tls.ca_list: cannot load {cfg.ca_list!r}: "
                               f"{_ssl_reason(e)}") from None
        else:
            ctx.set_default_verify_paths()
        if mutual:
            # Chain only: a client's name is not known in advance.  No CA
            # names in the request (pyOpenSSL's X509Name API is deprecated):
            # phones send their one certificate anyway.
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                           lambda conn, cert, errno, depth, ok: bool(ok))
        # Session resumption across reloads would skip the new checks.
        ctx.set_session_id(hashlib.sha256(repr(time.time()).encode()).digest()[:32])
        return ctx

    def describe(self) -> dict[str, Any]:
        leaf = self.chain[0]
        try:
            names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            san = [str(getattr(n, "value", n)) for n in names]
        except x509.ExtensionNotFound:
            san = []
        return {
            "certificate": self.cfg.certificate,
            "subject": leaf.subject.rfc4514_string(),
            "issuer": leaf.issuer.rfc4514_string(),
            "names": san,
            "not_after": leaf.not_valid_after_utc.isoformat(),
            "sha256": leaf.fingerprint(_sha256()).hex(":"),
            "ca_list": self.cfg.ca_list,
            "cas": len(self.cas),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
        }


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, owner: TLSContexts, mutual: Callable[[], bool]) -> None:
        self.owner = owner
        self.mutual = mutual

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        material = self.owner.material
        return SSL.Connection(material.server_mutual if self.mutual() else material.server, None)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """Uses ClientTLSOptions (what optionsForClientTLS returns) around the
    context we load and reload ourselves: optionsForClientTLS would build a
    new context from the files for every connection."""

    def __init__(self, owner: TLSContexts, name: str) -> None:
        self.owner = owner
        self.name = name

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        material = self.owner.material

        def make(_: Any) -> SSL.Connection:
            return SSL.Connection(material.client, None)

        if self.owner.config().verify_server:
            return ClientTLSOptions(make, self.name).clientConnectionForTLS(tls_protocol)
        conn = make(tls_protocol)
        conn.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        if not is_ip(self.name):
            conn.set_tlsext_host_name(self.name.encode("idna"))
        return conn


def _no_context(_: Any) -> SSL.Connection:
    # name_ok builds ClientTLSOptions only to see whether Twisted accepts the
    # name; no connection is ever made from them.
    raise AssertionError("not used for a connection")


class TLSContexts:
    """The current TLS material; ``config`` returns the current [tls] section
    (settings may change at run time), read at each use."""

    def __init__(self, config: Callable[[], TLSConfig]) -> None:
        self.config = config
        self.material = _Material(config())
        self.reloads = 0

    def reload(self, material: _Material | None = None) -> dict[str, Any]:
        """Re-read the files (or take ``material`` already read from them);
        TLSError (and the old contexts kept) if any fails."""
        if material is None:
            material = _Material(self.config())
        self.material = material
        self.reloads += 1
        log.info("tls: certificate {c} loaded ({s})", c=material.cfg.certificate,
                 s=material.describe()["subject"])
        return self.describe()

    def describe(self) -> dict[str, Any]:
        return {**self.material.describe(), "reloads": self.reloads}

    def server_factory(self, wrapped: Factory, mutual: Callable[[], bool]) -> TLSMemoryBIOFactory:
        return TLSMemoryBIOFactory(_ServerCreator(self, mutual), False, wrapped)

    @staticmethod
    def name_ok(name: str) -> bool:
        """Whether a server certificate can be checked for ``name``: an IP,
        or a host name IDNA accepts (Twisted encodes it at the handshake,
        where a refusal would leave the connection hanging)."""
        name = unbracket(name)
        if is_ip(name):
            return True
        try:
            ClientTLSOptions(_no_context, name)
            name.encode("idna")
        except (ValueError, UnicodeError):
            return False
        return True

    def client_factory(self, wrapped: Factory, name: str) -> TLSMemoryBIOFactory:
        return TLSMemoryBIOFactory(_ClientCreator(self, unbracket(name)), True, wrapped)


def load_at_start(config: Callable[[], Config]) -> TLSContexts:
    """Start-up: the contexts, or a StartupError naming the file at fault."""
    try:
        return TLSContexts(lambda: config().tls)
    except TLSError as e:
        raise StartupError(str(e)) from None


def attach_tls(core: Any) -> TLSContexts | None:
    """The proxy's contexts when it has a tls: listener or relay (else None),
    handed to its transport layer; settings are read from ``core.config``
    at each use, so ``cfg set`` and reloads apply to new connections."""
    cfg = core.config
    if not (any(s.transport == "tls" for s in cfg.proxy.listen)
            or any(r.uri.lower().startswith("tls:") for r in cfg.media.relays)):
        return None
    contexts = load_at_start(lambda: core.config)
    core.transport.use_tls(contexts, lambda: {
        str(s) for s in core.config.tls.require_client_cert})
    return contexts


def register_tls_methods(registry: Any, contexts: TLSContexts | None,
                         transport: Any = None) -> None:
    """``tls.reload`` and ``tls.show`` on the management interface, and
    ``tls.list`` (Kamailio's too) with the proxy's ``transport`` layer.

    In ``twistd sipsuite`` the proxy and the relay share one registry: the
    second caller adds its contexts to the ones the methods already serve.
    ``contexts`` None (no tls: listener, relay or control socket) still
    registers the methods, so ``sipsuite-ctl tls reload`` says that TLS is
    not in use rather than that the method does not exist."""
    from sipsuite.ops.errors import NOT_IN_USE, REFUSED, RpcError

    if transport is not None:
        registry.register("tls.list", lambda: list_connections(transport),
                          "Open SIP-over-TLS connections: peer, direction, the name checked,"
                          " the peer's certificate")

    served: list[TLSContexts] | None = getattr(registry, "tls_contexts", None)
    if served is not None:
        if contexts is not None:
            served.append(contexts)
        return
    served = [] if contexts is None else [contexts]
    registry.tls_contexts = served

    def in_use() -> None:
        if not served:
            raise RpcError(NOT_IN_USE, "TLS is not in use: no tls: listener, relay or control"
                                   " socket in the configuration")

    def reload() -> list[dict[str, Any]]:
        in_use()
        # All or nothing: load every set first, then switch them together
        # to what was loaded (reading the files again could see a newer,
        # broken one half way through).
        try:
            loaded = [_Material(owner.config()) for owner in served]
        except TLSError as e:
            log.warn("tls reload refused: {e}", e=str(e))
            raise RpcError(REFUSED, f"reload refused, the old certificate keeps serving: {e}")\
                from None
        return [owner.reload(material) for owner, material in zip(served, loaded, strict=True)]

    def show() -> list[dict[str, Any]]:
        in_use()
        return [owner.describe() for owner in served]

    registry.register("tls.reload", reload,
                      "Re-read [tls] certificate, private_key and ca_list; new connections use"
                      " them, open ones keep theirs; a file that does not load is refused")
    registry.register("tls.show", show,
                      "The certificate in use: subject, names, expiry, fingerprint, CA list")


def list_connections(transport: Any) -> list[dict[str, Any]]:
    """The TLS connections of a sipsuite.proxy.net.transport.TransportLayer."""
    out = []
    for conn in list(transport.connections.values()):
        if conn.kind != "tls" or conn.closed:
            continue
        subject = ""
        try:
            cert = conn.transport.getPeerCertificate() if conn.secured else None
        except (AttributeError, SSL.Error):
            cert = None
        if cert is not None:
            subject = cert.to_cryptography().subject.rfc4514_string()
        host, port = conn.peer
        out.append({
            "peer": host_port(host, port),
            "direction": "out" if conn.outbound else "in",
            "secured": conn.secured,
            "checked_name": conn.tls_name,
            "peer_certificate": subject,
            "listener": repr(conn.listener),
        })
    return out
