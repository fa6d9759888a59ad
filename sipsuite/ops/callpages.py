"""The flight recorder in a browser, served by the management HTTP server:

- ``/calls``: the recent calls (``calls.list``), filtered by the query
  string (``user``, ``result``, ``since`` as ``sipsuite-ctl calls`` takes
  them), the rows fetched again every few seconds while the page is open;
- ``/calls/CALL-ID``: the call's ladder (``calls.trace``) as an SVG drawn
  here, with the columns of ``sipsuite-ctl trace`` (sipsuite/trace/ladder.py);
  each arrow links to its message, shown beside the ladder with the routing
  decisions made while it was handled (CSS ``:target``: no script needed).

Plain HTML and SVG made on the server, every recorded byte escaped (a
Call-ID or a header is whatever a peer sent), no resource from elsewhere:
the pages work offline.  They ask the same registry as the RPCs, so with
worker processes they show the merged data (proxy/workerops.py).
"""

from __future__ import annotations

import argparse
import hmac
import html
import time
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import resource, server

from sipsuite.log import get_logger
from sipsuite.ops.errors import RpcError
from sipsuite.trace.ladder import columns, label

__all__ = ["TOKEN_COOKIE", "CallPages", "LoginPage", "call_page", "list_page", "list_rows"]

log = get_logger("sipsuite.management.pages")

#: The cookie /login sets, so a browser can open the pages of a listener
#: with a token (it sends no Authorization header of its own); the
#: management server accepts it in place of the header.
TOKEN_COOKIE = b"sipsuite-token"

#: Seconds between two fetches of the list's rows.
REFRESH = 3
LIMIT = 200

COL_W = 190      # between two columns' lines
ROW_H = 30       # between two arrows
LEFT = 110       # the time column
TOP = 62         # below the column titles and addresses

_STYLE = """
body{font:14px/1.35 system-ui,sans-serif;margin:1em;color:#222}
table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}
tr.failed td{color:#a00}code,pre{font:12px/1.3 ui-monospace,monospace}
form input{width:9em}.grid{display:flex;gap:1.5em;align-items:flex-start}
.side{position:sticky;top:0;max-width:46em;max-height:95vh;overflow:auto}
.msg{display:none}.msg:target{display:block}.side:has(.msg:target) .hint{display:none}
pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap;word-break:break-all}
svg text{font:12px ui-monospace,monospace}svg .col{stroke:#999;stroke-dasharray:4 3}
svg a.arrow line{stroke:#246;stroke-width:1.5}svg a.arrow.relay line{stroke:#692}
svg a.arrow:hover text{fill:#c60}svg a.arrow{cursor:pointer}
.decisions li{font:12px ui-monospace,monospace}
"""


def _e(value: Any) -> str:
    """Any recorded value as HTML (and SVG) text, quotes too."""
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, head: str = "") -> bytes:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style>{head}</head><body>{body}</body></html>\n").encode()


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _outcome(row: dict[str, Any]) -> str:
    status = row.get("result")
    return f"{status} {row.get('reason') or ''}".strip() if status is not None else "no final yet"


def list_rows(calls: list[dict[str, Any]]) -> str:
    """The table rows of the list page (also what its script fetches)."""
    if not calls:
        return '<tr><td colspan="6">no calls recorded that match</td></tr>'
    out = []
    for row in calls:
        status = row.get("result")
        failed = status is not None and status >= 300 and status not in (401, 407, 487)
        duration = row.get("duration")
        link = "/calls/" + quote(str(row.get("call_id", "")), safe="")
        out.append(
            f'<tr class="{"failed" if failed else "call"}"><td>{_e(_when(row.get("start")))}</td>'
            f'<td>{_e(row.get("from", ""))}</td><td>{_e(row.get("to", ""))}</td>'
            f'<td>{_e(_outcome(row))}</td>'
            f'<td>{"-" if duration is None else f"{duration:.1f} s"}</td>'
            f'<td><a class="call-id" href="{_e(link)}">{_e(row.get("call_id", ""))}</a></td></tr>')
    return "\n".join(out)


