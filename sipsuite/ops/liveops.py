"""Live operations on a running proxy: what kamcmd/kamctl change without a restart.

- the log level (``kamctl fifo debug [N]``): :func:`parse_debug_level`;
- run-time settings (``kamcmd cfg.get`` / ``cfg.set``): :func:`cfg_get`,
  :func:`cfg_set`, over an explicit allow-list of ``section.key`` names
  (:data:`RUNTIME_KEYS`); a value is validated by the same validator as the
  config file and the cross-key rules run too, then ``core.config`` is
  replaced and the components that copied a section get the new one
  (:func:`apply_config`);
- the routing class (``routing reload``, or SIGHUP): :func:`reload_routing`
  re-imports the module named by ``[proxy] routing`` and swaps
  ``core.routing``; transactions, dialogs and registrations live in the core
  and the stores, so nothing in flight is dropped;
- counters and uptime (``stats``, ``uptime``, ``/metrics``): see
  :mod:`sipsuite.ops.stats`.

:func:`register_liveops_methods` puts them on the management registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import signal
import sys
import tomllib
from typing import TYPE_CHECKING, Any

from twisted.application import service

from sipsuite import log as sipsuite_log
from sipsuite.config import Config, ConfigError
from sipsuite.config.loader import check_consistency
from sipsuite.config.values import Invalid, show_value
from sipsuite.log import get_logger
from sipsuite.proxy.routing.base import Routing
from sipsuite.proxy.routing.loader import RoutingError, check_requirements
from sipsuite.proxy.routing.loader import describe_error as _describe

if TYPE_CHECKING:
    from sipsuite.ops.server import RpcRegistry
    from sipsuite.proxy.core.proxy import ProxyCore

log = get_logger("sipsuite.proxy.liveops")

__all__ = [
    "KAMAILIO_DEBUG_LEVELS",
    "RUNTIME_KEYS",
    "LiveOpsService",
    "ReloadFailed",
    "SettingError",
    "apply_config",
    "cfg_get",
    "cfg_set",
    "parse_debug_level",
    "parse_value",
    "register_liveops_methods",
    "reload_routing",
    "readable_keys",
    "settable_keys",
]

# ---------------------------------------------------------------------------
# The log level.

#: Kamailio's ``debug`` numbers -> our level names (L_DBG 3 and above is
#: debug, L_INFO 2 info, L_NOTICE 1 has no twin here and is info, L_WARN 0
#: warn, L_ERR -1 and below error).
KAMAILIO_DEBUG_LEVELS = {4: "debug", 3: "debug", 2: "info", 1: "info", 0: "warn", -1: "error"}

_NAMES = {"debug": "debug", "info": "info", "notice": "info", "warn": "warn", "warning": "warn",
          "error": "error", "err": "error"}


def parse_debug_level(value: Any) -> str:
    """A level name or Kamailio number (int or text) -> 'debug'/'info'/'warn'/'error'."""
    if isinstance(value, bool):
        raise ValueError(f"bad log level {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NAMES:
            return _NAMES[text]
        if re.fullmatch(r"[+-]?[0-9]{1,6}", text):
            value = int(text)
    if isinstance(value, int):
        if value >= 3:
            return "debug"
        if value <= -1:
            return "error"
        return KAMAILIO_DEBUG_LEVELS[value]
    raise ValueError(f"bad log level {value!r}: expected debug, info, warn, error"
                     " or a Kamailio debug number (3 = debug, 2 = info, 1 = notice, 0 = warn,"
                     " -1 = error)")


def set_debug(core: ProxyCore, level: Any) -> str:
    """Set the level of every sipsuite logger; ``[log] level`` follows, so
    ``cfg get log.level`` says the same."""
    name = parse_debug_level(level)
    sipsuite_log.set_level(name)
    config = core.config
    if config.log.level != name:
        core.reconfigure(dataclasses.replace(config, log=dataclasses.replace(config.log, level=name)))
    log.info("log level set to {n}", n=name)
    return name


# ---------------------------------------------------------------------------
# Run-time settings.

#: The sections whose keys may change at run time, and which of their keys:
#: "*" is every key except start-up-only ones (see _STARTUP_WORDS). A name
#: whose section or key does not exist in this build is simply not offered.
#: Left out on purpose: listen addresses, advertised address, the routing
#: class (``routing reload`` swaps it), DNS and the TCP idle timeout the
#: transports and resolver took at start (the TCP limits and message timeout
#: are read at each connection, so they are settable), Redis, the relay,
#: media relays, the management interface, the auth realm (stored HA1s
#: depend on it) and secret.
RUNTIME_KEYS: dict[str, tuple[str, ...] | str] = {
    "proxy": ("domains", "trusted", "record_route", "server_header", "drop_user_agents",
              "tcp_message_timeout", "tcp_max_connections", "tcp_max_per_source",
              "tcp_write_queue_max"),
    "timers": "*",
    "features": "*",
    "auth": ("nonce_expires", "algorithms"),
    "registrar": "*",
    "nat": "*",
    "pstn": "*",
    "voicemail": "*",
    "antiflood": "*",
    # The prober reads these at each round (dispatcher.py); the sets change
    # with `dispatcher reload`, not here.
    "dispatcher": ("probe_interval", "probe_timeout", "probe_failures", "probe_successes",
                   "probe_mode", "probe_reply_codes", "probe_from", "call_timeout"),
    # The writer reopens when the file setting changes (accounting.py).
    "accounting": ("file", "max_duration", "max_calls"),
    "log": ("level",),
    # The media module reads them from the config at each offer.
    "media": ("max_streams", "max_sessions_per_source", "internal_networks"),
    # The flight recorder's store takes them over (a lower bound drops the
    # oldest calls at the next message); [trace] enabled is read at start.
    "trace": ("memory", "show_credentials"),
}

# A key named with one of these words holds something opened or bound once
# at start-up (a file, a socket, a certificate): never settable via "*".
_STARTUP_WORDS = frozenset({"listen", "file", "path", "dir", "url", "cert", "certificate", "key",
                            "ca", "secret", "socket", "address", "addresses"})


# Keys of "*" sections that are wired at start-up all the same: [features] nat
# decides whether the nat and media modules (and the relay client) exist at
# all, so switching it later would detect NAT in signalling but never relay
# media.
_STARTUP_ONLY = frozenset({"features.nat"})


class SettingError(ValueError):
    """A cfg get/set that cannot be done; ``str()`` is one line naming the key."""


def _section_fields() -> dict[str, tuple[str, type]]:
    """Section name -> (Config attribute, dataclass) for plain [section] tables."""
    out = {}
    for f in dataclasses.fields(Config):
        if "cls" in f.metadata:
            out[f.metadata["section"]] = (f.name, f.metadata["cls"])
    return out


def settable_keys() -> list[str]:
    """Every ``section.key`` cfg set accepts in this build, sorted."""
    names = []
    for section_name, (_, cls) in _section_fields().items():
        allowed = RUNTIME_KEYS.get(section_name)
        if allowed is None:
            continue
        for f in dataclasses.fields(cls):
            if allowed == "*":
                if _STARTUP_WORDS.intersection(f.name.split("_")):
                    continue
            elif f.name not in allowed:
                continue
            if f"{section_name}.{f.name}" in _STARTUP_ONLY:
                continue
            names.append(f"{section_name}.{f.name}")
    return sorted(names)


def readable_keys() -> list[str]:
    """Every ``section.key`` cfg get shows: the settable ones and those of
    the same sections read once at start-up ([features] nat), sorted."""
    return sorted([*settable_keys(), *_STARTUP_ONLY])


def _locate(name: Any) -> tuple[str, str, str, dataclasses.Field[Any]]:
    """'timers.t1' -> (section name, Config attribute, key, field)."""
    if not isinstance(name, str) or name.count(".") != 1:
        raise SettingError(f"bad setting name {name!r}: expected section.key, e.g. timers.t1")
    if name in _STARTUP_ONLY:
        raise SettingError(f"{name}: read at start-up only; change it in the config file"
                           " and restart")
    if name not in settable_keys():
        raise SettingError(f"{name}: not a run-time setting; see cfg get for those that are")
    section_name, key = name.split(".")
    attr, cls = _section_fields()[section_name]
    field_ = next(f for f in dataclasses.fields(cls) if f.name == key)
    return section_name, attr, key, field_


def plain(value: Any) -> Any:
    """A config value as JSON (and TOML) can write it: networks, specs and
    other objects as their text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, re.Pattern):
        return value.pattern
    return str(value)


