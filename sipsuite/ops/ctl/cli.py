"""sipsuite-ctl: drive a running sipsuite through its management interface.

The kamctl/kamcmd of sipsuite: every command is one JSON-RPC 2.0 call to the
``[management] listen`` address, made with plain synchronous urllib (a CLI
that runs one request has no use for a reactor). ``rpc METHOD [PARAMS]``
calls any method; the friendlier commands (``user add``, ``ul show`` ...) are
rows of :data:`COMMANDS`, so a subsystem adds its commands by adding rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sipsuite.ops.ctl import liveops as live
from sipsuite.ops.ctl import trace as calltrace
from sipsuite.ops.ctl.output import (
    message,
    show_bindings,
    show_dispatcher,
    show_flood,
    show_json,
    show_relay_sessions,
    show_relay_stats,
    show_services,
    show_shv,
    show_tls,
    show_tls_list,
    show_ul_add,
    show_ul_rm,
    show_unban,
    show_users,
)
from sipsuite.ops.errors import METHOD_NOT_FOUND

__all__ = ["COMMANDS", "DEFAULT_RELAY_URL", "DEFAULT_URL", "Arg", "Command", "RpcClient",
           "RpcFailure", "main"]

PROG = "sipsuite-ctl"
# The same address as the server's default [management] listen (tcp:127.0.0.1:7060);
# not imported from sipsuite.ops.server so the CLI does not load Twisted.
DEFAULT_URL = "http://127.0.0.1:7060/"
# twistd rtp-relay's own ([management] relay_listen): where `relay ...`
# commands go when no URL was chosen and the proxy's address has no relay.
DEFAULT_RELAY_URL = "http://127.0.0.1:7061/"
URL_ENV = "SIPSUITE_CTL_URL"
# [management] token, sent as "Authorization: Bearer TOKEN"; an environment
# variable keeps it out of `ps` and the shell's history.
TOKEN_ENV = "SIPSUITE_CTL_TOKEN"


class CtlError(Exception):
    """A failure reported as one line on stderr, exit status 1."""


class RpcFailure(CtlError):
    """The server answered with a JSON-RPC error object."""

    def __init__(self, code: Any, message: Any, data: Any = None) -> None:
        super().__init__(f"error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


def normalise_url(url: str) -> str:
    """Accept "http://host:port" without a path (and "host:port" without a scheme)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"bad URL {url!r}: expected http://HOST:PORT/")
    return urlunsplit(parts._replace(path=parts.path or "/"))