def list_page(calls: list[dict[str, Any]], query: dict[str, str], error: str = "") -> bytes:
    fields = "".join(
        f'<label>{name} <input name="{name}" value="{_e(query.get(name, ""))}"'
        f' placeholder="{hint}"></label> '
        for name, hint in (("user", "alice"), ("result", "failed, 486, 4xx"),
                           ("since", "10m, 2h, 14:00")))
    script = (
        # Only the rows are fetched again (the server renders and escapes
        # them): the filter form keeps what is being typed.
        "<script>setInterval(function(){var u=new URL(location.href);"
        "u.searchParams.set('part','rows');fetch(u).then(function(r){"
        "if(r.ok)return r.text()}).then(function(t){if(t!==undefined)"
        f"document.getElementById('rows').innerHTML=t}})}},{REFRESH * 1000});</script>")
    body = (f"<h1>Calls</h1><form method=\"get\" action=\"/calls\">{fields}"
            f"<button>filter</button></form>"
            + (f'<p class="error">{_e(error)}</p>' if error else "")
            + "<table><thead><tr><th>start</th><th>from</th><th>to</th><th>result</th>"
            f"<th>duration</th><th>Call-ID</th></tr></thead><tbody id=\"rows\">{list_rows(calls)}"
            f"</tbody></table>{script}")
    return _page("sipsuite calls", body,
                 f'<noscript><meta http-equiv="refresh" content="{REFRESH}"></noscript>')


def _addr(pair: Any) -> str:
    host, port = str(pair[0]), pair[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _arrow(n: int, y: int, a: int, b: int, text: str, offset: str, kind: str) -> str:
    x1, x2 = LEFT + a * COL_W, LEFT + b * COL_W
    head = -7 if x2 > x1 else 7
    mid = (x1 + x2) // 2
    return (f'<a class="arrow {kind}" href="#m{n}" id="a{n}"><title>{_e(text)}</title>'
            f'<rect x="{min(x1, x2)}" y="{y - 16}" width="{abs(x2 - x1)}" height="{ROW_H - 6}"'
            f' fill="transparent"/>'
            f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}"/>'
            f'<polyline points="{x2 + head},{y - 4} {x2},{y} {x2 + head},{y + 4}" fill="none"'
            f' stroke="#246"/>'
            f'<text x="{mid}" y="{y - 4}" text-anchor="middle">{_e(text)}</text></a>'
            # The time outside the link: the arrow's box is where a click lands.
            f'<text class="t" x="4" y="{y + 4}" fill="#777">{_e(offset)}</text>')