def cfg_get(core: ProxyCore, name: str | None = None) -> dict[str, Any]:
    """The current values of the run-time settings: all of them, one
    (``timers.t1``) or one section's (``timers``), as Kamailio's cfg.get
    takes a group."""
    keys = readable_keys()
    if name is None:
        names = keys
    elif isinstance(name, str) and name and "." not in name:
        names = [k for k in keys if k.partition(".")[0] == name]
        if not names:
            raise SettingError(f"{name}: no run-time settings in such a section;"
                               " see cfg get for those there are")
    elif name in _STARTUP_ONLY:
        names = [name]
    else:
        _locate(name)  # a one-line error for a name that is not a setting
        names = [name]
    sections = _section_fields()
    config = core.config
    out = {}
    for n in names:
        section_name, key = n.split(".")
        out[n] = plain(getattr(getattr(config, sections[section_name][0]), key))
    return out


def parse_value(text: str) -> Any:
    """VALUE as an operator types it: TOML (``true``, ``5``, ``0.5``,
    ``"a b"``, ``["10.0.0.0/8"]``), else the text itself as a string, so
    ``cfg set pstn.gw_ip 192.0.2.1`` needs no quotes."""
    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    if set(doc) != {"v"}:
        return text
    return doc["v"]


def cfg_set(core: ProxyCore, name: str, value: Any) -> dict[str, Any]:
    """Validate and apply one setting; returns name, old and new value.

    A string ``value`` is the operator's text, parsed by :func:`parse_value`;
    any other JSON value is taken as it is. Nothing changes on an error."""
    section_name, attr, key, field_ = _locate(name)
    raw = parse_value(value) if isinstance(value, str) else value
    try:
        checked = field_.metadata["validator"](raw)
    except Invalid as e:
        raise SettingError(f"{name}{e.where}: expected {e.expected}, got {show_value(e.got)}") from None
    old_config = core.config
    old_section = getattr(old_config, attr)
    old = getattr(old_section, key)
    new_config = dataclasses.replace(
        old_config, **{attr: dataclasses.replace(old_section, **{key: checked})})
    try:
        check_consistency(new_config, "<cfg>")
    except ConfigError as e:
        raise SettingError(str(e).removeprefix("<cfg>: ")) from None
    try:
        apply_config(core, new_config)
    except Exception as e:  # noqa: BLE001 - a component refused it: put the old one back
        try:
            apply_config(core, old_config)
        except Exception:  # noqa: BLE001 - the config is the old one; say what did not restart
            log.failure("cfg set {n}: a component did not take the old value back", n=name)
        raise SettingError(f"{name}: not applied, the old value stays: {e}") from None
    log.info("cfg set {n}: {o} -> {v}", n=name, o=plain(old), v=plain(checked))
    return {"name": name, "old": plain(old), "value": plain(checked)}


