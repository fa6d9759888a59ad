"""The relay client over ``tls:`` (one TLS connection per command, both
ends authenticated), against a small TLS control server in this reactor:
the relay's certificate must chain to ca_list and carry the relay's IP
address; our certificate must satisfy a server that requires one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import tlscerts
from twisted.internet import protocol

from sipsuite.config import TLSConfig
from sipsuite.config.specs import RelaySpec
from sipsuite.proxy.media.client import RelayClient, RelayUnavailable
from sipsuite.tlsctx import TLSContexts


class _Version(protocol.Protocol):
    """Answers any command with rtpproxy's protocol version, as V expects."""

    def dataReceived(self, data: bytes) -> None:
        self.factory.commands.append(data)  # type: ignore[attr-defined]
        self.transport.write(b"20040107\n")
        self.transport.loseConnection()


def _contexts(issued: tlscerts.Issued, ca: Path) -> TLSContexts:
    cfg = TLSConfig(certificate=str(issued.cert), private_key=str(issued.key), ca_list=str(ca),
                    verify_server=True, require_client_cert=[])
    return TLSContexts(lambda: cfg)


def _serve(reactor: Any, contexts: TLSContexts) -> tuple[Any, list[bytes]]:
    factory = protocol.Factory.forProtocol(_Version)
    factory.commands = []  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, contexts.server_factory(factory, lambda: True),
                             interface="127.0.0.1")
    return port, factory.commands  # type: ignore[attr-defined]


async def _version(reactor: Any, server: TLSContexts, client: TLSContexts,
                   commands: list[bytes] | None = None) -> str:
    """V through a RelayClient; what the server read goes to ``commands``."""
    port, received = _serve(reactor, server)
    uri = f"tls:127.0.0.1:{port.getHost().port}"
    relays = RelayClient([RelaySpec(uri)], command_timeout=2.0, ping_interval=0,
                         reactor=reactor, tls=client)
    try:
        return await relays.version(uri)
    finally:
        await port.stopListening()
        if commands is not None:
            commands.extend(received)


@pytest.fixture
def pki(tmp_path: Path) -> tlscerts.TestPKI:
    return tlscerts.TestPKI(tmp_path / "ca")


@pytest_twisted.ensureDeferred
async def test_relay_with_a_valid_certificate_answers(reactor: Any, pki: tlscerts.TestPKI) -> None:
    server = _contexts(pki.issue("relay", ips=["127.0.0.1"]), pki.ca_file)
    client = _contexts(pki.issue("proxy"), pki.ca_file)
    assert await _version(reactor, server, client) == "20040107"


@pytest.mark.parametrize("problem", ["wrong-address", "other-ca"])
@pytest_twisted.ensureDeferred
async def test_relay_with_a_wrong_certificate_is_not_used(
    reactor: Any, pki: tlscerts.TestPKI, tmp_path: Path, problem: str,
) -> None:
    if problem == "wrong-address":
        relay_cert = pki.issue("relay", ips=["192.0.2.99"], dns=["relay.example"])
    else:
        relay_cert = tlscerts.TestPKI(tmp_path / "rogue").issue("relay", ips=["127.0.0.1"])
    server = _contexts(relay_cert, pki.ca_file)
    client = _contexts(pki.issue("proxy"), pki.ca_file)
    commands: list[bytes] = []
    with pytest.raises(RelayUnavailable):
        await _version(reactor, server, client, commands)
    assert commands == [], "a command went to a relay that failed verification"


@pytest_twisted.ensureDeferred
async def test_client_certificate_from_another_ca_gets_no_answer(
    reactor: Any, pki: tlscerts.TestPKI, tmp_path: Path,
) -> None:
    server = _contexts(pki.issue("relay", ips=["127.0.0.1"]), pki.ca_file)
    rogue = tlscerts.TestPKI(tmp_path / "rogue")
    # It trusts our relay's CA, but its own certificate is not from ca_list.
    client = _contexts(rogue.issue("proxy"), pki.ca_file)
    commands: list[bytes] = []
    with pytest.raises(RelayUnavailable):
        await _version(reactor, server, client, commands)
    assert commands == [], "the relay served a client it cannot authenticate"


def test_tls_relays_need_contexts() -> None:
    with pytest.raises(ValueError, match="tls: relays need TLS contexts"):
        RelayClient([RelaySpec("tls:127.0.0.1:7000")])