def call_page(call: dict[str, Any]) -> bytes:
    """The ladder of one call (a ``calls.trace`` result) with its messages."""
    events = sorted(call.get("events", []), key=lambda e: e["t"])
    cols = columns(events) if events else [("proxy", "proxy")]
    index = {key: i for i, (key, _) in enumerate(cols)}
    proxy = index["proxy"]
    t0 = events[0]["t"] if events else 0.0
    parts: list[str] = []
    details: list[str | list[str]] = []
    local = next((e["local"] for e in events if e["type"] == "sip"), None)
    for i, (key, title) in enumerate(cols):
        x = LEFT + i * COL_W
        shown = (_addr(local) if local else "") if key == "proxy" else key.removeprefix("relay:")
        parts.append(f'<text x="{x}" y="16" text-anchor="middle" font-weight="bold">{_e(title)}'
                     f'</text><text x="{x}" y="32" text-anchor="middle" fill="#555">'
                     f'{_e(shown[:28])}</text>')
    y = TOP
    n = 0
    pending: list[str] | None = None  # the decisions made on the last message in
    for e in events:
        offset = f"+{e['t'] - t0:.3f}"
        kind = e["type"]
        if kind == "sip":
            n += 1
            peer = index[_addr(e["remote"])]
            a, b = (proxy, peer) if e["dir"] == "out" else (peer, proxy)
            text = label(e["data"]) + ("" if e["transport"] == "udp" else f" ({e['transport']})")
            parts.append(_arrow(n, y, a, b, text, offset, "sip"))
            y += ROW_H
            raw = e["data"].encode("latin-1").decode("utf-8", "replace")
            decided: list[str] = []
            if e["dir"] == "in":
                # Decisions are made on what was received (a 100 Trying may
                # go out before the routing runs): they belong to the last
                # message in.
                pending = decided
            details.append(
                f'<section class="msg" id="m{n}"><h3>{_e(text)} <small>{_e(offset)} s, '
                f'{"received from" if e["dir"] == "in" else "sent to"} {_e(_addr(e["remote"]))}'
                f' over {_e(e["transport"])}</small></h3><pre>{_e(raw)}</pre>'
                f'<h4>routing decisions</h4><ul class="decisions">')
            if e["dir"] == "out":
                decided.append("<li>(made on the message received before it)</li>")
            details.append(decided)  # filled by the route events that follow
        elif kind == "relay":
            n += 1
            relay = index["relay:" + e["relay"]]
            text = (e["command"].split(" ", 1)[0] or "?") + " → " + (
                (e["reply"] or "no reply").split(" ", 1)[0])
            parts.append(_arrow(n, y, proxy, relay, text, offset, "relay"))
            y += ROW_H
            details.append(
                f'<section class="msg" id="m{n}"><h3>relay {_e(e["relay"])} <small>{_e(offset)}'
                f' s</small></h3><pre>{_e(e["command"])}\n\nreply: {_e(e["reply"] or "(none)")}'
                f'</pre></section>')
        elif kind == "route" and pending is not None:
            where = f" [{e['where']}]" if e.get("where") else ""
            pending.append(f"<li>{_e(e['hook'])}: {_e(e['action'])} {_e(e.get('detail') or '')}"
                           f"<span class=\"where\">{_e(where)}</span></li>")
    height = y + 10
    for i in range(len(cols)):
        x = LEFT + i * COL_W
        parts.insert(0, f'<line class="col" x1="{x}" y1="40" x2="{x}" y2="{height}"/>')
    width = LEFT + (len(cols) - 1) * COL_W + 90
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" id="ladder" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg>')
    side = "".join(
        d if isinstance(d, str) else ("".join(d) or "<li>none</li>") + "</ul></section>"
        for d in details)
    media = _media(events)
    dropped = (f"<p>{int(call['dropped'])} event(s) over the limit were not kept.</p>"
               if call.get("dropped") else "")
    duration = call.get("duration")
    head = (f"<p><a href=\"/calls\">all calls</a></p><h1>Call <code>{_e(call.get('call_id', ''))}"
            f"</code></h1><p>{_e(_when(call.get('start') or t0))}: {_e(call.get('from', ''))} → "
            f"{_e(call.get('to', ''))}: <b>{_e(_outcome(call))}</b>"
            f"{'' if duration is None else f', {duration:.1f} s'}</p>{dropped}")
    hint = '<p class="hint">Click an arrow to see its message.</p>'
    body = (f'{head}<div class="grid"><div>{svg}</div><div class="side">{hint}{side}'
            f"{media}</div></div>")
    # A call still in progress is drawn again as it goes on (the URL keeps
    # the #message shown); an ended one stays as it is.
    live = (f'<meta http-equiv="refresh" content="{REFRESH}">'
            if events and call.get("ended") is None else "")
    return _page(f"call {call.get('call_id', '')}", body, live)


def _media(events: list[dict[str, Any]]) -> str:
    """The media legs, when the trace holds the relay's counts of them."""
    legs = [e for e in events if e.get("type") == "media"]
    if not legs:
        return ""
    rows = "".join(
        f"<tr><td>{_e(e.get('leg', ''))}</td><td>{_e(e.get('packets', ''))}</td>"
        f"<td>{_e(e.get('bytes', ''))}</td><td>{_e(e.get('event', ''))}</td></tr>" for e in legs)
    return ("<h3>media</h3><table><tr><th>leg</th><th>packets</th><th>bytes</th><th>event</th>"
            f"</tr>{rows}</table>")