def apply_config(core: ProxyCore, new: Config) -> None:
    """Make ``new`` the core's config: push the sections that features not yet
    converted to modules copied at start-up, then ``core.reconfigure`` (the
    core's own sections and every module's part)."""
    core.reconfigure(new)
    if new.log.level != sipsuite_log.get_level():
        sipsuite_log.set_level(new.log.level)


# ---------------------------------------------------------------------------
# Reloading the routing class.


class ReloadFailed(Exception):
    """A routing module that cannot be used; ``str()`` is one line with the cause."""


def _fresh_import(module_name: str) -> Any:
    """Execute the module's current source into a NEW module object.

    Unlike importlib.reload, a module that fails half-way leaves the loaded
    one untouched, and the source is compiled afresh (a .pyc can look
    current after an edit within the same second)."""
    old = sys.modules.get(module_name)
    if old is None:
        return importlib.import_module(module_name)
    spec = getattr(old, "__spec__", None)
    origin = getattr(spec, "origin", None)
    loader = getattr(spec, "loader", None)
    if (spec is None or not origin or not origin.endswith(".py") or loader is None
            or not hasattr(loader, "get_data")):
        return importlib.reload(old)  # no plain source file: the standard way
    source = loader.get_data(origin)
    code = compile(source, origin, "exec", dont_inherit=True)
    module = importlib.util.module_from_spec(spec)
    # In sys.modules while it runs, as an import does (dataclasses, pickle and
    # self-imports look it up there); the old one goes back on failure.
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules[module_name] = old
        raise
    parent, _, child = module_name.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def reload_routing(core: ProxyCore) -> dict[str, Any]:
    """Re-import ``[proxy] routing``'s module, build the class and swap it in.

    A request_route already running finishes with the instance that
    started it; every hook called after the swap (new requests, and the
    branch, reply and failure routes of calls in flight) gets the new one,
    so a new class must accept the ``ctx.vars`` its predecessor left on
    calls in flight. sipsuite's own modules are never
    re-imported (other modules hold their classes): for a class from
    sipsuite, only a new instance is made. Raises ReloadFailed, with the
    old routing left in place, on any error."""
    spec = core.config.proxy.routing
    module_name, _, class_name = spec.partition(":")
    own = module_name == "sipsuite" or module_name.startswith("sipsuite.")
    old_module = sys.modules.get(module_name)
    try:
        module = importlib.import_module(module_name) if own else _fresh_import(module_name)
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type) or not issubclass(cls, Routing):
            raise ReloadFailed(f"{spec!r} is not a subclass of sipsuite.proxy.routing.Routing")
        try:
            check_requirements(cls, core.config)
        except RoutingError as e:
            raise ReloadFailed(str(e)) from None
        routing = cls(core)
    except ReloadFailed as exc:
        _restore(module_name, old_module)
        log.error("routing reload refused, the old routing keeps running: {e}", e=exc)
        raise
    except Exception as exc:  # noqa: BLE001 - any error in user code refuses the reload
        _restore(module_name, old_module)
        reason = _describe(exc)
        log.error("routing reload refused, the old routing keeps running: {e}", e=reason)
        raise ReloadFailed(reason) from None
    previous = core.set_routing(routing)
    closer = getattr(previous, "close", None)
    if callable(closer):
        # A routing that started something (timers, probes) stops it here.
        try:
            closer()
        except Exception:  # noqa: BLE001
            log.failure("closing the previous routing failed")
    log.info("routing reloaded: {s}", s=spec)
    return {"routing": spec, "module_reloaded": not own}


