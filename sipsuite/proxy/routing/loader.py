"""Loading ``[proxy] routing = "package.module:Class"``.

The module is looked for beside the config file, then in the working
directory, then on the usual ``sys.path``: ``mysite/routing.py`` next to
``sipsuite.toml`` loads without PYTHONPATH, as a script's own modules do.
Whatever goes wrong (no such module, no such class, a class that is not a
Routing, an exception while importing or building it) is a
:class:`RoutingError` whose text is one line naming the problem; at
start-up the twistd plugin prints it and exits with status 2.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from types import CodeType, ModuleType
from typing import TYPE_CHECKING, Any

from sipsuite.log import get_logger
from sipsuite.proxy.routing.base import Routing
from sipsuite.startup import StartupError

if TYPE_CHECKING:
    from sipsuite.proxy.core.proxy import ProxyCore

log = get_logger("sipsuite.proxy.routing")

__all__ = ["RoutingError", "attributes_used", "check_requirements", "describe_error", "load_routing",
           "make_routing", "routing_dirs"]


class RoutingError(StartupError):
    """The routing class cannot be used; ``str()`` is one line with the cause."""


def describe_error(exc: BaseException) -> str:
    """``ValueError: bad (at /etc/sipsuite/mysite/routing.py:12)``: an
    exception from user code on one line, with the line it came from."""
    text = str(exc).strip().splitlines()
    what = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    if isinstance(exc, SyntaxError):
        return what  # its text already names the file and line
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        what += f" (at {last.filename}:{last.lineno})"
    return what


def routing_dirs(config_path: str | None) -> list[str]:
    """Where a routing module is looked for before sys.path: the config
    file's directory, then the working directory (absolute, so a daemon's
    later chdir changes nothing)."""
    dirs = []
    if config_path:
        dirs.append(os.path.dirname(os.path.abspath(config_path)))
    cwd = os.getcwd()
    if cwd not in dirs:
        dirs.append(cwd)
    return dirs


def _search(dirs: list[str]) -> None:
    # In front, as Python puts a script's own directory: the operator's
    # module wins over an installed one of the same name.  They stay on
    # sys.path, so `sipsuite-ctl routing reload` finds the module again.
    for d in reversed(dirs):
        if d not in sys.path:
            sys.path.insert(0, d)


def _missing(module_name: str, exc: ModuleNotFoundError) -> bool:
    """Whether the routing module itself (or its package) is missing, as
    opposed to a module it imports."""
    name = exc.name or ""
    return bool(name) and (module_name == name or module_name.startswith(name + "."))


def import_user_module(module_name: str, config_path: str | None,
                       fail: Callable[[str], StartupError]) -> ModuleType:
    """The operator's module (a routing class's, a user service's), looked
    for beside the config, in the working directory, then on the Python
    path; what goes wrong is ``fail(one line)``."""
    dirs = routing_dirs(config_path)
    if module_name.partition(".")[0] != "sipsuite":
        # Only for the operator's own module: sipsuite's need no search, and
        # the working directory stays off sys.path for everything else.
        _search(dirs)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _missing(module_name, exc):
            raise fail(f"no module {module_name} (looked in {', '.join(dirs)}"
                       " and the Python path)") from None
        raise fail(f"cannot import {module_name}: {describe_error(exc)}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any error in user code
        raise fail(f"cannot import {module_name}: {describe_error(exc)}") from None


def load_routing(spec: str, config_path: str | None = None) -> type[Routing]:
    """``package.module:Class`` -> the class, or RoutingError."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise RoutingError(f"routing {spec!r}: expected 'package.module:Class'")
    found: Any = import_user_module(module_name, config_path, RoutingError)
    for part in class_name.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise RoutingError(f"no class {class_name} in {module_name}")
    if not isinstance(found, type) or not issubclass(found, Routing):
        raise RoutingError(f"{class_name} in {module_name} is not a Routing"
                           " (a subclass of sipsuite.proxy.routing.Routing)")
    return found


def _code_names(code: CodeType, seen: set[int]) -> set[str]:
    if id(code) in seen:
        return set()
    seen.add(id(code))
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _code_names(const, seen)
    return names


def attributes_used(cls: type) -> set[str]:
    """Every attribute name the methods of ``cls`` (and its bases) read or
    call, found in their compiled code: what a start-up check may ask of
    a routing class without running it."""
    names: set[str] = set()
    seen: set[int] = set()
    for klass in cls.__mro__:
        for value in vars(klass).values():
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            elif isinstance(value, property):
                for fn in (value.fget, value.fset, value.fdel):
                    code = getattr(fn, "__code__", None)
                    if code is not None:
                        names |= _code_names(code, seen)
                continue
            code = getattr(value, "__code__", None)
            if isinstance(code, CodeType):
                names |= _code_names(code, seen)
    return names


def check_requirements(cls: type, config: Any) -> None:
    """Refuse a routing class that calls what the config cannot serve:
    ``replace_from``/``replace_to`` without ``[uac] secret``."""
    used = attributes_used(cls) & {"replace_from", "replace_to"}
    if used and not config.uac.secret:
        raise RoutingError(f"uac.secret: expected a secret of 16 characters or more, required by"
                           f" {cls.__name__}, which calls {' and '.join(sorted(used))}")


def make_routing(core: ProxyCore) -> Routing:
    """The routing object ``[proxy] routing`` names, built for ``core``."""
    spec = core.config.proxy.routing
    cls = load_routing(spec, core.config.path)
    check_requirements(cls, core.config)
    try:
        routing = cls(core)
    except Exception as exc:  # noqa: BLE001 - any error in user code
        raise RoutingError(f"{spec} failed to start: {describe_error(exc)}") from None
    # Which file: with the config's directory and the working directory
    # searched first, the operator may not otherwise know.
    log.info("routing {s} from {f}", s=spec,
             f=getattr(sys.modules.get(cls.__module__), "__file__", None) or "(built in)")
    return routing
