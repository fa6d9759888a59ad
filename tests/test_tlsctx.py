"""[tls] without a reactor: the config rules, loading and reloading the
certificate files (sipsuite.tlsctx), the tls.* RPC methods, and the small
pieces of routing TLS touches (sips Record-Route, certificate names)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tlscerts

from sipsuite.config import ConfigError, TLSConfig, load_config
from sipsuite.config.specs import RelayAddress, parse_control, parse_relay_uri
from sipsuite.ops.errors import NOT_IN_USE, REFUSED, RpcError
from sipsuite.ops.server import RpcRegistry
from sipsuite.proxy.net.addresses import record_route_value
from sipsuite.proxy.net.listener import Listener
from sipsuite.proxy.net.resolver import Target, named
from sipsuite.proxy.net.transport import TransportLayer
from sipsuite.tlsctx import TLSContexts, TLSError, register_tls_methods


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    return str(info.value).removeprefix(f"{path}: ")


# --------------------------------------------------------------------------- config


def test_tls_listener_needs_certificate_and_key(tmp_path: Path) -> None:
    listen = '[proxy]\nlisten = ["udp:127.0.0.1:5060", "tls:127.0.0.1:5061"]\n'
    assert _error(tmp_path, listen) == (
        "tls.certificate: expected a PEM file path, required by tls:127.0.0.1:5061, got ''")
    assert _error(tmp_path, listen + '[tls]\ncertificate = "c.pem"\n') == (
        "tls.private_key: expected a PEM file path, required by tls:127.0.0.1:5061, got ''")
    # --listen goes through the same parser and the same rule.
    with pytest.raises(ConfigError, match="^<defaults>: tls.certificate: .* tls:127.0.0.1:5061"):
        load_config(None, listen=["tls:127.0.0.1:5061"])


def test_tls_relay_and_tls_control_need_a_certificate(tmp_path: Path) -> None:
    assert "required by tls:127.0.0.1:7000" in _error(
        tmp_path, '[media]\nrelays = ["tls:127.0.0.1:7000"]\n')
    assert "required by tls:127.0.0.1:7001" in _error(
        tmp_path, '[relay]\ncontrol = ["tls:127.0.0.1:7001"]\n')


def test_checking_client_certificates_needs_a_ca_list(tmp_path: Path) -> None:
    """Without ca_list the system's public CAs would vouch for clients: any
    bought certificate would pass mutual TLS or drive a relay."""
    assert _error(tmp_path, '[proxy]\nlisten = ["tls:127.0.0.1:5061"]\n[tls]\ncertificate = "c"\n'
                  'private_key = "k"\nrequire_client_cert = ["tls:127.0.0.1:5061"]\n') == (
        "tls.ca_list: expected the CA file client certificates must chain to, required by"
        " tls:127.0.0.1:5061, got ''")
    assert "tls.ca_list: " in _error(
        tmp_path, '[relay]\ncontrol = ["tls:127.0.0.1:7001"]\n[tls]\ncertificate = "c"\n'
                  'private_key = "k"\n')


def test_require_client_cert_must_name_a_listener(tmp_path: Path) -> None:
    text = ('[proxy]\nlisten = ["tls:127.0.0.1:5061"]\n[tls]\ncertificate = "c"\n'
            'private_key = "k"\nrequire_client_cert = ["tls:127.0.0.1:5062"]\n')
    assert _error(tmp_path, text) == (
        "tls.require_client_cert[0]: expected a tls listener of proxy.listen,"
        " got 'tls:127.0.0.1:5062'")
    good = text.replace("5062", "5061") + 'ca_list = "ca.pem"\n'
    (tmp_path / "ok.toml").write_text(good)
    assert [str(s) for s in load_config(str(tmp_path / "ok.toml")).tls.require_client_cert] == [
        "tls:127.0.0.1:5061"]


def test_tls_control_and_relay_uris() -> None:
    spec = parse_control("tls:[::1]:7722")
    assert (spec.transport, spec.host, spec.port, str(spec)) == ("tls", "::1", 7722,
                                                                  "tls:[::1]:7722")
    assert parse_relay_uri("tls:10.0.0.5:7000") == RelayAddress("tls", "10.0.0.5", 7000)
    with pytest.raises(ValueError):
        parse_control("tls:0.0.0.0:7722")  # replies must leave from a specific address
    with pytest.raises(ValueError, match="not an IP address"):
        parse_relay_uri("tls:relay.example.com:7000")


# --------------------------------------------------------------------------- loading


@pytest.fixture
def pki(tmp_path: Path) -> tlscerts.TestPKI:
    return tlscerts.TestPKI(tmp_path / "pki")


def _cfg(issued: tlscerts.Issued, ca: Path | str = "") -> TLSConfig:
    return TLSConfig(certificate=str(issued.cert), private_key=str(issued.key), ca_list=str(ca),
                     verify_server=True, require_client_cert=[])


def test_contexts_load_and_describe(pki: tlscerts.TestPKI) -> None:
    server = pki.issue("proxy.example", dns=["proxy.example"], ips=["192.0.2.1"])
    contexts = TLSContexts(lambda: _cfg(server, pki.ca_file))
    shown = contexts.describe()
    assert "CN=proxy.example" in shown["subject"]
    assert shown["names"] == ["proxy.example", "192.0.2.1"]
    assert shown["sha256"].replace(":", "") == server.fingerprint.hex()
    assert (shown["cas"], shown["reloads"]) == (1, 0)


@pytest.mark.parametrize(("breakage", "message"), [
    ("missing-cert", "tls.certificate: cannot read '{cert}': No such file or directory"),
    ("garbage-cert", "tls.certificate: '{cert}' holds no PEM certificate"),
    ("garbage-key", "tls.private_key: cannot load '{key}'"),
    ("other-key", "tls.private_key: '{key}' does not match the certificate in '{cert}'"),
    ("garbage-ca", "tls.ca_list: '{ca}' holds no PEM certificate"),
])
def test_a_file_that_does_not_load_is_named(pki: tlscerts.TestPKI, breakage: str,
                                            message: str) -> None:
    server = pki.issue("server", ips=["127.0.0.1"])
    ca = pki.ca_file
    if breakage == "missing-cert":
        server.cert.unlink()
    elif breakage == "garbage-cert":
        server.cert.write_text("hello\n")
    elif breakage == "garbage-key":
        server.key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    elif breakage == "other-key":
        server.key.write_bytes(pki.issue("other").key.read_bytes())
    else:
        ca = pki.folder / "bad-ca.pem"
        ca.write_text("not a certificate\n")
    with pytest.raises(TLSError) as info:
        TLSContexts(lambda: _cfg(server, ca))
    assert str(info.value).startswith(message.format(cert=server.cert, key=server.key, ca=ca))
    assert "\n" not in str(info.value)


def test_reload_switches_or_keeps_the_old_contexts(pki: tlscerts.TestPKI) -> None:
    first = pki.issue("first", ips=["127.0.0.1"])
    cfg = [_cfg(first, pki.ca_file)]
    contexts = TLSContexts(lambda: cfg[0])
    old = contexts.material
    second = pki.issue("second", ips=["127.0.0.1"])
    cfg[0] = _cfg(second, pki.ca_file)
    assert "CN=second" in contexts.reload()["subject"]
    assert contexts.material is not old and contexts.reloads == 1
    current = contexts.material
    second.key.write_text("broken")
    with pytest.raises(TLSError):
        contexts.reload()
    assert contexts.material is current and contexts.reloads == 1


def test_rpc_methods_serve_every_set_and_refuse_all_or_nothing(pki: tlscerts.TestPKI) -> None:
    proxy_cert, relay_cert = pki.issue("proxy"), pki.issue("relay")
    proxy = TLSContexts(lambda: _cfg(proxy_cert))
    relay = TLSContexts(lambda: _cfg(relay_cert))
    registry = RpcRegistry()
    register_tls_methods(registry, proxy)
    register_tls_methods(registry, relay)  # twistd sipsuite: one registry for both
    shown = registry._methods["tls.show"].func()
    assert ["CN=proxy" in s["subject"] for s in shown] == [True, False]
    assert len(registry._methods["tls.reload"].func()) == 2
    relay_cert.cert.write_text("gone")
    with pytest.raises(RpcError, match="reload refused.*tls.certificate") as err:
        registry._methods["tls.reload"].func()
    assert err.value.code == REFUSED  # refused, the old one stays: as a list or routing reload
    assert (proxy.reloads, relay.reloads) == (1, 1)  # the proxy's set did not switch alone


def test_rpc_methods_without_tls_say_it_is_not_in_use(pki: tlscerts.TestPKI) -> None:
    """No tls: socket in the config: the methods exist and say why they
    cannot serve (not 'method not found'); a relay with TLS control in the
    same process (twistd sipsuite) makes them serve its set."""
    registry = RpcRegistry()
    register_tls_methods(registry, None)
    for name in ("tls.reload", "tls.show"):
        with pytest.raises(RpcError, match="TLS is not in use") as err:
            registry._methods[name].func()
        assert err.value.code == NOT_IN_USE
    relay = TLSContexts(lambda: _cfg(pki.issue("relay")))
    register_tls_methods(registry, relay)
    assert ["CN=relay" in s["subject"] for s in registry._methods["tls.show"].func()] == [True]


# --------------------------------------------------------------------------- routing bits


def test_record_route_for_tls_and_sips() -> None:
    tls = Listener("tls", "192.0.2.1", 5061, "192.0.2.1")
    udp = Listener("udp", "192.0.2.1", 5060, "192.0.2.1")
    assert record_route_value(tls) == "<sip:192.0.2.1:5061;transport=tls;lr>"
    assert record_route_value(tls, ";nat=yes", True) == "<sips:192.0.2.1:5061;lr;nat=yes>"
    assert record_route_value(udp, "", True) == "<sip:192.0.2.1:5060;lr>"


def test_tls_targets_carry_the_name_to_verify() -> None:
    targets = [Target("tls", "192.0.2.7", 5061), Target("udp", "192.0.2.7", 5060)]
    out = named(targets, "sip.example.com")
    assert out[0] == Target("tls", "192.0.2.7", 5061, "sip.example.com")
    assert out[1] is targets[1]
    assert dataclasses.replace(out[0], name="") == targets[0]
    # A fully qualified name's trailing dot is no part of any certificate.
    assert named(targets, "Sip.Example.com.")[0].name == "sip.example.com"


def test_ctl_shows_each_certificate_set() -> None:
    from sipsuite.ops.ctl.cli import show_tls

    text = show_tls([{"certificate": "/p.pem", "subject": "CN=p", "names": ["a", "b"],
                      "reloads": 2}, {"certificate": "/r.pem", "subject": "CN=r"}], None)
    assert text.splitlines() == ["certificate  /p.pem", "subject      CN=p", "names        a, b",
                                 "reloads      2", "", "certificate  /r.pem", "subject      CN=r"]


class _Conn:
    """A stand-in open TLS connection in the transport's table."""

    def __init__(self, outbound: bool, tls_name: str = "") -> None:
        self.kind, self.closed, self.outbound, self.tls_name = "tls", False, outbound, tls_name
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return True


