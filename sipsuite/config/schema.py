"""The one loader and validator for sipsuite's TOML configuration.

Every key lives in the schema below: each section is a frozen dataclass whose
fields carry their default (written as it would be in TOML) and a validator
that turns the TOML value into what the code uses.  ``conf/sipsuite.toml``
documents the same keys with the same defaults, and a test checks that the
two agree.

A wrong key or value stops start-up with a :class:`ConfigError` whose message
is one line naming the file, the dotted key and what was expected::

    conf/x.toml: proxy.listen[1]: expected 'udp:HOST:PORT' or 'tcp:HOST:PORT', got 'foo'

Adding a section is a dataclass with one :func:`setting` per key, plus one
field in :class:`Config` naming it with :func:`section`; the validators
live in :mod:`sipsuite.config.values` (plain values) and
:mod:`sipsuite.config.specs` (addresses).  These modules import nothing else
from sipsuite: every other layer may import them.  Loading a file is
:mod:`sipsuite.config.loader`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sipsuite.config.specs import (
    CONTROL_LIST,
    LISTEN_LIST,
    TLS_LISTEN_LIST,
    ControlSpec,
    ListenSpec,
    RelaySpec,
    hep_target,
    media_address_list,
    port_range,
    relay_list,
    tcp_listen_or_off,
)
from sipsuite.config.values import (
    DispatcherEntry,
    Validator,
    bearer_token,
    boolean,
    byte_size,
    digest_algorithm,
    dispatcher_sets,
    dns_server,
    domain,
    file_path,
    header_value,
    host_or_empty,
    host_port,
    import_spec,
    int_range,
    ip_network,
    list_file_path,
    list_of,
    non_negative_float,
    one_of,
    pem_path,
    positive_float,
    probe_reply_code,
    realm,
    redis_url,
    regex,
    secret_key,
    sip_uri,
    sip_user,
    string,
    text_needle,
)


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` is one line naming the key."""


# ---------------------------------------------------------------------------
# The schema.


def setting(default: Any, validator: Validator) -> Any:
    """A key of a section: *default* is written as in TOML and goes through
    *validator* like any value read from a file."""
    return field(metadata={"default": default, "validator": validator})


def section(name: str, cls: type, subtables: str | None = None) -> Any:
    """A [name] table whose keys are the fields of dataclass *cls*; with
    *subtables*, its [name.X] tables go, unchecked, into that field of
    Config (their owner checks them: [services.NAME], its service's)."""
    meta: dict[str, Any] = {"section": name, "cls": cls}
    if subtables:
        meta["subtables"] = subtables
    return field(metadata=meta)


