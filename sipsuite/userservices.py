"""``[services] load``: the operator's own Twisted services in the proxy's process.

Each entry is ``package.module:factory``, found as ``[proxy] routing`` is
(beside the config file, then in the working directory, then on the Python
path).  The factory is called with the public handle (sipsuite.api.Handle)
and its ``[services.NAME]`` section checked against the schema it declares
(sipsuite.api.service_factory), and returns an IService.  The services
join the application's MultiService after the proxy (and the relay), so
Twisted starts them after and stops them before.

Whatever goes wrong (no such module, an import error, no such factory, a
factory that raises or returns no IService, an unknown or badly typed key,
a [services.NAME] table for no loaded service) is a StartupError: one line,
exit status 2, before twistd daemonises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application import service

from sipsuite.api import Handle, check_section
from sipsuite.log import get_logger
from sipsuite.proxy.routing.loader import describe_error, import_user_module
from sipsuite.startup import StartupError

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.ops.server import RpcRegistry

__all__ = ["LoadedService", "check_services", "load_factory", "load_services"]

log = get_logger("sipsuite.services")


class LoadedService:
    """One entry of ``[services] load`` once built (``sipsuite-ctl services``)."""

    def __init__(self, name: str, spec: str, service_: service.IService) -> None:
        self.name = name
        self.spec = spec
        self.service = service_

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "load": self.spec,
                "running": bool(self.service.running),
                "service": type(self.service).__name__}


def load_factory(spec: str, config_path: str | None) -> Any:
    """``package.module:factory`` -> the callable, or StartupError."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise StartupError(f"services.load: {spec!r}: expected 'package.module:factory'")
    module = import_user_module(module_name, config_path,
                                lambda text: StartupError(f"services.load: {text}"))
    found: Any = module
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise StartupError(f"services.load: no {attr} in {module_name}")
    if not callable(found):
        raise StartupError(f"services.load: {attr} in {module_name} is not callable")
    return found


def _name(spec: str, factory: Any) -> str:
    name = getattr(factory, "service_name", None)
    return name if isinstance(name, str) and name else spec.partition(":")[0].rpartition(".")[2]


def check_services(config: Config) -> list[tuple[str, str, Any, Any]]:
    """Import every ``[services] load`` factory and check its section:
    ``(name, spec, factory, settings)`` each, or StartupError.  The worker
    supervisor runs this alone (its workers build the services), so an
    import error or a wrong key is still one line at start."""
    where = config.path or "<defaults>"
    factories: list[tuple[str, str, Any]] = []
    for spec in config.services.load:
        factory = load_factory(spec, config.path)
        name = _name(spec, factory)
        if any(n == name for n, _, _ in factories):
            raise StartupError(f"{where}: services.load: two services named {name!r}"
                               " (set service_name on one factory)")
        factories.append((name, spec, factory))
    names = {n for n, _, _ in factories}
    for section in config.service_sections:
        if section not in names:
            known = ", ".join(sorted(names)) or "none loaded"
            raise StartupError(f"{where}: services.{section}: no service of services.load is"
                               f" named {section!r} ({known})")
    checked = []
    for name, spec, factory in factories:
        raw = config.service_sections.get(name, {})
        try:
            settings = check_section(getattr(factory, "service_schema", None), raw,
                                     f"services.{name}")
        except ValueError as e:
            raise StartupError(f"{where}: {e}") from None
        checked.append((name, spec, factory, settings))
    return checked


def load_services(parent: service.MultiService, handle: Handle, config: Config,
                  registry: RpcRegistry | None = None) -> list[LoadedService]:
    """Build every ``[services] load`` entry into ``parent`` (after what it
    holds already) and serve ``services`` on ``registry``."""
    loaded: list[LoadedService] = []
    for name, spec, factory, settings in check_services(config):
        try:
            built = factory(handle, settings)
        except Exception as exc:  # noqa: BLE001 - any error in user code
            raise StartupError(f"services.{name}: {spec} failed: {describe_error(exc)}") from None
        if not service.IService.providedBy(built):
            raise StartupError(f"services.{name}: {spec} returned {type(built).__name__},"
                               " not an IService (twisted.application.service)")
        if not built.name:
            built.setName(f"service:{name}")
        built.setServiceParent(parent)
        loaded.append(LoadedService(name, spec, built))
        log.info("service {n} loaded from {s}", n=name, s=spec)
    if registry is not None and "services" not in registry:
        registry.register("services", lambda: [s.info() for s in loaded],
                          "services(): the user services of [services] load and whether each runs")
    return loaded
