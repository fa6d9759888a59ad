"""Support code for the integration tests: real processes on loopback ports.

Nothing here imports sipsuite: the tests drive the proxy from the outside, the
way a phone or sipp does, so a bug in the package cannot hide itself in the
test harness.

The tests ``import procs`` / ``from procs import ...``; this module only gathers
the public names of the modules beside it, which do the work:

- ``common``: paths (``REPO``, ``SCENARIOS``, ``sipp_dir``); ports
  (``free_port``: free for UDP and TCP at once on 127.0.0.1 or ::1);
  ``bracket`` / ``hostport`` write an IPv6 literal the way SIP does ([::1]:5060);
- ``proxyproc``: the proxy: ``write_config`` (TOML), ``start_proxy`` ->
  ``ProxyProcess`` (own process group, waits for an OPTIONS answer, SIGTERM then
  SIGKILL; ``listen=`` for other sockets than udp/tcp 127.0.0.1, IPv6 included);
- ``sipmsg``: raw SIP: ``SipMessage`` (a small independent parser),
  ``build_request`` / ``build_response`` / ``build_invite``, the ACK builders,
  Via helpers;
- ``endpoints``: over UDP ``UdpEndpoint``; over TCP ``TcpEndpoint`` (a client
  connection) and ``TcpServerEndpoint`` (a listener), both framing the stream by
  Content-Length; ``RawCallee`` (a threaded callee on UDP or TCP, IPv4 or IPv6,
  whose behaviour each test sets); ``options_ping``, ``tcp_exchange``;
- ``sipp``: ``SippProcess`` / ``run_sipp`` (always bounded: ``-m``, ``-timeout``,
  an outer wall-clock limit, and killed after each test by
  ``kill_leftover_sipps``; ``wait_bound`` fails with what a sipp that died
  printed) -> ``SippResult`` with exit code, call counts from
  the ``-trace_stat`` csv and the error/screen logs for assertion messages;
  ``parse_sipp_messages`` reads a ``-trace_msg`` file back into messages.

Imports go one way: common <- sipmsg <- endpoints <- proxyproc, and
common, sipmsg <- sipp; procs imports them all and none of them imports procs.
"""

from __future__ import annotations

from common import (
    LOCALHOST,
    LOCALHOST6,
    REPO,
    SCENARIOS,
    Address,
    Transport,
    bracket,
    family,
    free_port,
    hostport,
    port_bound,
    sipp_dir,
    unique,
    wait_bound,
)
from endpoints import (
    CalleeBehaviour,
    RawCallee,
    Received,
    StreamFramer,
    TcpEndpoint,
    TcpServerEndpoint,
    UdpEndpoint,
    options_ping,
    statuses,
    tcp_exchange,
)
from proxyproc import (
    ProxyFactory,
    ProxyProcess,
    ProxyStartError,
    TomlValue,
    ctl_command,
    default_listen,
    management_url,
    proxy_command,
    proxy_starter,
    run_ctl,
    start_proxy,
    toml_dumps,
    write_config,
)
from sipmsg import (
    COMPACT,
    SDP_OFFER,
    SipMessage,
    build_ack_for,
    build_ack_for_2xx,
    build_invite,
    build_request,
    build_response,
    is_final,
    new_branch,
    new_tag,
    split_commas,
    uri_of,
    via_branch,
    via_sent_by,
    via_transport,
)
from sipp import (
    SippProcess,
    SippResult,
    TracedMessage,
    kill_leftover_sipps,
    parse_sipp_messages,
    read_sipp_stats,
    run_sipp,
    sipp_binary,
)

__all__ = [
    # common
    "LOCALHOST",
    "LOCALHOST6",
    "REPO",
    "SCENARIOS",
    "Address",
    "Transport",
    "bracket",
    "family",
    "free_port",
    "hostport",
    "port_bound",
    "sipp_dir",
    "unique",
    "wait_bound",
    # sipmsg
    "COMPACT",
    "SDP_OFFER",
    "SipMessage",
    "build_ack_for",
    "build_ack_for_2xx",
    "build_invite",
    "build_request",
    "build_response",
    "is_final",
    "new_branch",
    "new_tag",
    "split_commas",
    "uri_of",
    "via_branch",
    "via_sent_by",
    "via_transport",
    # endpoints
    "CalleeBehaviour",
    "RawCallee",
    "Received",
    "StreamFramer",
    "TcpEndpoint",
    "TcpServerEndpoint",
    "UdpEndpoint",
    "options_ping",
    "statuses",
    "tcp_exchange",
    # proxyproc
    "ProxyFactory",
    "proxy_starter",
    "ProxyProcess",
    "ProxyStartError",
    "TomlValue",
    "ctl_command",
    "default_listen",
    "management_url",
    "proxy_command",
    "run_ctl",
    "start_proxy",
    "toml_dumps",
    "write_config",
    # sipp
    "SippProcess",
    "SippResult",
    "TracedMessage",
    "kill_leftover_sipps",
    "parse_sipp_messages",
    "read_sipp_stats",
    "run_sipp",
    "sipp_binary",
]