def table(name: str, key: Callable[[str], str], value: Validator) -> Any:
    """A [name] table of free keys (each through *key*) and their values."""
    return field(metadata={"section": name, "key": key, "value": value})


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    listen: list[ListenSpec] = setting(["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"], LISTEN_LIST)
    domains: list[str] = setting([], list_of(domain, unique=True))
    advertise: str = setting("", host_port)
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = setting([], list_of(ip_network))
    routing: str = setting("sipsuite.proxy.routing:DefaultRouting", import_spec)
    record_route: bool = setting(True, boolean)
    tcp_idle_timeout: float = setting(600.0, positive_float)
    tcp_message_timeout: float = setting(20.0, positive_float)
    tcp_max_connections: int = setting(2048, int_range(1, 1_000_000))
    tcp_max_per_source: int = setting(64, int_range(1, 1_000_000))
    tcp_write_queue_max: int = setting(262144, int_range(4096, 1 << 30))
    workers: int = setting(1, int_range(1, 64))
    dns_timeout: float = setting(3.0, positive_float)
    dns_servers: list[tuple[str, int]] = setting([], list_of(dns_server))
    server_header: str = setting("sipsuite", header_value)
    drop_user_agents: list[str] = setting(
        ["friendly-scanner", "sipcli", "sipvicious", "VaxSIPUserAgent", "pplsip"],
        list_of(text_needle, unique=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class TimersConfig:
    t1: float = setting(0.5, positive_float)
    t2: float = setting(4.0, positive_float)
    t4: float = setting(5.0, positive_float)
    timer_c: float = setting(180.0, positive_float)


@dataclass(frozen=True, slots=True, kw_only=True)
class FeaturesConfig:
    auth: bool = setting(False, boolean)
    nat: bool = setting(False, boolean)
    debug: bool = setting(False, boolean)
    ipauth: bool = setting(False, boolean)
    natsipping: bool = setting(False, boolean)
    pstn: bool = setting(False, boolean)
    voicemail: bool = setting(False, boolean)
    block3xx: bool = setting(False, boolean)
    block401407: bool = setting(False, boolean)
    antiflood: bool = setting(False, boolean)
    accounting: bool = setting(False, boolean)


@dataclass(frozen=True, slots=True, kw_only=True)
class AntifloodConfig:
    """kamailio.cfg's pike + ipban htable (with ``[features] antiflood``)."""

    requests: int = setting(16, int_range(1, 1_000_000))
    window: float = setting(2.0, positive_float)
    ban_time: float = setting(300.0, positive_float)
    max_sources: int = setting(100_000, int_range(100, 10_000_000))


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountingConfig:
    """Kamailio's acc module (with ``[features] accounting``)."""

    file: str = setting("/var/log/sipsuite/accounting.jsonl", file_path)
    max_duration: float = setting(43200.0, positive_float)
    max_calls: int = setting(100_000, int_range(1, 10_000_000))


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    realm: str = setting("sipsuite", realm)
    secret: str = setting("", header_value)
    nonce_expires: float = setting(30.0, positive_float)
    algorithms: list[str] = setting(["MD5"], list_of(digest_algorithm, non_empty=True, unique=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrarConfig:
    default_expires: int = setting(3600, int_range(1, 2**31 - 1))
    min_expires: int = setting(60, int_range(0, 2**31 - 1))
    max_expires: int = setting(7200, int_range(1, 2**31 - 1))
    max_contacts: int = setting(0, int_range(0, 10000))
    max_contacts_policy: str = setting("reject", one_of("reject", "drop_oldest"))
    max_contacts_per_request: int = setting(32, int_range(1, 1000))
    serial_forking: bool = setting(False, boolean)
    retry_after: int = setting(5, int_range(1, 3600))
    outbound: bool = setting(True, boolean)


@dataclass(frozen=True, slots=True, kw_only=True)
class NatConfig:
    keepalive_interval: float = setting(20.0, non_negative_float)
    keepalive_timeout: float = setting(120.0, positive_float)


@dataclass(frozen=True, slots=True, kw_only=True)
class PstnConfig:
    """kamailio.cfg's pstn.* (with ``[features] pstn``)."""

    gw_ip: str = setting("", host_or_empty)
    gw_port: int = setting(5060, int_range(1, 65535))
    pattern: str = setting(r"^(\+|00)[1-9][0-9]{3,20}$", regex)


@dataclass(frozen=True, slots=True, kw_only=True)
class VoicemailConfig:
    """kamailio.cfg's voicemail.* (with ``[features] voicemail``)."""

    srv_ip: str = setting("", host_or_empty)
    srv_port: int = setting(5060, int_range(1, 65535))


@dataclass(frozen=True, slots=True, kw_only=True)
class UacConfig:
    """Kamailio's uac module: the key of ctx.replace_from's restore token."""

    secret: str = setting("", secret_key)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    url: str = setting("", redis_url)
    timeout: float = setting(1.0, positive_float)
    prefix: str = setting("sipsuite:", header_value)
    subscriber_cache: int = setting(100_000, int_range(0, 100_000_000))


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    control: list[ControlSpec] = setting(["udp:127.0.0.1:7722"], CONTROL_LIST)
    media_addresses: list[str] = setting(["0.0.0.0"], media_address_list)
    ports: tuple[int, int] = setting("35000-65000", port_range)
    learn_window: float = setting(3.0, positive_float)
    media_timeout: float = setting(60.0, positive_float)
    hold_timeout: float = setting(3600.0, positive_float)
    drain_time: float = setting(30.0, non_negative_float)
    max_sessions_per_call: int = setting(32, int_range(1, 100_000))
    kernel: str = setting("auto", one_of("auto", "on", "off"))
    workers: int = setting(1, int_range(1, 64))


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConfig:
    """How the proxy anchors media on relays (with ``[features] nat``)."""

    relay: str = setting("nat", one_of("nat", "always"))
    relays: list[RelaySpec] = setting([], relay_list)
    command_timeout: float = setting(1.0, positive_float)
    disable_time: float = setting(60.0, positive_float)
    max_streams: int = setting(8, int_range(1, 1000))
    max_sessions_per_source: int = setting(200, int_range(0, 10_000_000))
    # A bridging relay's internal side (sipsuite.proxy.media.bridge).
    internal_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = setting(
        [], list_of(ip_network))


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagementConfig:
    listen: str = setting("tcp:127.0.0.1:7060", tcp_listen_or_off)
    # twistd rtp-relay's own: a port of its own, so a proxy and a relay run
    # side by side on their defaults.
    relay_listen: str = setting("tcp:127.0.0.1:7061", tcp_listen_or_off)
    # Bearer token every request must carry; required for a non-loopback listener.
    token: str = setting("", bearer_token)


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """Certificates for tls: listeners, outgoing TLS and the relay control channel."""

    certificate: str = setting("", pem_path)
    private_key: str = setting("", pem_path)
    ca_list: str = setting("", pem_path)
    verify_server: bool = setting(True, boolean)
    require_client_cert: list[ListenSpec] = setting([], TLS_LISTEN_LIST)


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatcherConfig:
    """Destination sets and their OPTIONS probing (Kamailio's dispatcher module)."""

    list_file: str = setting("", list_file_path)
    sets: dict[int, list[DispatcherEntry]] = setting({}, dispatcher_sets)
    probe_interval: float = setting(10.0, non_negative_float)
    probe_timeout: float = setting(5.0, positive_float)
    probe_failures: int = setting(1, int_range(1, 1000))
    probe_successes: int = setting(1, int_range(1, 1000))
    probe_mode: str = setting("all", one_of("all", "inactive"))
    probe_reply_codes: list[int] = setting([], list_of(probe_reply_code, unique=True))
    probe_from: str = setting("sip:dispatcher@localhost", sip_uri)
    call_timeout: float = setting(7200.0, positive_float)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicesConfig:
    """User services (sipsuite.api): each [services.NAME] table is checked
    by its service's own schema when the service is built."""

    load: list[str] = setting([], list_of(import_spec, unique=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceConfig:
    """The flight recorder (sipsuite/trace/, proxy/modules/recorder.py)."""

    enabled: bool = setting(True, boolean)
    memory: int = setting("64MB", byte_size)
    show_credentials: bool = setting(False, boolean)
    hep: str = setting("", hep_target)
    hep_capture_id: int = setting(0, int_range(0, 0xFFFFFFFF))
    hep_password: str = setting("", string)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str = setting("info", one_of("debug", "info", "warn", "error"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A validated configuration; build it with :func:`load_config`."""

    proxy: ProxyConfig = section("proxy", ProxyConfig)
    timers: TimersConfig = section("timers", TimersConfig)
    location_static: dict[str, list[str]] = table(
        "location.static", sip_user, list_of(sip_uri, non_empty=True)
    )
    features: FeaturesConfig = section("features", FeaturesConfig)
    antiflood: AntifloodConfig = section("antiflood", AntifloodConfig)
    accounting: AccountingConfig = section("accounting", AccountingConfig)
    auth: AuthConfig = section("auth", AuthConfig)
    registrar: RegistrarConfig = section("registrar", RegistrarConfig)
    nat: NatConfig = section("nat", NatConfig)
    pstn: PstnConfig = section("pstn", PstnConfig)
    voicemail: VoicemailConfig = section("voicemail", VoicemailConfig)
    uac: UacConfig = section("uac", UacConfig)
    redis: RedisConfig = section("redis", RedisConfig)
    relay: RelayConfig = section("relay", RelayConfig)
    media: MediaConfig = section("media", MediaConfig)
    dispatcher: DispatcherConfig = section("dispatcher", DispatcherConfig)
    management: ManagementConfig = section("management", ManagementConfig)
    tls: TLSConfig = section("tls", TLSConfig)
    trace: TraceConfig = section("trace", TraceConfig)
    log: LogConfig = section("log", LogConfig)
    services: ServicesConfig = section("services", ServicesConfig, subtables="service_sections")
    # [services.NAME] tables as written: NAME -> its raw TOML table.
    service_sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: str | None = None  # the file it came from; None for the built-in defaults
