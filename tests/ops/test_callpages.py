"""The /calls pages' HTML as made from recorder data (sipsuite/ops/callpages.py),
and the management listener's refusal of a non-loopback address without a
token (the twistd side: tests/integration/test_management_token.py)."""

from __future__ import annotations

import re

import pytest

from sipsuite.ops.callpages import call_page, list_page, list_rows
from sipsuite.ops.server import ManagementService, RpcRegistry
from sipsuite.startup import StartupError

EVIL = '<script>x()</script>"\'&'


def sip(t: float, incoming: bool, remote: int, data: str) -> dict[str, object]:
    return {"type": "sip", "t": t, "dir": "in" if incoming else "out", "transport": "udp",
            "local": ["127.0.0.1", 5060], "remote": ["127.0.0.1", remote], "data": data}


def test_list_rows_escape_every_field_and_link_the_call_id_percent_encoded() -> None:
    rows = list_rows([{"call_id": EVIL + "/x", "start": 1.0, "from": EVIL, "to": "<b>",
                       "result": 486, "reason": "<i>Busy</i>", "duration": None}])
    assert "<script>" not in rows and "<b>" not in rows and "<i>" not in rows
    assert "&lt;script&gt;x()&lt;/script&gt;&quot;&#x27;&amp;" in rows
    assert 'href="/calls/%3Cscript%3Ex%28%29%3C%2Fscript%3E%22%27%26%2Fx"' in rows
    assert 'class="failed"' in rows  # a 486 is a failed call
    page = list_page([], {"user": '"><script>', "since": "10m"}).decode()
    assert 'value="&quot;&gt;&lt;script&gt;"' in page and "no calls recorded" in page
    assert page.count("<script>") == 1  # the page's own poller only


def test_call_page_draws_arrows_and_decisions_under_the_message_received() -> None:
    invite = f"INVITE sip:bob@b SIP/2.0\r\nCall-ID: c1\r\nSubject: {EVIL}\r\n\r\n"
    events = [
        sip(10.0, True, 4000, invite),
        sip(10.001, False, 4000, "SIP/2.0 100 Trying\r\nCall-ID: c1\r\n\r\n"),
        {"type": "route", "t": 10.002, "hook": "request_route", "action": "relay",
         "detail": f"to {EVIL}", "where": "routing.py:7"},
        {"type": "relay", "t": 10.003, "relay": "udp:127.0.0.1:7722",
         "command": "U c1 127.0.0.1 4002", "reply": "30000"},
        sip(10.004, False, 5000, invite),
        sip(10.1, True, 5000, "SIP/2.0 200 OK\r\nCall-ID: c1\r\n\r\n"),
    ]
    page = call_page({"call_id": "c1", "start": 10.0, "from": "a", "to": "b", "result": 200,
                      "reason": "OK", "duration": None, "events": events}).decode()
    assert "<script>" not in page and f"Subject: {EVIL}" not in page
    labels = re.findall(r'<a class="arrow (\w+)" href="#m(\d+)".*?<text[^>]*>([^<]*)</text></a>',
                        page)
    assert labels == [("sip", "1", "INVITE"), ("sip", "2", "100 Trying"),
                      ("relay", "3", "U → 30000"), ("sip", "4", "INVITE"), ("sip", "5", "200 OK")]
    sections = dict(re.findall(r'<section class="msg" id="m(\d+)">(.*?)</section>', page, re.S))
    assert "relay to &lt;script&gt;" in sections["1"] and "routing.py:7" in sections["1"]
    assert "relay to" not in sections["2"] and "relay to" not in sections["4"]
    assert "U c1 127.0.0.1 4002" in sections["3"] and "reply: 30000" in sections["3"]
    assert 'http-equiv="refresh"' in page  # no end yet: drawn again as it goes on
    ended = call_page({"call_id": "c1", "ended": 11.0, "events": events}).decode()
    assert 'http-equiv="refresh"' not in ended
    # The columns: caller, proxy, callee, relay.
    titles = re.findall(r'font-weight="bold">([^<]*)</text>', page)
    assert titles == ["caller", "proxy", "callee", "relay"]


@pytest.mark.parametrize("listen,key", [("tcp:0.0.0.0:0", "[management] listen"),
                                        ("tcp:[::]:0", "[management] relay_listen")])
def test_non_loopback_listener_without_token_does_not_start(listen: str, key: str) -> None:
    service = ManagementService(listen, RpcRegistry(), key=key)
    with pytest.raises(StartupError) as info:
        service.privilegedStartService()
    assert str(info.value).startswith(key) and "token" in str(info.value)
    assert "\n" not in str(info.value)
    assert service.port is None  # nothing was bound
