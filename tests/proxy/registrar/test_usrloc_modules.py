"""The usrloc group of modules on their own (issue 13 B5/B6): redis,
location, subscribers, outbound, registrar and auth, each set up by its SPEC
on a FakeCore, no ProxyCore."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fakecore import FakeCore
from proxykit import request
from twisted.internet import defer

from sipsuite.config import load_config
from sipsuite.proxy.modules import auth
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.proxy.registrar import outbound, registrar, subscribers, usrloc
from sipsuite.proxy.registrar.bindings import Binding
from sipsuite.proxy.registrar.location import (
    MemoryLocationStore,
    MemorySubscriberStore,
    Subscriber,
)
from sipsuite.proxy.registrar.redis import module as redis
from sipsuite.proxy.routing.base import RequestContext
from sipsuite.proxy.services import AUTH, FLOWS, LOCATION, REDIS, REGISTRAR, SUBSCRIBERS
from sipsuite.sip.headers import NameAddr
from sipsuite.sip.parser import parse_datagram
from sipsuite.startup import StartupError

LISTENER = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
ALL = [redis.SPEC, usrloc.SPEC, subscribers.SPEC, outbound.SPEC, registrar.SPEC, auth.SPEC]


def core_with(tmp_path: Path, text: str = "", specs: list[Any] | None = None) -> FakeCore:
    path = tmp_path / "c.toml"
    path.write_text('[proxy]\ndomains = ["sipsuite.test"]\n[management]\nlisten = ""\n' + text)
    core = FakeCore(load_config(str(path)))
    core.modules.setup_all(ALL if specs is None else specs, core.config)
    return core


def ctx_for(core: FakeCore, data: bytes, host: str = "127.0.0.2", port: int = 5070) -> RequestContext:
    return RequestContext(core, parse_datagram(data), Source("udp", host, port, LISTENER),  # type: ignore[arg-type]
                          False)


def done(d: Any) -> Any:
    """The result of a coroutine or Deferred that never waits (memory stores)."""
    d = defer.ensureDeferred(d) if not isinstance(d, defer.Deferred) else d
    assert d.called
    return d.result


# --- redis -------------------------------------------------------------------------


def test_redis_only_with_a_url_and_stores_on_its_connection(tmp_path: Path) -> None:
    core = core_with(tmp_path)
    assert core.modules.by_name("redis") is None and core.modules.get(REDIS) is None
    assert isinstance(core.modules.require(LOCATION).store, MemoryLocationStore)
    assert isinstance(core.modules.require(SUBSCRIBERS), MemorySubscriberStore)
    core = core_with(tmp_path, '[redis]\nurl = "redis://127.0.0.1:1/3"\nprefix = "t:"\n')
    conn = core.modules.require(REDIS)
    location = core.modules.require(LOCATION)
    assert type(location.store).__name__ == "RedisLocationStore"
    assert location.store.conn is conn  # type: ignore[attr-defined]
    assert core.modules.require(SUBSCRIBERS).conn is conn  # type: ignore[attr-defined]
    # Never started: stopping closes nothing and fires at once.
    assert core.modules.stop() != [] and core.modules.names()[0] == "redis"


# --- location ----------------------------------------------------------------------


def test_lookup_gives_static_then_registered_bindings(tmp_path: Path) -> None:
    core = core_with(tmp_path, '[location.static]\nbob = ["sip:bob@192.0.2.9:5099"]\n')
    location = core.modules.require(LOCATION)
    later = core.wall() + 60
    done(location.store.update("bob", lambda bs, now: bs.append(Binding("sip:bob@192.0.2.7", later))))
    assert [b.contact for b in done(location.lookup("bob"))] == [
        "sip:bob@192.0.2.9:5099", "sip:bob@192.0.2.7"]
    # The static binding is config: never in the store the registrar writes.
    assert [b.contact for b in done(location.store.lookup("bob"))] == ["sip:bob@192.0.2.7"]
    assert done(location.remove("bob", "sip:bob@192.0.2.7")) == 1
    assert [b.contact for b in done(location.lookup("bob"))] == ["sip:bob@192.0.2.9:5099"]


def test_location_stats_and_a_store_given_by_hand(tmp_path: Path) -> None:
    store = MemoryLocationStore(lambda: 1000.0)
    done(store.update("alice", lambda bs, now: bs.append(Binding("sip:a@h", 2000.0))))
    core = core_with(tmp_path, specs=[usrloc.LocationSpec(store)])
    assert core.modules.require(LOCATION).store is store
    figures = done(core.modules.by_name("location").stats())  # type: ignore[union-attr]
    assert figures == {"registrations": {"aors": 1, "bindings": 1}}


def test_location_stats_say_when_the_store_cannot_count_or_answer(tmp_path: Path) -> None:
    from sipsuite.proxy.registrar.bindings import StoreUnavailable

    class Down:
        async def counts(self) -> tuple[int, int]:
            raise StoreUnavailable("timeout")

    core = core_with(tmp_path, specs=[usrloc.LocationSpec(Down())])  # type: ignore[arg-type]
    module: Any = core.modules.by_name("location")
    assert done(module.stats()) == {
        "registrations": {"aors": None, "bindings": None, "error": "store unavailable: timeout"}}
    module.store = object()
    assert done(module.stats()) == {"registrations": {"aors": None, "bindings": None}}


def test_static_bindings_follow_a_new_config(tmp_path: Path) -> None:
    core = core_with(tmp_path, '[location.static]\nbob = ["sip:bob@192.0.2.9:5099"]\n')
    old = core.config
    new = load_config(None)
    core.config = new
    core.modules.reconfigure(old, new)
    assert done(core.modules.require(LOCATION).lookup("bob")) == []


# --- subscribers -------------------------------------------------------------------


def test_subscribers_provide_the_store_and_its_cache_figures(tmp_path: Path) -> None:
    core = core_with(tmp_path)
    module: Any = core.modules.by_name("subscribers")
    assert module.stats() == {"subscriber_cache": None}
    cached = MemorySubscriberStore()
    cached.cache = SimpleNamespace(live=True, entries={"a": 1}, hits=4, misses=2)  # type: ignore[attr-defined]
    core = core_with(tmp_path, specs=[subscribers.SubscribersSpec(cached)])
    assert core.modules.require(SUBSCRIBERS) is cached
    assert core.modules.by_name("subscribers").stats() == {  # type: ignore[union-attr]
        "subscriber_cache": {"live": True, "entries": 1, "hits": 4, "misses": 2}}


# --- registrar ---------------------------------------------------------------------


def register(host: str = "127.0.0.2", contact_host: str = "127.0.0.2") -> bytes:
    text = request("REGISTER", "sip:sipsuite.test", host=host).decode()
    return text.replace(f"Contact: <sip:alice@{host}:5070>",
                        f"Contact: <sip:alice@{contact_host}:5070>").encode()


def test_registrar_needs_location(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="registrar needs the location service"):
        core_with(tmp_path, specs=[registrar.SPEC])


def test_registrar_saves_through_location_and_tells_of_nat(tmp_path: Path) -> None:
    core = core_with(tmp_path, '[registrar]\ndefault_expires = 120\n')
    reg = core.modules.require(REGISTRAR)
    told: list[str] = []
    reg.on_nat_binding(told.append)
    reg.on_nat = lambda aor: told.append("slot:" + aor)  # type: ignore[attr-defined]
    ctx = ctx_for(core, register())
    done(ctx.register())
    status, _, headers = core.replies[-1]
    assert status == 200 and ("Contact", "<sip:alice@127.0.0.2:5070>;expires=120") in headers
    assert told == []
    stored = done(core.modules.require(LOCATION).store.lookup("bob"))  # the To user
    assert [b.contact for b in stored] == ["sip:alice@127.0.0.2:5070"]
    # A private Contact from a public address: behind NAT.
    done(ctx_for(core, register(contact_host="10.0.0.5")).register())
    assert told == ["bob", "slot:bob"]


def test_registrar_reads_its_section_at_use(tmp_path: Path) -> None:
    core = core_with(tmp_path)
    reg: Any = core.modules.require(REGISTRAR)
    assert reg.cfg is core.config.registrar
    core.config = load_config(None)
    assert reg.cfg is core.config.registrar


# --- outbound ----------------------------------------------------------------------


def test_outbound_provides_flows_and_stun_follows_the_config(tmp_path: Path) -> None:
    core = core_with(tmp_path, '[registrar]\noutbound = false\n')
    assert core.modules.get(FLOWS) is core.modules.by_name("outbound")
    assert [owner for owner, _ in core.hooks.request_received] == ["outbound"]
    assert core.net.stun is not None and core.net.stun() is False
    core.config = load_config(None)  # outbound on by default
    assert core.net.stun() is True


def test_request_to_a_flow_of_ours_goes_over_it(tmp_path: Path) -> None:
    core = core_with(tmp_path)
    core.net.listeners.append(LISTENER)
    core.myself.add(("127.0.0.1", 5060))
    flows: Any = core.modules.require(FLOWS)
    flow = flows.flow_uri(Source("udp", "203.0.113.9", 40001, LISTENER))
    ctx = ctx_for(core, request("INVITE", "sip:bob@203.0.113.9"))
    ctx.removed_routes = [NameAddr.parse(flow)]
    core.request_received(ctx)
    assert ctx.handled and core.replies == []
    [[dst]] = core.relays
    assert (dst.dst.host, dst.dst.port, dst.dst.listener) == ("203.0.113.9", 40001, LISTENER)


def test_forged_or_gone_flows_and_other_routes(tmp_path: Path) -> None:
    core = core_with(tmp_path)
    core.myself.add(("127.0.0.1", 5060))
    ctx = ctx_for(core, request("INVITE", "sip:bob@203.0.113.9"))
    core.request_received(ctx)  # no Route of ours removed: the script's
    ctx.removed_routes = [NameAddr.parse("sip:127.0.0.1:5060;lr")]
    core.request_received(ctx)
    assert not ctx.handled and core.replies == []
    ctx.removed_routes = [NameAddr.parse("<sip:forged@127.0.0.1:5060;lr;ob>")]
    core.request_received(ctx)
    assert core.replies[-1][:2] == (403, "Forbidden (Invalid Flow Token)")
    flows: Any = core.modules.require(FLOWS)
    gone = flows.flow_uri(Source("udp", "203.0.113.9", 40001, LISTENER))  # listener not ours
    ctx = ctx_for(core, request("INVITE", "sip:bob@203.0.113.9"))
    ctx.removed_routes = [NameAddr.parse(gone)]
    core.request_received(ctx)
    assert core.replies[-1][:2] == (430, "Flow Failed")


def test_failed_outbound_binding_is_removed_from_location(tmp_path: Path) -> None:
    core = core_with(tmp_path)
    core.myself.add(("127.0.0.1", 5060))
    flows: Any = core.modules.require(FLOWS)
    flow = flows.flow_uri(Source("udp", "203.0.113.9", 40001, LISTENER))  # listener gone
    b = Binding("sip:alice@10.0.0.5", core.wall() + 60, flow=flow, outbound=True, instance="x",
                reg_id=1)
    location = core.modules.require(LOCATION)
    done(location.store.update("alice", lambda bs, now: bs.append(b)))
    assert done(flows.destinations("alice", [b])) == [] and flows.failed == 1
    assert done(location.lookup("alice")) == []
    assert core.modules.by_name("outbound").stats() == {"failed": 1}  # type: ignore[union-attr]


# --- auth --------------------------------------------------------------------------


def test_auth_needs_subscribers_and_is_on_whatever_features_auth_says(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="auth needs the subscribers service"):
        core_with(tmp_path, specs=[auth.SPEC])
    core = core_with(tmp_path, '[features]\nauth = false\n')
    assert core.modules.get(AUTH) is core.modules.by_name("auth")


def test_auth_challenges_and_accepts_from_the_subscriber_store(tmp_path: Path) -> None:
    from sipsuite.sip import digest

    core = core_with(tmp_path, '[auth]\nrealm = "sipsuite.test"\nalgorithms = ["MD5"]\n')
    done(core.modules.require(SUBSCRIBERS).add(
        Subscriber.from_password("alice", "sipsuite.test", "secret")))
    ctx = ctx_for(core, register())
    assert done(ctx.auth_check("alice", proxy=False)) is False and ctx.handled
    status, _, headers = core.replies[-1]
    assert status == 401
    challenge = digest.parse_challenge(headers[0][1])
    assert headers[0][0] == "WWW-Authenticate" and challenge["realm"] == "sipsuite.test"
    creds = digest.authorization("alice", "secret", "sipsuite.test", challenge["nonce"],
                                 "REGISTER", "sip:sipsuite.test")
    data = register().replace(b"Content-Length", f"Authorization: {creds}\r\nContent-Length".encode())
    ctx = ctx_for(core, data)
    assert done(ctx.auth_check("alice", proxy=False)) is True and not ctx.handled


def test_auth_takes_the_new_nonce_lifetime_and_reads_the_rest_at_use(tmp_path: Path) -> None:
    import dataclasses

    core = core_with(tmp_path)
    module: Any = core.modules.require(AUTH)
    old = core.config
    new = dataclasses.replace(
        old, auth=dataclasses.replace(old.auth, nonce_expires=90.0),
        registrar=dataclasses.replace(old.registrar, retry_after=7))
    core.config = new
    core.modules.reconfigure(old, new)
    assert module.nonces.lifetime == 90.0 and module.cfg is new.auth
    assert module.retry_after == "7"