def _args(request: server.Request) -> dict[str, str]:
    out = {}
    given: dict[bytes, list[bytes]] = request.args or {}
    for key, values in given.items():
        if values:
            out[key.decode("utf-8", "replace")] = values[0].decode("utf-8", "replace").strip()
    return out


class CallPages(resource.Resource):
    """``/calls`` and ``/calls/CALL-ID`` over ``registry``'s ``calls.*`` methods."""

    isLeaf = True
    subpaths = True  # serves /calls/ID as well (ops/server.py's root)

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: server.Request) -> Any:
        rest = [p for p in request.postpath or [] if p]
        if rest:
            call_id = b"/".join(rest).decode("utf-8", "replace")
            work = self._call(call_id)
        else:
            work = self._list(_args(request))
        finished = False

        def gone(_: Any) -> None:
            nonlocal finished
            finished = True

        request.notifyFinish().addErrback(gone)

        def reply(answer: tuple[int, bytes]) -> None:
            if finished:
                return
            status, body = answer
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            # Nothing on these pages comes from elsewhere, nor may anything run
            # but their own inline script.
            request.setHeader(b"content-security-policy",
                              b"default-src 'none'; style-src 'unsafe-inline'; "
                              b"script-src 'unsafe-inline'; connect-src 'self'; img-src 'self'")
            request.write(body)
            request.finish()

        def crashed(failure: Failure) -> None:
            log.failure("management page failed", failure)
            if not finished:
                request.setResponseCode(500)
                request.write(b"internal error\n")
                request.finish()

        defer.ensureDeferred(work).addCallbacks(reply, crashed)
        return server.NOT_DONE_YET

    async def _list(self, query: dict[str, str]) -> tuple[int, bytes]:
        params: dict[str, Any] = {"limit": LIMIT}
        error = ""
        for name in ("user", "result"):
            if query.get(name):
                params[name] = query[name]
        if query.get("since"):
            from sipsuite.ops.ctl.trace import since_time

            try:
                params["since"] = since_time(query["since"])
            except argparse.ArgumentTypeError as exc:
                error = str(exc).replace("--since", "since")
        try:
            calls = (await self.registry.call("calls.list", params))["calls"]
        except RpcError as exc:
            calls, error = [], exc.message
        if query.get("part") == "rows":
            return 200, list_rows(calls).encode("utf-8")
        return (400 if error else 200), list_page(calls, query, error)

    async def _call(self, call_id: str) -> tuple[int, bytes]:
        try:
            call = await self.registry.call("calls.trace", {"call_id": call_id})
        except RpcError as exc:
            body = (f'<p><a href="/calls">all calls</a></p><h1>Call <code>{_e(call_id)}</code>'
                    f"</h1><p>{_e(exc.message)}</p>")
            return 404, _page("no such call", body)
        if call is None:  # workers: none of them has it
            return 404, _page("no such call", f"<h1>No call <code>{_e(call_id)}</code></h1>")
        return 200, call_page(call)


class LoginPage(resource.Resource):
    """``/login``: a form that puts the token in a cookie, so a browser can
    open the pages of a listener with ``[management] token`` (it sends no
    Authorization header of its own).  Served without the token."""

    isLeaf = True

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def render_GET(self, request: server.Request) -> bytes:
        return _page("sipsuite login", '<form method="post" action="/login"><label>token '
                     '<input type="password" name="token"></label> <button>open</button></form>')

    def render_POST(self, request: server.Request) -> bytes:
        form: dict[bytes, list[bytes]] = request.args or {}
        given = form.get(b"token", [b""])[0]
        if not hmac.compare_digest(given, self.token.encode("ascii")):
            request.setResponseCode(401)
            return _page("sipsuite login", "<p>wrong token</p>")
        # HttpOnly: no script reads it; SameSite=Strict: no other site's page
        # makes the browser send it.
        request.addCookie(TOKEN_COOKIE, given, path="/", httpOnly=True, sameSite="strict")
        request.setResponseCode(303)
        request.setHeader(b"location", b"/calls")
        return b""
