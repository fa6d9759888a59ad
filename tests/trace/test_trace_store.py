"""The flight recorder's store: calls by Call-ID, the memory bound (oldest
dropped first, failed calls kept longer, the count honest against what
CPython really holds), credentials masked, the summary of a call."""

from __future__ import annotations

import gc
import tracemalloc

from sipsuite.trace.store import TraceStore, call_id_of, mask_credentials

PROXY = ("127.0.0.1", 5060)
CALLER = ("127.0.0.2", 5070)
CALLEE = ("127.0.0.3", 5080)


def msg(first: str, call_id: str, cseq: str, extra: str = "", body: str = "") -> bytes:
    return (f"{first}\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK{call_id}\r\n"
            f"From: \"Alice\" <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
            f"{body}").encode()


def call(store: TraceStore, call_id: str, t: float, final: int = 200, bye: bool = True,
         body: str = "") -> None:
    """A whole call as the proxy sees it on the wire."""
    store.sip(t, True, "udp", PROXY, CALLER, msg("INVITE sip:bob@example.com SIP/2.0", call_id,
                                                 "1 INVITE", body=body))
    store.sip(t, False, "udp", PROXY, CALLER, msg("SIP/2.0 100 Trying", call_id, "1 INVITE"))
    store.sip(t, False, "udp", PROXY, CALLEE, msg("INVITE sip:bob@127.0.0.3 SIP/2.0", call_id,
                                                  "1 INVITE", body=body))
    store.route(call_id, t, "request_route", "relay", "to sip:bob@127.0.0.3", "default.py:215")
    store.sip(t + 1, True, "udp", PROXY, CALLEE, msg(f"SIP/2.0 {final} X", call_id, "1 INVITE"))
    store.sip(t + 1, False, "udp", PROXY, CALLER, msg(f"SIP/2.0 {final} X", call_id, "1 INVITE"))
    if final < 300 and bye:
        store.sip(t + 5, True, "udp", PROXY, CALLER, msg("BYE sip:bob@127.0.0.3 SIP/2.0",
                                                         call_id, "2 BYE"))
        store.sip(t + 5, False, "udp", PROXY, CALLER, msg("SIP/2.0 200 OK", call_id, "2 BYE"))


def test_a_call_is_summed_up_from_what_went_upstream() -> None:
    store = TraceStore(1 << 20)
    call(store, "c1", 100.0)
    trace = store.get("c1")
    assert trace is not None
    s = trace.summary()
    assert (s["method"], s["from"], s["to"], s["result"], s["answered"], s["ended"],
            s["duration"]) == ("INVITE", "sip:alice@example.com", "sip:bob@example.com", 200,
                               101.0, 105.0, 4.0)
    kinds = [e["type"] for e in trace.to_dict()["events"]]
    assert kinds == ["sip", "sip", "sip", "route", "sip", "sip", "sip", "sip"]


def test_call_id_of_reads_long_and_compact_forms() -> None:
    assert call_id_of(b"BYE x SIP/2.0\r\nVia: v\r\ni: short@h\r\n\r\n") == "short@h"
    assert call_id_of(b"BYE x SIP/2.0\r\ncall-id:  abc \r\n\r\n") == "abc"
    # Not from the body: a message without one in its headers has none.
    assert call_id_of(b"BYE x SIP/2.0\r\nVia: v\r\n\r\nCall-ID: body") is None


def test_memory_bound_holds_and_the_oldest_calls_go_first() -> None:
    store = TraceStore(60_000)
    for i in range(200):
        call(store, f"call-{i}", float(i))
        assert store.total <= store.memory
    kept = sorted(int(c.call_id.split("-")[1]) for c in store)
    assert kept and store.evicted == 200 - len(kept)
    # What is left is the newest calls, without a gap.
    assert kept == list(range(200 - len(kept), 200))


def test_a_failed_call_outlives_the_successful_calls_of_its_time() -> None:
    store = TraceStore(60_000)
    call(store, "call-0", 0.0)
    call(store, "failed", 1.0, final=503)
    call(store, "challenged", 2.0, final=407)  # a challenge is no failure
    for i in range(1, 30):
        call(store, f"call-{i}", 2.0 + i)
    ids = {c.call_id for c in store}
    assert "failed" in ids
    assert "call-0" not in ids and "challenged" not in ids
    assert store.total <= store.memory


