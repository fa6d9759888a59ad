"""The flight recorder's web pages in a real browser: Debian's chromium,
headless, driven by selenium through Debian's chromium-driver, against a
real ``twistd sip-proxy`` carrying a sipp call.

The list page is open before the call is made and shows it without a
reload; the call's page draws every arrow between the right columns, and
clicking an arrow shows that message with its routing decisions.  A
screenshot of the ladder is kept (its path is printed).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import procs
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_flight_recorder import LADDER, one_call

from sipsuite.ops.callpages import COL_W, LEFT

WAIT = 20  # seconds, at most, for anything the browser is waiting for


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromium-driver are needed (scripts/test-tools.sh installs them)",
                    pytrace=False)
    # Never let selenium look for (and download) a browser or driver itself.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1000", "--no-proxy-server",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    web = webdriver.Chrome(options=options, service=Service(driver, log_output=str(
        tmp_path / "chromedriver.log")))
    web.set_page_load_timeout(WAIT)
    web.set_script_timeout(WAIT)
    try:
        yield web
    finally:
        web.quit()


def column(x: str) -> int:
    return round((float(x) - LEFT) / COL_W)


def test_call_list_and_ladder_in_chromium(
        sipp_bin: str, proxy_factory: procs.ProxyFactory, browser: Any, tmp_path: Path) -> None:
    uas_port = procs.free_port()
    proxy = proxy_factory("pages", plugin="sip-proxy",
                          static={"bob": [f"sip:bob@127.0.0.1:{uas_port}"]})
    base = proxy.management_url.rstrip("/")
    wait = WebDriverWait(browser, WAIT)

    browser.get(base + "/calls")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Calls"
    assert browser.find_elements(By.CSS_SELECTOR, "a.call-id") == []

    # The call is made with the page open: its rows are fetched again.
    one_call(proxy, uas_port, tmp_path / "sipp")
    link = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "a.call-id"))[0]
    call_id = link.text
    row = link.find_element(By.XPATH, "./ancestor::tr").text
    assert "200 OK" in row and "sip:bob@" in row, row
    # The filters: another user's calls are not this one.
    browser.get(base + "/calls?user=nobody-else")
    assert browser.find_elements(By.CSS_SELECTOR, "a.call-id") == []
    browser.get(base + "/calls?result=answered&since=10m")
    link = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "a.call-id"))[0]
    assert link.text == call_id

    link.click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "svg#ladder a.arrow"))
    titles = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "svg#ladder > text:not(.t)")]
    assert titles[0::2][:3] == ["caller", "proxy", "callee"], titles
    arrows = []
    for arrow in browser.find_elements(By.CSS_SELECTOR, "svg#ladder a.arrow.sip"):
        line = arrow.find_element(By.TAG_NAME, "line")
        text = arrow.find_elements(By.TAG_NAME, "text")[0].text
        arrows.append((text, column(line.get_attribute("x1") or "0"),
                       column(line.get_attribute("x2") or "0"), arrow))
    drawn = [(text, a, b) for text, a, b, _ in arrows if text in LADDER]
    assert drawn == [("INVITE", 0, 1), ("100 Trying", 1, 0), ("INVITE", 1, 2),
                     ("100 Trying", 2, 1), ("180 Ringing", 2, 1), ("180 Ringing", 1, 0),
                     ("200 OK", 2, 1), ("200 OK", 1, 0), ("ACK", 0, 1), ("ACK", 1, 2),
                     ("BYE", 0, 1), ("BYE", 1, 2), ("200 OK", 2, 1), ("200 OK", 1, 0)], drawn

    shown = browser.find_elements(By.CSS_SELECTOR, "section.msg")
    assert shown and not any(s.is_displayed() for s in shown)
    # Click the INVITE the proxy sent to bob: its message and the decisions
    # that sent it appear beside the ladder.
    invite_out = next(a for text, x1, x2, a in arrows if text == "INVITE" and x1 == 1)
    invite_out.click()
    target = invite_out.get_dom_attribute("href")
    assert target and target.startswith("#m"), target
    section = wait.until(lambda b: [s for s in b.find_elements(By.CSS_SELECTOR, "section.msg")
                                    if s.is_displayed()])
    assert len(section) == 1 and section[0].get_attribute("id") == target[1:]
    text = section[0].text
    assert f"INVITE sip:bob@127.0.0.1:{uas_port}" in text, text
    assert f"Call-ID: {call_id}" in text, text
    # (The decisions were made when the caller's INVITE came in.)
    first = next(a for t, x1, _, a in arrows if t == "INVITE" and x1 == 0)
    first.click()
    decisions = wait.until(lambda b: [s for s in b.find_elements(By.CSS_SELECTOR, "section.msg")
                                      if s.is_displayed()])[0].text
    assert "request_route: relay to sip:bob@" in decisions, decisions
    assert "sipsuite/proxy/routing/default.py:" in decisions, decisions

    # And a reply: the 180 from bob.
    ringing = next(a for t, x1, _, a in arrows if t == "180 Ringing" and x1 == 2)
    ringing.click()
    shown_now = wait.until(lambda b: [s for s in b.find_elements(By.CSS_SELECTOR, "section.msg")
                                      if s.is_displayed()])
    assert len(shown_now) == 1 and shown_now[0].text.startswith("180 Ringing"), shown_now[0].text
    assert "SIP/2.0 180 Ringing" in shown_now[0].text

    shot = tmp_path / "call-ladder.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot of the ladder page: {shot}")
