"""self.cfg, the seed's $sel(cfg_get.voicemail.srv_ip) (issue 14): a routing
class reads the run-time settings as cfg set leaves them, at the next request,
with no reload.  (tests/integration/test_routing_vars.py does it through
sipsuite-ctl against two worker processes.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxykit import ProxyKit, request

from sipsuite.ops.liveops import cfg_set
from sipsuite.proxy import RequestContext, Routing
from sipsuite.sip.message import Request


class Voicemail(Routing):
    def request_route(self, ctx: RequestContext) -> None:
        vm = self.cfg.voicemail
        ctx.ruri = f"sip:{ctx.ruri_user}@{vm.srv_ip}:{vm.srv_port}"
        ctx.relay()


def _sent_to(kit: ProxyKit) -> list[tuple[str, str, int]]:
    return [(str(m.uri), h, p) for m, h, p in kit.take() if isinstance(m, Request)]


def test_cfg_set_is_seen_by_the_next_request(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, modules=(), voicemail={"srv_ip": "127.0.0.40", "srv_port": 5090})
    routing = Voicemail(kit.core)
    kit.core.set_routing(routing)
    before: Any = routing.cfg
    assert routing.cfg is kit.core.config and routing.config is kit.core.config

    kit.feed(request("INVITE", "sip:bob@sipsuite.test", call_id="c1", branch="b1"), "127.0.0.2")
    assert _sent_to(kit) == [("sip:bob@127.0.0.40:5090", "127.0.0.40", 5090)]

    cfg_set(kit.core, "voicemail.srv_ip", "127.0.0.41")
    cfg_set(kit.core, "voicemail.srv_port", "5092")
    assert routing.cfg.voicemail.srv_ip == "127.0.0.41" and before.voicemail.srv_ip == "127.0.0.40"
    kit.feed(request("INVITE", "sip:bob@sipsuite.test", call_id="c2", branch="b2"), "127.0.0.2")
    assert _sent_to(kit) == [("sip:bob@127.0.0.41:5092", "127.0.0.41", 5092)]