def _restore(module_name: str, old_module: Any) -> None:
    if old_module is not None and sys.modules.get(module_name) is not old_module:
        sys.modules[module_name] = old_module


class LiveOpsService(service.Service):
    """SIGHUP reloads the routing (as ``sipsuite-ctl routing reload`` does)."""

    def __init__(self, core: ProxyCore, reactor: Any | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.core = core
        self.reactor: Any = reactor  # IReactorThreads too (callFromThread)
        self._previous: Any = None
        self._installed = False

    def startService(self) -> None:
        super().startService()
        if not hasattr(signal, "SIGHUP"):
            return
        try:
            self._previous = signal.signal(signal.SIGHUP, self._hup)
            self._installed = True
        except ValueError:  # not the main thread (an embedding application)
            log.warn("SIGHUP not handled: the proxy does not run in the main thread")

    def stopService(self) -> Any:
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)
            self._installed = False
        return super().stopService()

    def _hup(self, signum: int, frame: Any) -> None:
        # Never reload inside the signal handler: the reactor may be half-way
        # through a message. callFromThread is safe from a handler.
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        log.info("SIGHUP: reloading the routing")
        try:
            reload_routing(self.core)
        except ReloadFailed:
            pass  # logged by reload_routing


# ---------------------------------------------------------------------------
# The management methods.


def register_liveops_methods(registry: RpcRegistry, core: ProxyCore) -> None:
    """``debug``, ``cfg.get``, ``cfg.set``, ``cfg.list`` and ``routing.reload``."""
    from sipsuite.ops.errors import INVALID_PARAMS, REFUSED, RpcError

    def debug(level: Any = None) -> dict[str, Any]:
        if level is None:
            return {"level": sipsuite_log.get_level()}
        try:
            return {"level": set_debug(core, level)}
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None

    def get(name: str | None = None) -> dict[str, Any]:
        try:
            return cfg_get(core, name)
        except SettingError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None

    def set_(name: str, value: Any) -> dict[str, Any]:
        try:
            return cfg_set(core, name, value)
        except SettingError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None

    def reload() -> dict[str, Any]:
        try:
            return reload_routing(core)
        except ReloadFailed as exc:
            raise RpcError(REFUSED, f"routing reload refused: {exc}") from None

    registry.register("debug", debug,
                      "debug([level]): the log level, or set it: debug, info, warn, error or a"
                      " Kamailio number (3/4 = debug, 2 = info, 1 = notice = info, 0 = warn,"
                      " -1 = error)")
    registry.register("cfg.get", get,
                      "cfg.get([name]): run-time settings and their values: all, one"
                      " (section.key) or one section's; start-up-only ones of those"
                      " sections ([features] nat) too")
    registry.register("cfg.set", set_,
                      "cfg.set(name, value): change a run-time setting; a string value is"
                      " TOML (true, 5, \"text\"), a bare word a string")
    registry.register("cfg.list", settable_keys,
                      "cfg.list(): the names of the run-time settings")
    registry.register("routing.reload", reload,
                      "routing.reload(): re-import the [proxy] routing module and swap the"
                      " routing class; refused (old one kept) on any error")

