"""NAT keep-alives after a restart: the first round finds the NAT'ed
bindings stored before the process started through the store's NAT index
(nat_aors), without reading every AOR in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from proxykit import START, ProxyKit

from sipsuite.proxy.registrar.location import Binding


@pytest_twisted.ensureDeferred
async def test_first_round_pings_stored_natted_bindings_only(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    core = kit.core
    core.transport.listeners.append(kit.listener)
    sent: list[tuple[bytes, str, int]] = []

    def send(data: bytes, transport: str, host: str, port: int, listener: Any, name: str = "") -> bool:
        sent.append((data, host, port))
        return True

    core.transport.send = send  # type: ignore[method-assign]
    store = core.location
    natted = Binding("sip:alice@10.0.0.5:5060", START + 3600, received="udp:127.0.0.7:40000",
                     socket=repr(kit.listener), nat=True)
    plain = Binding("sip:bob@127.0.0.8:5060", START + 3600, socket=repr(kit.listener))
    await store.update("alice", lambda bs, now: bs.append(natted))
    await store.update("bob", lambda bs, now: bs.append(plain))

    async def every_aor() -> list[str]:
        raise AssertionError("the first round read every AOR")

    store.aors = every_aor  # type: ignore[method-assign]
    keepalive = core.keepalive
    assert keepalive.tracked is None  # as after a start
    await keepalive.round()
    assert sent == [(b"\r\n\r\n", "127.0.0.7", 40000)]
    assert keepalive.tracked == {"alice"}