def _layer(pki: tlscerts.TestPKI) -> tuple[TransportLayer, list[str]]:
    layer = TransportLayer(reactor=None, handler=lambda *a: None)
    layer.use_tls(TLSContexts(lambda: _cfg(pki.issue("proxy"))), set)
    opened: list[str] = []

    def connect(host: str, port: int, listener: Listener, name: str = "") -> _Conn:
        opened.append(name or host)
        conn = layer.connections[(host, port)] = _Conn(True, name or host)
        return conn

    layer.connect = connect  # type: ignore[method-assign]
    return layer, opened


def test_a_connection_the_peer_opened_is_no_proof_of_a_name(pki: tlscerts.TestPKI) -> None:
    """RFC 5922: a request for sips:bob@good.example goes over a connection
    whose certificate was checked for good.example, never over one someone
    opened to us from that address; a phone's own flow (no name: its
    address) is reused as before."""
    layer, opened = _layer(pki)
    listener = Listener("tls", "127.0.0.1", 5061, "127.0.0.1")
    inbound = layer.connections[("127.0.0.1", 45999)] = _Conn(False)
    assert layer.send(b"INVITE", "tls", "127.0.0.1", 45999, listener, "good.example")
    assert opened == ["good.example"] and inbound.sent == []
    layer.connections[("127.0.0.1", 45999)] = inbound
    assert layer.send(b"BYE", "tls", "127.0.0.1", 45999, listener)
    assert inbound.sent == [b"BYE"] and opened == ["good.example"]


def test_a_name_no_certificate_can_be_checked_for_fails_at_once(pki: tlscerts.TestPKI) -> None:
    """IDNA refuses it (an underscore, a leading hyphen): the send fails and
    the branch fails over, instead of a connection stuck half made."""
    layer, opened = _layer(pki)
    listener = Listener("tls", "127.0.0.1", 5061, "127.0.0.1")
    for name in ("a_b.example", "-x.example"):
        assert layer.send(b"INVITE", "tls", "127.0.0.1", 5061, listener, name) is False
    assert opened == [] and layer.drops == {"tls_name": 2}
