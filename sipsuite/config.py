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
live in :mod:`sipsuite.configvalues` (plain values) and
:mod:`sipsuite.configspecs` (addresses).  These modules import nothing else
from sipsuite: every other layer may import them.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipsuite.configspecs import (
    _CONTROL_LIST,
    _LISTEN_LIST,
    _TLS_LISTEN_LIST,
    ControlSpec,
    ListenSpec,
    RelaySpec,
    _media_addresses,
    _relay_list,
    parse_control,
    parse_listen,
    port_range,
    tcp_listen_or_off,
)
from sipsuite.configvalues import (
    DispatcherEntry,
    Validator,
    _Invalid,
    _show,
    boolean,
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
    sip_uri,
    sip_user,
    text_needle,
)

__all__ = [
    "Config",
    "ConfigError",
    "ControlSpec",
    "ListenSpec",
    "LogConfig",
    "MediaConfig",
    "ProxyConfig",
    "RelayConfig",
    "RelaySpec",
    "TimersConfig",
    "default_config_path",
    "load_config",
    "parse_control",
    "parse_listen",
]

#: The documented configuration file in a source checkout (and so in an
#: editable install): ``<repo>/conf/sipsuite.toml``.
PACKAGED_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "sipsuite.toml"

#: Where ``twistd ... --config`` looks first, relative to the working directory.
DEFAULT_CONFIG = Path("conf") / "sipsuite.toml"


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` is one line naming the key."""


# ---------------------------------------------------------------------------
# The schema.


def setting(default: Any, validator: Validator) -> Any:
    """A key of a section: *default* is written as in TOML and goes through
    *validator* like any value read from a file."""
    return field(metadata={"default": default, "validator": validator})


def section(name: str, cls: type) -> Any:
    """A [name] table whose keys are the fields of dataclass *cls*."""
    return field(metadata={"section": name, "cls": cls})


def table(name: str, key: Callable[[str], str], value: Validator) -> Any:
    """A [name] table of free keys (each through *key*) and their values."""
    return field(metadata={"section": name, "key": key, "value": value})


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    listen: list[ListenSpec] = setting(["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"], _LISTEN_LIST)
    domains: list[str] = setting([], list_of(domain, unique=True))
    advertise: str = setting("", host_port)
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = setting([], list_of(ip_network))
    routing: str = setting("sipsuite.proxy.routing:DefaultRouting", import_spec)
    record_route: bool = setting(True, boolean)
    tcp_idle_timeout: float = setting(600.0, positive_float)
    tcp_message_timeout: float = setting(20.0, positive_float)
    tcp_max_connections: int = setting(2048, int_range(1, 1_000_000))
    tcp_max_per_source: int = setting(64, int_range(1, 1_000_000))
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
class RedisConfig:
    url: str = setting("", redis_url)
    timeout: float = setting(1.0, positive_float)
    prefix: str = setting("sipsuite:", header_value)
    subscriber_cache: int = setting(100_000, int_range(0, 100_000_000))


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    control: list[ControlSpec] = setting(["udp:127.0.0.1:7722"], _CONTROL_LIST)
    media_addresses: list[str] = setting(["0.0.0.0"], _media_addresses)
    ports: tuple[int, int] = setting("35000-65000", port_range)
    learn_window: float = setting(3.0, positive_float)
    media_timeout: float = setting(60.0, positive_float)
    hold_timeout: float = setting(3600.0, positive_float)
    drain_time: float = setting(30.0, non_negative_float)
    max_sessions_per_call: int = setting(32, int_range(1, 100_000))


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConfig:
    """How the proxy anchors media on relays (with ``[features] nat``)."""

    relay: str = setting("nat", one_of("nat", "always"))
    relays: list[RelaySpec] = setting([], _relay_list)
    command_timeout: float = setting(1.0, positive_float)
    disable_time: float = setting(60.0, positive_float)
    max_streams: int = setting(8, int_range(1, 1000))
    max_sessions_per_source: int = setting(200, int_range(0, 10_000_000))


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagementConfig:
    listen: str = setting("tcp:127.0.0.1:7060", tcp_listen_or_off)
    # twistd rtp-relay's own: a port of its own, so a proxy and a relay run
    # side by side on their defaults.
    relay_listen: str = setting("tcp:127.0.0.1:7061", tcp_listen_or_off)


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """Certificates for tls: listeners, outgoing TLS and the relay control channel."""

    certificate: str = setting("", pem_path)
    private_key: str = setting("", pem_path)
    ca_list: str = setting("", pem_path)
    verify_server: bool = setting(True, boolean)
    require_client_cert: list[ListenSpec] = setting([], _TLS_LISTEN_LIST)


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
    redis: RedisConfig = section("redis", RedisConfig)
    relay: RelayConfig = section("relay", RelayConfig)
    media: MediaConfig = section("media", MediaConfig)
    dispatcher: DispatcherConfig = section("dispatcher", DispatcherConfig)
    management: ManagementConfig = section("management", ManagementConfig)
    tls: TLSConfig = section("tls", TLSConfig)
    log: LogConfig = section("log", LogConfig)
    path: str | None = None  # the file it came from; None for the built-in defaults


# ---------------------------------------------------------------------------
# Loading.


def default_config_path() -> str | None:
    """The file ``--config`` means when not given.

    ``conf/sipsuite.toml`` in the working directory if there is one, else the
    documented defaults file of the source checkout this package runs from
    (an editable install), else None: the built-in defaults, which are the
    same values.
    """
    if DEFAULT_CONFIG.is_file():
        return str(DEFAULT_CONFIG)
    if PACKAGED_CONFIG.is_file():
        return str(PACKAGED_CONFIG)
    return None


def _sections() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Config) if "section" in f.metadata]


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of " + ", ".join(known)


def load_config(
    path: str | None,
    *,
    listen: list[str] | None = None,
    redis: str | None = None,
    control: list[str] | None = None,
    media_addresses: list[str] | None = None,
    ports: str | None = None,
    relays: list[str] | None = None,
    management: str | None = None,
    relay_management: str | None = None,
) -> Config:
    """Read and validate *path* (None: the built-in defaults).

    *listen*, when given, replaces ``proxy.listen`` (the ``--listen`` option),
    *redis* ``redis.url`` (``--redis``), *control* ``relay.control``
    (``--control``), *media_addresses* ``relay.media_addresses``
    (``--media-address``), *ports* ``relay.ports`` (``--ports``) and
    *relays* ``media.relays`` (``--relay``); *management* ``management.listen``
    and *relay_management* ``management.relay_listen`` (``--management`` of
    the proxy and of the relay).
    Raises ConfigError with a one-line message on any problem.
    """
    doc: dict[str, Any] = {}
    where = path if path is not None else "<defaults>"
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None

    _check_unknown_sections(doc, where)
    values: dict[str, Any] = {}
    for f in _sections():
        name = f.metadata["section"]
        raw = _lookup(doc, name, where)
        if "cls" in f.metadata:
            values[f.name] = _build_section(f.metadata["cls"], name, raw, where)
        else:
            values[f.name] = _build_table(f.metadata, name, raw, where)

    if listen is not None:
        try:
            specs = _LISTEN_LIST(list(listen))
        except _Invalid as e:
            raise ConfigError(f"--listen: expected {e.expected}, got {_show(e.got)}") from None
        values["proxy"] = dataclasses.replace(values["proxy"], listen=specs)

    if redis is not None:
        try:
            url = redis_url(redis)
        except _Invalid as e:
            raise ConfigError(f"--redis: expected {e.expected}, got {_show(e.got)}") from None
        values["redis"] = dataclasses.replace(values["redis"], url=url)

    relay_overrides = {}
    for option, key, raw_value, check in (
        ("--control", "control", control, _CONTROL_LIST),
        ("--media-address", "media_addresses", media_addresses, _media_addresses),
        ("--ports", "ports", ports, port_range),
    ):
        if raw_value is None:
            continue
        try:
            relay_overrides[key] = check(list(raw_value) if isinstance(raw_value, list)
                                         else raw_value)
        except _Invalid as e:
            raise ConfigError(f"{option}: expected {e.expected}, got {_show(e.got)}") from None
    if relay_overrides:
        values["relay"] = dataclasses.replace(values["relay"], **relay_overrides)

    if relays is not None:
        try:
            specs_ = _relay_list(list(relays))
        except _Invalid as e:
            raise ConfigError(f"--relay: expected {e.expected}, got {_show(e.got)}") from None
        values["media"] = dataclasses.replace(values["media"], relays=specs_)

    management_overrides = {}
    for key, raw_value in (("listen", management), ("relay_listen", relay_management)):
        if raw_value is None:
            continue
        try:
            management_overrides[key] = tcp_listen_or_off(raw_value)
        except _Invalid as e:
            raise ConfigError(f"--management: expected {e.expected}, got {_show(e.got)}") from None
    if management_overrides:
        values["management"] = dataclasses.replace(values["management"], **management_overrides)

    config = Config(**values, path=path)
    _check_consistency(config, where)
    return config


def _check_unknown_sections(doc: Mapping[str, Any], where: str) -> None:
    names = [f.metadata["section"] for f in _sections()]
    prefixes = {n.rsplit(".", i)[0] for n in names for i in range(1, n.count(".") + 1)}

    def walk(table_: Mapping[str, Any], prefix: str) -> None:
        for key, value in table_.items():
            dotted = prefix + key
            if dotted in names:
                continue
            if dotted in prefixes:
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: {dotted}: expected a table, got {_show(value)}")
                walk(value, dotted + ".")
                continue
            known = sorted(n for n in [*names, *prefixes] if n.startswith(prefix))
            raise ConfigError(f"{where}: {dotted}: unknown section; {_suggest(dotted, known)}")

    walk(doc, "")


def _lookup(doc: Mapping[str, Any], dotted: str, where: str) -> Mapping[str, Any]:
    node: Any = doc
    for part in dotted.split("."):
        node = node.get(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {dotted}: expected a table [{dotted}], got {_show(node)}")
    return node


def _build_section(cls: type, name: str, raw: Mapping[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{where}: {name}.{key}: unknown key; {_suggest(key, list(fields))}")
    values = {}
    for key, f in fields.items():
        value = raw.get(key, f.metadata["default"])
        try:
            values[key] = f.metadata["validator"](value)
        except _Invalid as e:
            raise ConfigError(
                f"{where}: {name}.{key}{e.where}: expected {e.expected}, got {_show(e.got)}"
            ) from None
    return cls(**values)


def _build_table(
    meta: Mapping[str, Any], name: str, raw: Mapping[str, Any], where: str
) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        dotted = f"{name}.{_toml_key(key)}"
        try:
            meta["key"](key)
        except _Invalid as e:
            raise ConfigError(f"{where}: {dotted}: expected {e.expected} as the key") from None
        try:
            out[key] = meta["value"](value)
        except _Invalid as e:
            raise ConfigError(
                f"{where}: {dotted}{e.where}: expected {e.expected}, got {_show(e.got)}"
            ) from None
    return out


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace('"', '\\"') + '"'


def _check_consistency(config: Config, where: str) -> None:
    """Rules across keys."""
    t = config.timers
    if t.t2 < t.t1:
        raise ConfigError(
            f"{where}: timers.t2: expected a value not below timers.t1 ({t.t1:g}), got {t.t2:g}"
        )
    r = config.registrar
    if r.max_expires < r.min_expires:
        raise ConfigError(
            f"{where}: registrar.max_expires: expected a value not below registrar.min_expires"
            f" ({r.min_expires}), got {r.max_expires}"
        )
    if not r.min_expires <= r.default_expires <= r.max_expires:
        raise ConfigError(
            f"{where}: registrar.default_expires: expected a value from registrar.min_expires"
            f" ({r.min_expires}) to registrar.max_expires ({r.max_expires}), got {r.default_expires}"
        )
    relay = config.relay
    if relay.hold_timeout < relay.media_timeout:
        raise ConfigError(
            f"{where}: relay.hold_timeout: expected a value not below relay.media_timeout"
            f" ({relay.media_timeout:g}), got {relay.hold_timeout:g}"
        )
    _check_tls(config, where)


def _check_tls(config: Config, where: str) -> None:
    """[tls] certificate and private_key are needed once anything speaks TLS."""
    tls = config.tls
    users = [str(s) for s in config.proxy.listen if s.transport == "tls"]
    users += [str(s) for s in config.relay.control if s.transport == "tls"]
    users += [r.uri for r in config.media.relays if r.uri.lower().startswith("tls:")]
    for key in ("certificate", "private_key"):
        if users and not getattr(tls, key):
            raise ConfigError(f"{where}: tls.{key}: expected a PEM file path, required by"
                              f" {users[0]}, got ''")
    listening = {str(s) for s in config.proxy.listen}
    for i, spec in enumerate(tls.require_client_cert):
        if str(spec) not in listening:
            raise ConfigError(f"{where}: tls.require_client_cert[{i}]: expected a tls listener"
                              f" of proxy.listen, got {str(spec)!r}")
    # Whoever checks client certificates needs the CA they must chain to:
    # with none, the system's public CAs would do, and any certificate
    # bought anywhere would pass a mutual-TLS listener or drive a relay.
    mutual = [str(s) for s in tls.require_client_cert]
    mutual += [str(s) for s in config.relay.control if s.transport == "tls"]
    if mutual and not tls.ca_list:
        raise ConfigError(f"{where}: tls.ca_list: expected the CA file client certificates must"
                          f" chain to, required by {mutual[0]}, got ''")
