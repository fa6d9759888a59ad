"""The proxy while the suite drains (sipsuite.drain): requests outside a
dialog get 503 with Retry-After, requests inside one are routed, and
``in_flight`` counts the requests still waiting for an answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from proxykit import ProxyKit, answer, request

BOB = "sip:bob@127.0.0.9:5099"


@pytest.fixture
def kit(tmp_path: Path) -> ProxyKit:
    k = ProxyKit(tmp_path, static={"bob": BOB})
    k.core.start_drain(k.clock.seconds() + 12.5)
    return k


@pytest.mark.parametrize("method", ["INVITE", "REGISTER", "OPTIONS", "SUBSCRIBE", "MESSAGE"])
def test_requests_outside_a_dialog_get_503_with_retry_after(kit: ProxyKit, method: str) -> None:
    kit.feed(request(method, "sip:bob@sipsuite.test"), "127.0.0.2")
    finals = [m for m, _, _ in kit.take() if getattr(m, "status", 0) >= 200]
    assert [m.status for m in finals] == [503]
    assert finals[0].header("retry-after") == "13"  # the drain's rest, rounded up
    assert kit.core.stats.get("drain.refused") == 1


def test_requests_inside_a_dialog_are_routed_and_counted_in_flight(kit: ProxyKit) -> None:
    bye = request("BYE", BOB, to_tag="callee", call_id="up", branch="bye1", cseq=2,
                  route="<sip:127.0.0.1:5060;lr>")  # our Record-Route
    kit.feed(bye, "127.0.0.2")
    forwarded = kit.sent_to("127.0.0.9")
    assert [m.method for m in forwarded] == ["BYE"]
    # Until the callee answers, the BYE keeps the proxy up.
    assert kit.core.in_flight() == 2  # its server and client transactions
    kit.take()
    kit.feed(answer(forwarded[0], 200), "127.0.0.9", 5099)
    assert [m.status for m, _, _ in kit.take()] == [200]
    assert kit.core.in_flight() == 0


def test_no_drain_no_refusal(tmp_path: Path) -> None:
    k = ProxyKit(tmp_path, static={"bob": BOB})
    k.feed(request("OPTIONS", "sip:bob@sipsuite.test"), "127.0.0.2")
    assert [m.method for m in k.sent_to("127.0.0.9")] == ["OPTIONS"]