class RpcClient:
    """Makes JSON-RPC 2.0 calls over HTTP POST, one request per call."""

    def __init__(self, url: str, timeout: float = 5.0, token: str = "") -> None:
        self.url = url
        self.timeout = timeout
        self.token = token
        # No proxies: the management interface is usually on loopback, and an
        # http_proxy set for other tools must not capture it.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._next_id = 1

    def call(self, method: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self._next_id}
        self._next_id += 1
        if params is not None:
            request["params"] = params
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        http_request = urllib.request.Request(
            self.url, data=json.dumps(request).encode("utf-8"), method="POST", headers=headers)
        try:
            with self._opener.open(http_request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise CtlError(f"{self.url}: HTTP 401 Unauthorized: "
                               + ("wrong token" if self.token else
                                  f"the server wants a token (--token or ${TOKEN_ENV})")) from None
            # A 4xx/5xx may still carry a JSON-RPC error (413 for a huge body does).
            body = exc.read() or b""
            reply = _json_or_none(body)
            if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
                return self._result(reply)
            raise CtlError(f"{self.url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise CtlError(f"cannot reach {self.url}: {_reason(exc.reason)}") from None
        except (TimeoutError, OSError) as exc:  # a timeout while reading the reply
            raise CtlError(f"cannot reach {self.url}: {_reason(exc)}") from None
        reply = _json_or_none(body)
        if not isinstance(reply, dict) or reply.get("jsonrpc") != "2.0" or (
                "result" not in reply and "error" not in reply):
            snippet = body[:60].decode("utf-8", "replace").splitlines()
            raise CtlError(f"{self.url}: not a JSON-RPC reply: {snippet[0] if snippet else '(empty)'!r}")
        return self._result(reply)

    @staticmethod
    def _result(reply: dict[str, Any]) -> Any:
        error = reply.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise RpcFailure("?", error)
            raise RpcFailure(error.get("code"), error.get("message"), error.get("data"))
        return reply.get("result")


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _reason(reason: Any) -> str:
    if isinstance(reason, TimeoutError) or str(reason) == "timed out":
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror  # "Connection refused", not "[Errno 111] Connection refused"
    return str(reason) or type(reason).__name__


# ---------------------------------------------------------------------------
# Commands.


@dataclass(frozen=True)
class Arg:
    """A command-line argument that becomes the RPC param of the same name."""

    name: str  # the RPC param name and the argparse dest
    help: str = ""
    optional: bool = False  # omitted -> param not sent (the method's default applies)
    type: Callable[[str], Any] = str
    metavar: str | None = None


@dataclass(frozen=True)
class Command:
    """``words`` on the command line -> a call of ``method`` with ``args`` as params."""

    words: tuple[str, ...]  # ("user", "add"), or one word for a top-level command
    method: str
    help: str
    args: tuple[Arg, ...] = ()
    show: Callable[[Any, argparse.Namespace], str] = show_json
    params: Callable[[argparse.Namespace], Any] | None = None  # overrides args -> params
    group_help: str = ""  # help of words[0] when it is a group ("user", "ul")
    # (What it returns, e.g. add_argument's Action, is not used.)
    extra: Callable[[argparse.ArgumentParser], object] | None = field(default=None, compare=False)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


_KEY_VALUE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)


def _word_value(text: str) -> Any:
    """A params word: JSON when it parses as JSON ("60", "null", '"007"'), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_rpc_params(words: Sequence[str]) -> list[Any] | dict[str, Any] | None:
    """The PARAMS of ``rpc METHOD PARAMS``: nothing; one JSON object or array;
    key=value words (a named params object); or plain words (an array)."""
    if not words:
        return None
    if len(words) == 1 and words[0].lstrip()[:1] in ("{", "["):
        try:
            value = json.loads(words[0])
        except ValueError as exc:
            raise ValueError(f"PARAMS is not valid JSON: {exc}") from None
        if not isinstance(value, list | dict):
            raise ValueError("PARAMS must be a JSON object or array")
        return value
    named = [_KEY_VALUE.fullmatch(w) for w in words]
    if all(named):
        return {m.group(1): _word_value(m.group(2)) for m in named if m is not None}
    if any(named):
        raise ValueError("PARAMS: use either key=value words or plain words, not both")
    return [_word_value(w) for w in words]


_INT = re.compile(r"[+-]?[0-9]+")


def shv_value(text: str) -> int | str:
    """A shv value from the command line: digits are an int; anything else,
    or digits in double quotes ('"42"'), a string."""
    if _INT.fullmatch(text):
        return int(text)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _rpc_params(args: argparse.Namespace) -> Any:
    return args.rpc_params


COMMANDS: list[Command] = [
    Command(("rpc",), "", "call any RPC method (system.listMethods lists them)",
            args=(Arg("rpc_method", "the method, e.g. ul.show", metavar="METHOD"),),
            params=_rpc_params,
            extra=lambda p: p.add_argument(
                "rpc_words", nargs="*", metavar="PARAMS",
                help="one JSON object or array, or key=value words, or plain words"
                     " (an array); values are JSON when they parse, else strings")),
    Command(("user", "add"), "user.add", "add a subscriber",
            (Arg("user", metavar="NAME"), Arg("password", metavar="PASSWORD")),
            show=message("added user {user}"), group_help="subscribers (digest users)"),
    Command(("user", "passwd"), "user.passwd", "change a subscriber's password",
            (Arg("user", metavar="NAME"), Arg("password", metavar="PASSWORD")),
            show=message("changed password of user {user}")),
    Command(("user", "rm"), "user.rm", "remove a subscriber", (Arg("user", metavar="NAME"),),
            show=message("removed user {user}")),
    Command(("user", "list"), "user.list", "list the subscribers", show=show_users),
    Command(("ul", "show"), "ul.show", "show the bindings of one AOR or of all",
            (Arg("aor", "user, user@domain or sip: URI", optional=True, metavar="AOR"),),
            show=show_bindings, group_help="user location (registrations)"),
    Command(("ul", "add"), "ul.add", "add or replace a binding",
            (Arg("aor", metavar="AOR"), Arg("contact", "the contact URI", metavar="URI"),
             Arg("expires", "seconds (default: permanent)", optional=True, type=_positive_int,
                 metavar="EXPIRES")),
            show=show_ul_add),
    Command(("ul", "rm"), "ul.rm", "remove one contact of an AOR, or all its bindings",
            (Arg("aor", metavar="AOR"), Arg("contact", optional=True, metavar="CONTACT")),
            show=show_ul_rm),
    Command(("relay", "sessions"), "relay.sessions",
            "the sessions the RTP relay carries, with ports, sources and packet counts",
            (Arg("call_id", "only this call (its SIP Call-ID, or the token the relay shows)",
                 optional=True, metavar="CALL-ID"),),
            show=show_relay_sessions, group_help="the RTP relay (media)"),
    Command(("relay", "stats"), "relay.stats",
            "RTP relay totals: sessions, packets, drops by cause, ports", show=show_relay_stats),
    Command(("dispatcher", "dump"), "dispatcher.dump",
            "destination sets: state, flags, priority, weight, active calls, last probe",
            show=show_dispatcher, group_help="dispatcher destination sets (kamctl dispatcher)"),
    Command(("dispatcher", "reload"), "dispatcher.reload",
            "re-read [dispatcher] list_file (a broken file is refused, the old sets stay)",
            show=lambda r, a: f"loaded {r['sets']} set(s), {r['destinations']} destination(s)"),
    Command(("dispatcher", "set-state"), "dispatcher.set_state", "set a destination's state",
            (Arg("setid", "the set id", type=int, metavar="SETID"),
             Arg("uri", "the destination URI as listed", metavar="URI"),
             Arg("state", "active, inactive, probing, disabled (or kamcmd's a, ap, i, ip, d)",
                 metavar="STATE")),
            show=lambda r, a: f"{r['uri']} in set {r['setid']} is now {r['state']}"
                              + (" (probing)" if r.get("probing") else "")),
    Command(("flood", "show"), "flood.show",
            "banned source addresses (seconds left) and the busiest sources now",
            show=show_flood, group_help="antiflood bans (pike / ipban)"),
    Command(("flood", "unban"), "flood.unban", "lift the ban of a source address",
            (Arg("address", "an IP address", metavar="ADDR"),), show=show_unban),
    Command(("debug",), "debug",
            "show the log level, or set it (kamctl fifo debug [N])",
            (Arg("level", "debug, info, warn, error, or Kamailio's 4/3 = debug, 2 = info,"
                 " 1 = notice (info), 0 = warn, -1 = error", optional=True,
                 type=live.debug_level, metavar="LEVEL"),), show=live.show_debug),
    Command(("cfg", "get"), "cfg.get", "show run-time settings (all, one section's, or one)",
            (Arg("name", "section.key, e.g. timers.t1, or a section, e.g. timers", optional=True,
                 metavar="NAME"),),
            show=live.show_cfg_get, group_help="run-time settings (kamcmd cfg.get / cfg.set)"),
    Command(("cfg", "set"), "cfg.set", "change a run-time setting, validated as in the config file",
            (Arg("name", "section.key, e.g. pstn.gw_ip", metavar="NAME"),
             Arg("value", "a TOML value (true, 5, 0.5, \"text\", [\"a\"]); a bare word is a string",
                 metavar="VALUE")),
            show=live.show_cfg_set),
    Command(("shv", "get"), "shv.get", "show a shared variable ($shv), or all of them",
            (Arg("name", optional=True, metavar="NAME"),), show=show_shv,
            group_help="shared variables of the routing (kamcmd shv.get / shv.set)"),
    Command(("shv", "set"), "shv.set", "set a shared variable: every worker and node sees it at once",
            (Arg("name", metavar="NAME"),
             Arg("value", 'digits are an int, anything else a string ("42" in double quotes:'
                 " the string)", type=shv_value, metavar="VALUE")),
            show=show_shv),
    Command(("routing", "reload"), "routing.reload",
            "re-import the [proxy] routing module and swap it in (as SIGHUP does)",
            show=live.show_reload, group_help="the routing class"),
    Command(("route", "explain"), "route.explain",
            "route a SIP message in dry-run mode (nothing sent, nothing stored) and print each"
            " decision with the hook and line that made it",
            (Arg("file", "the SIP message as text, or - for stdin", metavar="FILE"),),
            show=live.show_explain, params=live.explain_params, extra=live.explain_options,
            group_help="the routing class's decisions"),
    Command(("stats",), "stats",
            "requests per method, replies per class, transactions, registrations, drops",
            show=live.show_stats),
    Command(("calls",), "calls.list",
            "recent calls from the flight recorder: start, from, to, result, duration",
            show=calltrace.show_calls, params=calltrace.calls_params,
            extra=calltrace.calls_options),
    Command(("trace",), "calls.trace",
            "one call as a ladder diagram: caller, proxy, callees, relay; --full adds the"
            " messages and routing decisions, --pcap FILE writes a pcap",
            (Arg("call_id", "the call's Call-ID (sipsuite-ctl calls lists them)",
                 metavar="CALL-ID"),),
            show=calltrace.show_trace, extra=calltrace.trace_options),
    Command(("services",), "services",
            "the user services of [services] load and whether each runs", show=show_services),
    Command(("uptime",), "uptime", "when the proxy started and how long it has run",
            show=live.show_uptime),
    Command(("tls", "reload"), "tls.reload",
            "re-read [tls] certificate, key and CA list (new connections use them)",
            show=show_tls, group_help="TLS certificates (kamcmd tls.reload)"),
    Command(("tls", "show"), "tls.show", "the certificate in use, its names and expiry",
            show=show_tls),
    Command(("tls", "list"), "tls.list",
            "open SIP-over-TLS connections and the certificate each peer showed",
            show=show_tls_list),
]


def _params_from_args(command: Command, args: argparse.Namespace) -> dict[str, Any]:
    params = {}
    for arg in command.args:
        value = getattr(args, arg.name)
        if value is not None or not arg.optional:
            params[arg.name] = value
    return params


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Manage a running sipsuite over its JSON-RPC interface.")
    _global_options(parser, {"url": None, "json": False, "timeout": 5.0, "token": None})
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in commands:
        if len(command.words) == 1:
            sub = top.add_parser(command.words[0], help=command.help, description=command.help)
        else:
            group, word = command.words
            if group not in groups:
                group_parser = top.add_parser(group, help=command.group_help or None)
                groups[group] = group_parser.add_subparsers(
                    dest="subcommand", metavar="SUBCOMMAND", required=True)
            sub = groups[group].add_parser(word, help=command.help, description=command.help)
        for arg in command.args:
            sub.add_argument(arg.name, nargs="?" if arg.optional else None, type=arg.type,
                             metavar=arg.metavar, help=arg.help or None)
        if command.extra is not None:
            command.extra(sub)
        # After the command words too (`sipsuite-ctl ul show --json`); a
        # suppressed default leaves the value given before them in place.
        _global_options(sub, None)
        sub.set_defaults(ctl_command=command, ctl_parser=sub)
    return parser


def _at(url: str, exc: CtlError) -> str:
    # An RpcFailure's text names no address; a failure to connect does.
    return f"{url}: {exc}" if isinstance(exc, RpcFailure) else str(exc)


def _global_options(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None) -> None:
    """--url, --json and --timeout: ``defaults`` on the top parser, none
    (argparse.SUPPRESS) on a command's."""
    def default(name: str) -> Any:
        return argparse.SUPPRESS if defaults is None else defaults[name]

    parser.add_argument(
        "--url", default=default("url"),
        help=f"the management interface (default: ${URL_ENV}, else {DEFAULT_URL}; relay"
             f" commands then try {DEFAULT_RELAY_URL}, rtp-relay's own, if that has no relay)")
    parser.add_argument(
        "--token", default=default("token"), metavar="TOKEN",
        help=f"[management] token, sent as 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV})")
    parser.add_argument("--json", action="store_true", default=default("json"),
                        help="print the raw JSON result")
    parser.add_argument("--timeout", type=_positive_float, default=default("timeout"),
                        metavar="SECONDS", help="give up after this long (default: 5)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        command: Command = args.ctl_command
        sub_parser: argparse.ArgumentParser = args.ctl_parser
        if command.words == ("rpc",):
            try:
                args.rpc_params = parse_rpc_params(args.rpc_words)
            except ValueError as exc:
                sub_parser.error(str(exc))
        chosen = args.url or os.environ.get(URL_ENV)
        try:
            url = normalise_url(chosen or DEFAULT_URL)
        except ValueError as exc:
            parser.error(str(exc))
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2

    method = args.rpc_method if command.words == ("rpc",) else command.method
    try:
        params = command.params(args) if command.params else _params_from_args(command, args)
    except argparse.ArgumentTypeError as exc:  # a FILE argument that cannot be read
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    token = args.token or os.environ.get(TOKEN_ENV, "")
    try:
        try:
            result = RpcClient(url, args.timeout, token).call(method, params)
        except CtlError as exc:
            if chosen or not method.startswith("relay.") or (
                    isinstance(exc, RpcFailure) and exc.code != METHOD_NOT_FOUND):
                raise
            # A proxy alone (sip-proxy) has no relay methods, or nothing
            # serves the default address: a relay of its own may.
            try:
                result = RpcClient(DEFAULT_RELAY_URL, args.timeout, token).call(method, params)
            except CtlError as relay_exc:
                raise CtlError(f"{_at(url, exc)}; {_at(DEFAULT_RELAY_URL, relay_exc)}") from None
    except CtlError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    try:
        print(command.show(result, args))
    except OSError as exc:  # trace --pcap FILE that cannot be written
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
