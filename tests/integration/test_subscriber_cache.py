"""Two proxy processes sharing subscribers in a real redis-server, each with
its node-local subscriber cache on (the default): a password changed or a
user removed through one node is honoured by the other at once, although
the other authenticated that user a moment before from its cache."""

from __future__ import annotations

import time
from collections.abc import Iterator

import procs
import pytest
from digestclient import challenges, credentials
from procs import ProxyFactory, ProxyProcess, UdpEndpoint, build_request, is_final

DOMAIN = "sipsuite.test"
REALM = "cache.test"


@pytest.fixture
def redis(make_redis_server) -> Iterator[object]:  # type: ignore[no-untyped-def]
    yield make_redis_server()


def start(proxy_factory: ProxyFactory, name: str, redis: object) -> ProxyProcess:
    return proxy_factory(name, tables={
        "features": {"auth": True},
        "auth": {"realm": REALM, "secret": "shared"},
        "redis": {"url": redis.url(2)},  # type: ignore[attr-defined]
    })


def register(ep: UdpEndpoint, proxy: ProxyProcess, user: str, password: str) -> int:
    """REGISTER, answer the 401 with ``password``: the final status."""
    def req(cseq: int, auth: str | None = None) -> bytes:
        return build_request(
            "REGISTER", f"sip:{DOMAIN}", sent_by=ep.sent_by, from_uri=f"sip:{user}@{DOMAIN}",
            to_uri=f"sip:{user}@{DOMAIN}", cseq=cseq, call_id=f"{user}-{password}-{time.time()}",
            contact=f"sip:{user}@{ep.sent_by}",
            extra=[("Expires", "300"), *([("Authorization", auth)] if auth else [])])

    ep.send(req(1), proxy.address)
    first = ep.recv_until(is_final, 3.0)
    assert first is not None and first.msg.status == 401, proxy.diagnostics()
    ch = challenges(first.msg, "www-authenticate")[0]
    ep.send(req(2, credentials(ch, user, password, "REGISTER", f"sip:{DOMAIN}")), proxy.address)
    second = ep.recv_until(is_final, 3.0)
    assert second is not None, proxy.diagnostics()
    return second.msg.status


def ctl_ok(proxy: ProxyProcess, *args: str) -> None:
    res = proxy.ctl(*args)
    assert res.returncode == 0, res.stderr


def stats_cache(proxy: ProxyProcess) -> dict[str, int]:
    import json

    res = proxy.ctl("--json", "stats")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["subscriber_cache"]


def test_a_change_through_one_node_is_honoured_by_the_other_at_once(
    proxy_factory: ProxyFactory, redis: object
) -> None:
    first = start(proxy_factory, "first", redis)
    second = start(proxy_factory, "second", redis)
    ctl_ok(first, "user", "add", "alice", "old-pw")
    with UdpEndpoint() as ep:
        # The second node reads alice once, then serves her from memory.
        deadline = time.monotonic() + 5.0
        while not stats_cache(second)["live"]:
            assert time.monotonic() < deadline, "the cache never went live"
            time.sleep(0.05)
        assert register(ep, second, "alice", "old-pw") == 200
        hits = stats_cache(second)["hits"]
        assert register(ep, second, "alice", "old-pw") == 200
        assert stats_cache(second)["hits"] > hits, "alice was not served from the cache"

        ctl_ok(first, "user", "passwd", "alice", "new-pw")
        # No sleep: Redis reports the change before the ctl command returns
        # in practice, and a report still on its way would only make the
        # old password fail later. Allow it a moment, no more.
        deadline = time.monotonic() + 1.0
        while register(ep, second, "alice", "old-pw") == 200:
            assert time.monotonic() < deadline, "the old password still works on the other node"
        assert register(ep, second, "alice", "new-pw") == 200

        ctl_ok(first, "user", "rm", "alice")
        deadline = time.monotonic() + 1.0
        while register(ep, second, "alice", "new-pw") == 200:
            assert time.monotonic() < deadline, "a removed user still registers on the other node"
        assert register(ep, first, "alice", "new-pw") != 200
    assert procs.LOCALHOST  # the proxies listen on loopback only
