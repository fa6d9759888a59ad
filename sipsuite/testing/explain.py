"""``python -m sipsuite.testing.explain --config FILE MESSAGE``: route one
SIP message offline through the configured routing class and print every
decision with the hook and the file:line that made it.

MESSAGE is a file holding the message as text (bare newlines are fine, the
Content-Length is recomputed), or ``-`` for stdin.  The proxy is the one
``twistd sip-proxy --config FILE`` would run, with no network: nothing is
bound or sent, Redis is not used (the location and the subscribers are
empty, but for ``--user`` and ``--binding``), host names resolve only
through ``--dns``.  ``sipsuite-ctl route explain`` asks the running proxy
instead, with its live registrations.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sipsuite.testing.report import render

__all__ = ["build_parser", "main"]


def _pair(text: str, sep: str) -> tuple[str, str]:
    key, found, value = text.partition(sep)
    if not found or not key or not value:
        raise argparse.ArgumentTypeError(f"expected NAME{sep}VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sipsuite.testing.explain",
        description="Route one SIP message offline through the configured routing class and"
                    " print each decision with the hook and line that made it.")
    parser.add_argument("--config", required=True, metavar="FILE", help="the proxy's config file")
    parser.add_argument("message", metavar="MESSAGE", help="a file with the SIP message, or -")
    parser.add_argument("--source", metavar="TRANSPORT:HOST:PORT",
                        help="where the message comes from (default: its top Via)")
    parser.add_argument("--user", action="append", default=[], type=lambda t: _pair(t, ":"),
                        metavar="NAME:PASSWORD", help="a subscriber (repeatable)")
    parser.add_argument("--binding", action="append", default=[], type=lambda t: _pair(t, "="),
                        metavar="AOR=CONTACT", help="a registered contact (repeatable)")
    parser.add_argument("--dns", action="append", default=[], type=lambda t: _pair(t, "="),
                        metavar="NAME=TRANSPORT:HOST:PORT", help="a host name's address (repeatable)")
    parser.add_argument("--wire", action="store_true", help="print every message sent in full")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported here: --help needs neither Twisted nor the proxy.
    from sipsuite.config import load_config
    from sipsuite.sip.message import ParseError
    from sipsuite.startup import StartupError
    from sipsuite.testing.kit import OfflineProxy, via_source

    try:
        text = sys.stdin.buffer.read() if args.message == "-" else open(args.message, "rb").read()
    except OSError as exc:
        print(f"explain: {args.message}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    bindings: dict[str, list[str]] = {}
    for aor, contact in args.binding:
        bindings.setdefault(aor, []).append(contact)
    dns: dict[str, list[str]] = {}
    for name, target in args.dns:
        dns.setdefault(name, []).append(target)
    try:
        proxy = OfflineProxy(config=load_config(args.config), users=dict(args.user),
                             bindings=bindings, dns=dns)
        outcome = proxy.receive(text, source=args.source or via_source(text))
    except (StartupError, ParseError, ValueError) as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return 2
    print(render(outcome, wire=args.wire))
    return 0


if __name__ == "__main__":
    sys.exit(main())
