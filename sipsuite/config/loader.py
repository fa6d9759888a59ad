"""Loading the TOML configuration into the schema of :mod:`sipsuite.config.schema`.

:func:`load_config` reads one file, checks every table and key against the
schema (an unknown one is named, with the closest known name), runs each value
through its validator, applies the command line's overrides and checks the
keys that depend on one another.  Every problem is a :class:`ConfigError` whose
message is one line naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sipsuite.config.schema import Config, ConfigError
from sipsuite.config.specs import (
    CONTROL_LIST,
    LISTEN_LIST,
    media_address_list,
    port_range,
    relay_list,
    tcp_listen_or_off,
)
from sipsuite.config.values import (
    Invalid,
    int_range,
    redis_url,
    show_value,
)

#: The documented configuration file in a source checkout (and so in an
#: editable install): ``<repo>/conf/sipsuite.toml``.
PACKAGED_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "sipsuite.toml"

#: Where ``twistd ... --config`` looks first, relative to the working directory.
DEFAULT_CONFIG = Path("conf") / "sipsuite.toml"


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
    workers: str | int | None = None,
    relay_workers: str | int | None = None,
) -> Config:
    """Read and validate *path* (None: the built-in defaults).

    *listen*, when given, replaces ``proxy.listen`` (the ``--listen`` option),
    *redis* ``redis.url`` (``--redis``), *control* ``relay.control``
    (``--control``), *media_addresses* ``relay.media_addresses``
    (``--media-address``), *ports* ``relay.ports`` (``--ports``) and
    *relays* ``media.relays`` (``--relay``); *management* ``management.listen``
    and *relay_management* ``management.relay_listen`` (``--management`` of
    the proxy and of the relay); *workers* ``proxy.workers`` and *relay_workers* ``relay.workers``
    (``--workers`` of the proxy and of the relay).
    Raises ConfigError with a one-line message on any problem.
    """
    doc: dict[str, Any] = {}
    where = path if path is not None else "<defaults>"
    if path is not None:
        try:
            with open(path, "rb") as stream:
                doc = tomllib.load(stream)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None

    values = _build_values(doc, where)

    # Command-line options replace one key each, checked by the key's own
    # validator; in this order, which error a bad command line reports.
    options: tuple[tuple[str, str, str, Any, Callable[[Any], Any]], ...] = (
        ("--listen", "proxy", "listen", listen, LISTEN_LIST),
        ("--redis", "redis", "url", redis, redis_url),
        ("--control", "relay", "control", control, CONTROL_LIST),
        ("--media-address", "relay", "media_addresses", media_addresses, media_address_list),
        ("--ports", "relay", "ports", ports, port_range),
        ("--relay", "media", "relays", relays, relay_list),
        ("--management", "management", "listen", management, tcp_listen_or_off),
        ("--management", "management", "relay_listen", relay_management, tcp_listen_or_off),
        ("--workers", "proxy", "workers", workers, _workers_option),
        ("--workers", "relay", "workers", relay_workers, _workers_option),
    )
    overrides: dict[str, dict[str, Any]] = {}
    for option, section_name, key, raw_value, check in options:
        if raw_value is None:
            continue
        try:
            value = check(list(raw_value) if isinstance(raw_value, list | tuple) else raw_value)
        except Invalid as e:
            raise ConfigError(f"{option}: expected {e.expected}, got {show_value(e.got)}") from None
        overrides.setdefault(section_name, {})[key] = value
    for section_name, changes in overrides.items():
        values[section_name] = dataclasses.replace(values[section_name], **changes)

    config = Config(**values, path=path)
    check_consistency(config, where)
    return config


def config_from_dict(doc: Mapping[str, Any], where: str = "<python>") -> Config:
    """A Config from tables as a TOML file would hold them (``{"proxy":
    {"listen": [...]}}``), checked exactly as a file is: for a proxy built
    from Python (sipsuite.embed) rather than from a config file."""
    config = Config(**_build_values(doc, where), path=None)
    check_consistency(config, where)
    return config


def _build_values(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    _check_unknown_sections(doc, where)
    values: dict[str, Any] = {}
    for f in _sections():
        name = f.metadata["section"]
        raw = _lookup(doc, name, where)
        if "subtables" in f.metadata:
            values[f.metadata["subtables"]] = {k: v for k, v in raw.items() if isinstance(v, dict)}
            raw = {k: v for k, v in raw.items() if not isinstance(v, dict)}
        if "cls" in f.metadata:
            values[f.name] = _build_section(f.metadata["cls"], name, raw, where)
        else:
            values[f.name] = _build_table(f.metadata, name, raw, where)
    return values


def _workers_option(value: Any) -> int:
    """--workers N: the command line gives text, the workers keys' validator wants an int."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise Invalid("a whole number from 1 to 64", value) from None
    return int(int_range(1, 64)(number))


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
                    raise ConfigError(f"{where}: {dotted}: expected a table, got {show_value(value)}")
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
            raise ConfigError(f"{where}: {dotted}: expected a table [{dotted}], got {show_value(node)}")
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
        except Invalid as e:
            raise ConfigError(
                f"{where}: {name}.{key}{e.where}: expected {e.expected}, got {show_value(e.got)}"
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
        except Invalid as e:
            raise ConfigError(f"{where}: {dotted}: expected {e.expected} as the key") from None
        try:
            out[key] = meta["value"](value)
        except Invalid as e:
            raise ConfigError(
                f"{where}: {dotted}{e.where}: expected {e.expected}, got {show_value(e.got)}"
            ) from None
    return out


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace('"', '\\"') + '"'


def check_consistency(config: Config, where: str) -> None:
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
