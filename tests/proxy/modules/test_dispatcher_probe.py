"""The load balancer's prober on a FakeCore: probes go out as
core.uac.request() after core.resolve(), and the FakeUAC's Deferreds, fired
by the test, are the answers (the wire side is test_dispatcher.py's)."""

from __future__ import annotations

from pathlib import Path

from fakecore import FakeCore
from proxykit import request

from sipsuite.config import load_config
from sipsuite.proxy.modules.dispatcher.dispatcher import SPEC, LoadBalancer
from sipsuite.proxy.net.listener import Listener
from sipsuite.proxy.net.resolver import Target
from sipsuite.proxy.services import DISPATCHER
from sipsuite.sip.message import make_response
from sipsuite.sip.parser import parse_datagram

GW = ["sip:127.0.0.11:5060", "sip:gw.example.org"]
UDP = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")


def make(tmp_path: Path) -> tuple[FakeCore, LoadBalancer]:
    path = tmp_path / "c.toml"
    path.write_text('[management]\nlisten = ""\n[dispatcher]\nprobe_interval = 10.0\n'
                    'probe_timeout = 2.0\nprobe_failures = 1\nprobe_from = "sip:ping@lb.test"\n'
                    '[dispatcher.sets]\n1 = [' + ", ".join(f'"{u}"' for u in GW) + "]\n")
    core = FakeCore(load_config(str(path)))
    core.net.listeners.append(UDP)
    core.dns["gw.example.org"] = [Target("udp", "127.0.0.12", 5070)]
    core.modules.setup_all([SPEC], core.config)
    ds = core.modules.get(DISPATCHER)
    assert isinstance(ds, LoadBalancer)
    core.modules.start()
    return core, ds


def status(ds: LoadBalancer) -> dict[str, tuple[str, str | None]]:
    return {d["uri"]: (d["state"], d["last_probe"]) for d in ds.dump()[0]["destinations"]}


def test_probes_are_uac_requests_after_resolution(tmp_path: Path) -> None:
    core, ds = make(tmp_path)
    core.clock.advance(10.0)
    sent = {r.uri: r for r in core.uac.requests}
    assert sorted(sent) == sorted(GW)
    ip, named = sent[GW[0]], sent[GW[1]]
    assert (ip.method, ip.target) == ("OPTIONS", Target("udp", "127.0.0.11", 5060))
    assert named.target == Target("udp", "127.0.0.12", 5070)
    assert ip.options == {"listener": UDP, "from_uri": "sip:ping@lb.test", "timeout": 2.0,
                          "rport": True}
    assert core.stats["dispatcher.probes"] == 2
    # Any 2xx (or a probe_reply_codes one) keeps it up; None (no answer) takes it down.
    ok = make_response(parse_datagram(request("OPTIONS", GW[0])), 200, "OK")
    ip.result.callback(ok)
    named.result.callback(None)
    assert status(ds) == {GW[0]: ("active", "200 OK"), GW[1]: ("inactive", "timeout")}
    assert core.stats["dispatcher.probe_failures"] == 1


def test_a_probe_in_flight_is_not_doubled_and_stop_forgets_it(tmp_path: Path) -> None:
    core, ds = make(tmp_path)
    core.clock.advance(10.0)
    core.clock.advance(1.0)
    assert len(core.uac.requests) == 2
    core.clock.advance(1.0)  # probe_timeout: both time out on the prober's own clock
    assert {s for s, _ in status(ds).values()} == {"inactive"}
    core.clock.advance(8.0)
    assert len(core.uac.requests) == 4
    ds.stop()
    for r in core.uac.requests[2:]:
        r.result.callback(None)  # late: ignored
    assert {w for _, w in status(ds).values()} == {"timeout"}
    assert core.stats["dispatcher.probe_failures"] == 2


def test_nothing_to_send_to(tmp_path: Path) -> None:
    core, ds = make(tmp_path)
    core.net.listeners.clear()
    core.dns["gw.example.org"] = []
    core.clock.advance(10.0)
    assert core.uac.requests == []
    assert status(ds) == {GW[0]: ("inactive", "no address or no listener for it"),
                          GW[1]: ("inactive", "cannot resolve")}


def make_worker(tmp_path: Path, index: int) -> tuple[FakeCore, LoadBalancer, list[dict[str, object]]]:
    """The dispatcher of worker ``index`` of a host ([proxy] workers > 1):
    what it sends the supervisor collected."""
    import io
    import json

    from sipsuite.proxy.services import WORKER_LINK
    from sipsuite.proxy.workerlink import WorkerLink

    class Out(io.StringIO):
        sent: list[dict[str, object]] = []

        def write(self, text: str) -> int:
            self.sent.extend(json.loads(line) for line in text.splitlines())
            return len(text)

    out = Out()
    out.sent = []
    path = tmp_path / f"w{index}.toml"
    path.write_text('[management]\nlisten = ""\n[dispatcher]\nprobe_interval = 10.0\n'
                    'probe_timeout = 2.0\nprobe_failures = 1\n'
                    '[dispatcher.sets]\n1 = [' + ", ".join(f'"{u}"' for u in GW) + "]\n")
    core = FakeCore(load_config(str(path)))
    core.net.listeners.append(UDP)
    core.dns["gw.example.org"] = [Target("udp", "127.0.0.12", 5070)]
    core.modules.provide(WORKER_LINK, WorkerLink(index, out))
    core.modules.setup_all([SPEC], core.config)
    ds = core.modules.get(DISPATCHER)
    assert isinstance(ds, LoadBalancer)
    core.modules.start()
    return core, ds, out.sent


def test_worker_0_probes_for_the_host_and_tells_the_others(tmp_path: Path) -> None:
    from sipsuite.proxy.workerlink import encode

    core0, ds0, sent0 = make_worker(tmp_path, 0)
    core1, ds1, sent1 = make_worker(tmp_path, 1)
    core0.clock.advance(10.0)
    core1.clock.advance(30.0)
    assert len(core0.uac.requests) == 2 and core1.uac.requests == []  # worker 1 never probes
    probe = {r.uri: r for r in core0.uac.requests}[GW[0]]
    probe.result.callback(None)  # no answer: down
    assert sent0 == [{"sipsuite_link": "ds", "setid": 1, "uri": GW[0], "state": "ip"}]
    # The supervisor passes it on: worker 1 takes it, and tells nobody.
    assert ds1.link is not None
    ds1.link.feed(encode("ds", setid=1, uri=GW[0], state="ip", by=0))  # type: ignore[attr-defined]
    assert status(ds1)[GW[0]] == ("inactive", None)
    assert sent1 == []
    # A call worker 1 saw unanswered marks the other one down: shared too.
    ds1._result(ds1.find(1, GW[1]), False, "no answer to INVITE")  # type: ignore[arg-type]
    assert sent1 == [{"sipsuite_link": "ds", "setid": 1, "uri": GW[1], "state": "ip"}]
    # Unknown destinations and words are ignored.
    ds1.link.feed(encode("ds", setid=9, uri=GW[0], state="a")  # type: ignore[attr-defined]
                  + encode("ds", setid=1, uri=GW[0], state="bogus"))
    assert status(ds1)[GW[0]] == ("inactive", None)
    core0.modules.stop()
    core1.modules.stop()
