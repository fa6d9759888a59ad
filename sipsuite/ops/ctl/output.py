"""How sipsuite-ctl shows each method's result: aligned tables and one-line messages."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned on the widest cell; None shows as "-"."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        # The last column is not padded: no trailing blanks to trip diff or grep.
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append("  ".join(padded))
    return "\n".join(lines)


def _expires_text(expires: Any) -> str:
    return "permanent" if expires is None else str(expires)


def show_bindings(result: Any, args: argparse.Namespace) -> str:
    rows = [
        (entry["aor"], b["contact"], _expires_text(b.get("expires")), b.get("q"),
         b.get("received"), b.get("user_agent") or None)
        for entry in result for b in entry["bindings"]
    ]
    if not rows:
        return "no bindings"
    return table(("AOR", "CONTACT", "EXPIRES", "Q", "RECEIVED", "USER-AGENT"), rows)


def show_users(result: Any, args: argparse.Namespace) -> str:
    if not result:
        return "no users"
    rows = [(u["user"], u["realm"], ",".join(u.get("algorithms", []))) for u in result]
    return table(("USER", "REALM", "ALGORITHMS"), rows)


def show_ul_add(result: Any, args: argparse.Namespace) -> str:
    verb = "replaced" if result.get("replaced") else "added"
    expires = result.get("expires")
    lasting = "permanent" if expires is None else f"expires in {expires} s"
    return f"{verb} binding {result['contact']} of {result['aor']} ({lasting})"


def show_ul_rm(result: Any, args: argparse.Namespace) -> str:
    n = result.get("removed", 0)
    return f"removed {n} binding{'' if n == 1 else 's'} of {args.aor}"


def message(template: str) -> Callable[[Any, argparse.Namespace], str]:
    """A formatter printing a fixed message filled from the command's arguments."""
    return lambda result, args: template.format(**vars(args))


def show_json(result: Any, args: argparse.Namespace) -> str:
    if isinstance(result, str):
        return result
    return json.dumps(result, indent=2, ensure_ascii=False)


def _leg_text(leg: dict[str, Any]) -> str:
    """A party as "relay-port <- source": where it sends to, and from where."""
    port = leg.get("port")
    source = leg.get("latched") or leg.get("signalled")
    shown = "-" if port is None else str(port)
    if source:
        shown += f" <- {source}"
        if not leg.get("latched"):
            shown += " (sdp)"
        elif leg.get("kernel"):
            shown += " (kernel)"  # forwarded by the relay host's nftables rules
    return shown


def show_relay_sessions(result: Any, args: argparse.Namespace) -> str:
    if not result:
        return "no relayed sessions"
    rows: list[tuple[Any, ...]] = [
        (s["call_id"], s["from_tag"], s.get("to_tag"), _leg_text(s["caller"]),
         _leg_text(s["callee"]), s["caller"]["packets"] + s["caller"]["rtcp_packets"],
         s["callee"]["packets"] + s["callee"]["rtcp_packets"], s["dropped"],
         f"{s['idle']:.0f}" + (" hold" if s.get("on_hold") else ""))
        for s in result
    ]
    heads: tuple[str, ...] = ("CALL-ID", "FROM-TAG", "TO-TAG", "CALLER", "CALLEE", "PKTS-A>B",
                              "PKTS-B>A", "DROPPED", "IDLE-S")
    if any("worker" in s for s in result):  # rtp-relay --workers N: which process holds it
        rows = [(*row, s.get("worker", "-")) for row, s in zip(rows, result, strict=True)]
        heads = (*heads, "WORKER")
    return table(heads, rows)


def show_relay_stats(result: Any, args: argparse.Namespace) -> str:
    rows: list[tuple[str, Any]] = []

    def add(key: str, value: Any) -> None:
        # Nested to any depth: a relay with workers has workers.N.counter.
        if isinstance(value, dict):
            if not value:
                rows.append((key, 0))
            for k, v in sorted(value.items()):
                add(f"{key}.{k}", v)
        else:
            rows.append((key, str(value).lower() if isinstance(value, bool) else value))

    for key, value in result.items():
        add(key, value)
    return table(("COUNTER", "VALUE"), rows)


def show_flood(result: Any, args: argparse.Namespace) -> str:
    state = "on" if result.get("enabled") else "off ([features] antiflood = false)"
    lines = [f"antiflood {state}: more than {result['requests']} requests in"
             f" {result['window']:g} s bans for {result['ban_time']:g} s"]
    banned = result.get("banned") or []
    if banned:
        lines.append(table(("BANNED", "SECONDS-LEFT"),
                           [(b["address"], f"{b['seconds_left']:.0f}") for b in banned]))
    else:
        lines.append("no banned addresses")
    top = result.get("top") or []
    if top:
        lines.append(table(("SOURCE", "REQUESTS-IN-WINDOW"),
                           [(t["address"], t["requests"]) for t in top]))
    return "\n".join(lines)


def show_unban(result: Any, args: argparse.Namespace) -> str:
    if result.get("unbanned"):
        return f"unbanned {result['address']}"
    return f"{result['address']} was not banned"


def show_tls(result: Any, args: argparse.Namespace) -> str:
    """tls.reload / tls.show: one block per certificate set (proxy, relay)."""
    keys = ("certificate", "subject", "issuer", "names", "not_after", "sha256", "ca_list",
            "loaded_at", "reloads")
    return "\n\n".join("\n".join(f"{k:12} {', '.join(v) if isinstance(v, list) else v}"
                                  for k in keys if (v := item.get(k)) is not None)
                        for item in result)


def show_dispatcher(result: Any, args: argparse.Namespace) -> str:
    """dispatcher.dump as kamcmd dispatcher.list shows it: one row per destination."""
    rows = [(s["setid"], d["uri"], d["flags"], d["state"], d["priority"], d["weight"], d["calls"],
             d.get("last_probe"))
            for s in result for d in s["destinations"]]
    if not rows:
        return "no destination sets"
    return table(("SET", "URI", "FLAGS", "STATE", "PRIO", "WEIGHT", "CALLS", "LAST-PROBE"), rows)


def show_tls_list(result: Any, args: argparse.Namespace) -> str:
    if not result:
        return "no TLS connections"
    return table(("PEER", "DIR", "LISTENER", "CHECKED-NAME", "PEER-CERTIFICATE"),
                 [(c["peer"], c["direction"] if c["secured"] else c["direction"] + " (handshake)",
                   c["listener"], c["checked_name"] or "-", c["peer_certificate"] or "-")
                  for c in result])


# ---------------------------------------------------------------------------
# The command table.


def show_services(result: Any, args: argparse.Namespace) -> str:
    if not result:
        return "no user services ([services] load is empty)"
    return table(("NAME", "STATE", "LOAD", "SERVICE"),
                 [(s["name"], "running" if s["running"] else "stopped", s["load"], s["service"])
                  for s in result])


def show_shv(result: Any, args: argparse.Namespace) -> str:
    """``name = 42`` / ``name = "night"``: a string in quotes, so "42" the
    string and 42 the number read apart (kamcmd shows their type)."""
    if not result:
        return "no shared variables"
    return "\n".join(f"{name} = {json.dumps(value, ensure_ascii=False)}"
                     for name, value in sorted(result.items()))