def test_failed_calls_get_at_most_half_the_memory() -> None:
    store = TraceStore(60_000)
    for i in range(100):
        call(store, f"fail-{i}", float(i), final=486)
    # A scan's 4xx fill the store when it is all there is (the newest)...
    kept = sorted(int(c.call_id.split("-")[1]) for c in store)
    assert store.total > store.memory * 0.9 and kept == list(range(100 - len(kept), 100))
    for i in range(100):
        call(store, f"ok-{i}", 200.0 + i)
    # ...but answered calls coming after take back all but half (and a call).
    assert store.tier_bytes[1] <= store.memory // 2 + 3000
    assert store.get("ok-99") is not None and store.get("fail-99") is not None
    assert store.tier_bytes[2] >= store.memory // 2 - 6000
    assert store.total <= store.memory


def test_registrations_and_options_go_before_any_call() -> None:
    store = TraceStore(40_000)
    call(store, "the-call", 0.0)
    for i in range(300):
        cid = f"reg-{i}"
        store.sip(1.0 + i, True, "udp", PROXY, CALLER,
                  msg("REGISTER sip:example.com SIP/2.0", cid, "1 REGISTER"))
        store.sip(1.0 + i, False, "udp", PROXY, CALLER, msg("SIP/2.0 200 OK", cid, "1 REGISTER"))
    assert store.get("the-call") is not None
    reg = store.get("reg-299")
    assert reg is not None
    assert (reg.summary()["method"], reg.summary()["result"]) == ("REGISTER", 200)


def test_one_huge_call_keeps_its_newest_events_within_the_bound() -> None:
    store = TraceStore(20_000)
    for i in range(500):
        store.sip(float(i), True, "udp", PROXY, CALLER,
                  msg("INFO sip:bob@example.com SIP/2.0", "one", f"{i} INFO"))
    trace = store.get("one")
    assert trace is not None and store.total <= store.memory
    assert trace.dropped > 0
    assert b"499 INFO" in trace.events[-1][-1]


def test_counted_bytes_cover_what_the_store_really_holds() -> None:
    """The bound is on an estimate; it must not be far below the truth."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        store = TraceStore(2_000_000)
        for i in range(300):
            call(store, f"measured-call-{i}", float(i), body="v=0\r\n" * 40)
        gc.collect()
        after = tracemalloc.take_snapshot()
        held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert store.evicted == 0
    # Neither an undercount (the bound would be a lie) nor a gross overcount.
    assert store.total * 0.7 <= held <= store.total * 1.1, (held, store.total)


SECRET = ('Digest username="alice", realm="example.com", nonce="n0nc3", '
          'uri="sip:bob@example.com", response="6629fae49393a05397450978507c4ef1", '
          'algorithm=MD5, cnonce="0a4f113b", qop=auth, nc=00000001')


def test_credentials_are_masked_unless_asked_for() -> None:
    data = msg("INVITE sip:bob@example.com SIP/2.0", "auth", "2 INVITE",
               extra=f"Proxy-Authorization: {SECRET}\r\nauthorization: {SECRET}\r\n",
               body="response=\"in the body\"")
    masked = mask_credentials(data)
    for secret in (b"6629fae49393a05397450978507c4ef1", b"n0nc3", b"0a4f113b"):
        assert secret not in masked
    assert masked.count(b'response="***"') == 2
    assert b'username="alice"' in masked and b'realm="example.com"' in masked
    assert masked.endswith(b'response="in the body"')  # the body is not a header

    store = TraceStore(1 << 20)
    store.sip(1.0, True, "udp", PROXY, CALLER, data)
    trace = store.get("auth")
    assert trace is not None
    # Masked as it is read: the RPC's answer, the ladder and the pcap.
    assert "6629fae49393a05397450978507c4ef1" not in trace.to_dict()["events"][0]["data"]
    shown = trace.to_dict(show_credentials=True)["events"][0]["data"]
    assert shown.encode("latin-1") == data
