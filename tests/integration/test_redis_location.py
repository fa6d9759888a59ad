"""Proxies sharing registrations through a real redis-server (started here on a
loopback port chosen at run time, append-only with fsync on every write).

- register through one proxy, call through another: the call arrives;
- a proxy killed and started again still knows the binding;
- Redis stopped during a REGISTER load: the proxy stays up, answers 500 with
  Retry-After (REGISTER) or 503 (a call to a local user) within the configured
  timeout, and once Redis is back registrations succeed again without a proxy
  restart; no binding acknowledged before the stop is lost;
- Redis hung (SIGSTOP): answers still come within the timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import procs
import pytest
from procs import (
    LOCALHOST,
    ProxyFactory,
    ProxyProcess,
    SippProcess,
    UdpEndpoint,
    build_ack_for,
    build_request,
    is_final,
    run_sipp,
    sipp_dir,
)

DOMAIN = "sipsuite.test"
TIMEOUT = 0.5  # [redis] timeout
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


@pytest.fixture
def redis(make_redis_server) -> Iterator[object]:  # type: ignore[no-untyped-def]
    yield make_redis_server(appendonly=True)


def start(proxy_factory: ProxyFactory, name: str, redis: object) -> ProxyProcess:
    return proxy_factory(name, tables={
        "redis": {"url": redis.url(3), "timeout": TIMEOUT},  # type: ignore[attr-defined]
        "registrar": {"min_expires": 0, "retry_after": 7},
    })


def bindings(proxy: ProxyProcess, aor: str) -> list[dict]:
    res = proxy.ctl("--json", "ul", "show", aor)
    assert res.returncode == 0, res.stderr
    return [b for entry in json.loads(res.stdout) for b in entry["bindings"]]


def register(ep: UdpEndpoint, proxy: ProxyProcess, user: str, wait: float = 3.0) -> procs.SipMessage | None:
    req = build_request("REGISTER", f"sip:{DOMAIN}", sent_by=ep.sent_by,
                        from_uri=f"sip:{user}@{DOMAIN}", to_uri=f"sip:{user}@{DOMAIN}",
                        contact=f"sip:{user}@{ep.sent_by}", extra=[("Expires", "600")])
    ep.send(req, proxy.address)
    got = ep.recv_until(is_final, wait)
    return None if got is None else got.msg


def call_through(proxy: ProxyProcess, user: str, phone_port: int, workdir: Path) -> str:
    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=workdir / "uas",
                      local_port=phone_port, calls=1, timeout_s=20, service=user)
    uas.wait_bound()
    call = run_sipp(sipp_dir() / "call_uac.xml", name="call", workdir=workdir / "call",
                    remote=proxy.address, local_port=procs.free_port(), calls=1, timeout_s=15,
                    service=user, duration_ms=100)
    res = uas.wait()
    if (call.rc, call.successful, res.successful) != (0, 1, 1):
        return f"call failed\n{call.summary()}\n{res.summary()}\n{proxy.diagnostics()}"
    return ""


def test_register_on_one_proxy_call_through_another_and_restart(
    sipp_bin: str, proxy_factory: ProxyFactory, redis: object, tmp_path: Path
) -> None:
    first = start(proxy_factory, "first", redis)
    second = start(proxy_factory, "second", redis)
    phone_port = procs.free_port()
    reg = run_sipp(SCENARIOS / "register_uac.xml", name="reg", workdir=tmp_path / "reg",
                   remote=first.address, local_port=phone_port, calls=1, timeout_s=10,
                   service="olga")
    assert (reg.rc, reg.successful) == (0, 1), reg.summary() + first.diagnostics()
    assert [b["contact"] for b in bindings(second, "olga")] == [
        f"sip:olga@{LOCALHOST}:{phone_port};transport=UDP"]
    problem = call_through(second, "olga", phone_port, tmp_path / "1")
    assert not problem, problem

    # Killed (no clean shutdown) and started again: the binding lives in Redis.
    assert second.proc is not None
    second.proc.kill()
    second.proc.wait(5)
    second.start()
    assert len(bindings(second, "olga")) == 1
    problem = call_through(second, "olga", phone_port, tmp_path / "2")
    assert not problem, problem


def test_redis_stopped_during_register_load(proxy_factory: ProxyFactory, redis: object) -> None:
    proxy = start(proxy_factory, "outage", redis)
    acked: list[str] = []
    during: list[tuple[int | None, float, list[str]]] = []
    with UdpEndpoint() as ep:
        for i in range(40):
            resp = register(ep, proxy, f"u{i:03d}")
            assert resp is not None and resp.status == 200, resp
            acked.append(f"u{i:03d}")
        redis.stop()  # type: ignore[attr-defined]
        for i in range(40, 60):
            t0 = time.monotonic()
            resp = register(ep, proxy, f"u{i:03d}", wait=TIMEOUT * 4 + 2)
            during.append((resp.status if resp else None, time.monotonic() - t0,
                           resp.header_values("retry-after") if resp else []))
        # A call to a local user cannot be looked up: 503, quickly.
        t0 = time.monotonic()
        inv = build_request("INVITE", f"sip:u000@{DOMAIN}", sent_by=ep.sent_by,
                            contact=f"sip:c@{ep.sent_by}")
        ep.send(inv, proxy.address)
        got = ep.recv_until(is_final, TIMEOUT * 4 + 2)
        call_wait = time.monotonic() - t0
        assert got is not None and got.msg.status == 503, got
        assert got.msg.header_values("retry-after") == ["7"], got.msg
        ep.send(build_ack_for(inv, got.msg), proxy.address)
        # Everything that needs no Redis still works.
        pong = procs.options_ping(LOCALHOST, proxy.port, timeout=2.0)
        assert pong is not None and pong.status == 200

        redis.start()  # type: ignore[attr-defined]
        after: list[int | None] = []
        deadline = time.monotonic() + 15
        i = 100
        while time.monotonic() < deadline:
            resp = register(ep, proxy, f"u{i:03d}")
            after.append(resp.status if resp else None)
            if resp is not None and resp.status == 200:
                break
            time.sleep(0.3)
            i += 1
        assert proxy.alive(), proxy.diagnostics()
    diag = f"\nduring the outage {during}\nafter {after}\n{proxy.diagnostics()}"
    assert all(status == 500 for status, _, _ in during), "REGISTER during the outage" + diag
    assert all(ra == ["7"] for _, _, ra in during), "500 without Retry-After: 7" + diag
    assert max(w for _, w, _ in during) <= TIMEOUT + 0.4, "answers were slow" + diag
    assert call_wait <= TIMEOUT + 0.4, f"call waited {call_wait:.2f} s" + diag
    assert after and after[-1] == 200, "no recovery without a restart" + diag
    stored = {key.decode().rsplit(":", 1)[-1] for key in redis.call(  # type: ignore[attr-defined]
        "ZRANGE", "sipsuite:loc:index", "0", "-1", db=3)}
    lost = [u for u in acked if u not in stored or not bindings(proxy, u)]
    assert not lost, f"bindings acknowledged before the stop were lost: {lost}" + diag


def test_redis_hung_answers_within_timeout(proxy_factory: ProxyFactory, redis: object) -> None:
    proxy = start(proxy_factory, "hung", redis)
    with UdpEndpoint() as ep:
        assert (resp := register(ep, proxy, "pre")) is not None and resp.status == 200
        redis.pause()  # type: ignore[attr-defined]
        try:
            t0 = time.monotonic()
            resp = register(ep, proxy, "stuck", wait=TIMEOUT * 4 + 2)
            waited = time.monotonic() - t0
        finally:
            redis.resume()  # type: ignore[attr-defined]
        assert resp is not None and resp.status == 500, resp
        assert waited <= TIMEOUT + 0.4, f"waited {waited:.2f} s for a hung Redis"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            resp = register(ep, proxy, "again")
            if resp is not None and resp.status == 200:
                break
            time.sleep(0.3)
        assert resp is not None and resp.status == 200, proxy.diagnostics()
