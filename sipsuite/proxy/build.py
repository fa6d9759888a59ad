"""The proxy core with its built-in modules set up: what ``twistd
sip-proxy`` runs (proxy/service.py adds the listeners and the management
interface) and what the routing test kit (sipsuite/testing/) routes
messages through, with no network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sipsuite.config import Config
from sipsuite.proxy.core.proxy import ProxyCore
from sipsuite.proxy.modules import (
    accounting,
    antiflood,
    auth,
    hep,
    media,
    nat,
    natping,
    recorder,
    scanners,
    shv,
    uac,
)
from sipsuite.proxy.modules.dispatcher import dispatcher
from sipsuite.proxy.modules.events import SPEC as EVENTS_SPEC
from sipsuite.proxy.net.siblings import Siblings
from sipsuite.proxy.registrar import outbound, registrar, subscribers, usrloc
from sipsuite.proxy.registrar.redis import module as redis
from sipsuite.proxy.services import WORKER_LINK, WorkerLinkService
from sipsuite.tlsctx import attach_tls

__all__ = ["BUILTIN_MODULES", "build_core"]

#: The feature modules converted to the module interface (issue 13), in
#: set-up order; the core's registry stops them in reverse.
BUILTIN_MODULES = (
    EVENTS_SPEC, recorder.SPEC, hep.SPEC, redis.SPEC, shv.SPEC, usrloc.SPEC, subscribers.SPEC,
    antiflood.SPEC, scanners.SPEC, uac.SPEC, outbound.SPEC, registrar.SPEC, auth.SPEC, nat.SPEC, natping.SPEC,
    media.SPEC, dispatcher.SPEC,
    accounting.SPEC,
)


def build_core(config: Config, reactor: Any, link: WorkerLinkService | None = None,
               channel: str = "", *,
               modules: Sequence[Any] = BUILTIN_MODULES, core_class: type[ProxyCore] = ProxyCore,
               **core_options: Any) -> ProxyCore:
    """The proxy core with the built-in modules ``config`` enables set up, as
    ``twistd sip-proxy`` runs it, but nothing bound and nothing started: what
    the routing test kit (sipsuite.testing) feeds messages to.  ``modules``,
    ``core_class`` and ``core_options`` (ProxyCore's resolver,
    transport_class) let it swap the stores, the clock and the network for
    ones of its own.  ``link``: a worker process's line to its supervisor
    (proxy/workerlink.py); ``channel``: the directory of the workers'
    sockets to each other (net/siblings.py)."""
    core = core_class(config, reactor, **core_options)
    if link is not None:
        # Before the modules: antiflood and the dispatcher look for it in setup.
        core.modules.provide(WORKER_LINK, link)
        if channel:
            core.transport.siblings = Siblings(core.transport, link.index, config.proxy.workers,
                                               channel, reactor)
    # Before the modules: the media module's tls: relays need the contexts.
    attach_tls(core)
    core.modules.setup_all(modules, config)
    return core
