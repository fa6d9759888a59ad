"""The media relay of an offline proxy: the media module (MediaManager, the
one ``twistd sip-proxy`` runs) over a relay client that asks no relay.

Every offer gets a port of 203.0.113.1 (TEST-NET-3, RFC 5737: an address
that is nobody's), so a test sees the SDP rewritten the way a relay would
have it rewritten, and each command (U, L, D) is a step of the routing's
explanation.  Set up where the proxy would drive a relay: ``[features]
nat`` (``twistd sipsuite`` drives its own relay when ``[media] relays``
names none), and in route explain's sandbox when the live proxy has one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.defer import Deferred, fail, succeed

from sipsuite.proxy.media.client import RelayClient, RelayError
from sipsuite.proxy.media.manager import MediaManager
from sipsuite.proxy.services import MEDIA, NAT

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI

__all__ = ["ADDRESS", "OfflineMediaSpec", "OfflineRelay"]

#: Where the offline relay says media goes.
ADDRESS = "203.0.113.1"
#: The first port it hands out (each stream takes the next even one).
FIRST_PORT = 30000


class OfflineRelay:
    """An RTPProxy relay client that answers from here (see the module's
    docstring): ``sessions`` holds the calls it was offered and not told to
    delete, ``commands`` each (command, Call-ID) in order."""

    uri: ClassVar[str] = f"udp:{ADDRESS}:7722"

    def __init__(self, core: Any) -> None:
        self.core = core
        self.commands: list[tuple[str, str]] = []
        self.sessions: dict[str, dict[tuple[str, int | None], int]] = {}
        self.next_port = FIRST_PORT
        self.running = False
        self.forgotten: Callable[[str, str], None] | None = None

    def _record(self, detail: str) -> None:
        recorder = getattr(self.core, "recorder", None)
        if recorder is not None:
            recorder.record("media", detail + " (no relay asked)", depth=3)

    def _port(self, call_id: str, side: str, media_index: int | None) -> int:
        ports = self.sessions.setdefault(call_id, {})
        key = (side, media_index)
        if key not in ports:
            ports[key] = self.next_port
            self.next_port += 2
        return ports[key]

    def offer(self, call_id: str, from_tag: str, to_tag: str | None, address: str,
              port: int | str, *, modifiers: str = "",
              media_index: int | None = 1) -> Deferred[tuple[str | None, int]]:
        self.commands.append(("U", call_id))
        relay_port = self._port(call_id, "offer", media_index)
        self._record(f"offer (U) {address}:{port} -> {ADDRESS}:{relay_port}")
        return succeed((ADDRESS, relay_port))

    def answer(self, call_id: str, from_tag: str, to_tag: str | None, address: str,
               port: int | str, *, modifiers: str = "",
               media_index: int | None = 1) -> Deferred[tuple[str | None, int]]:
        self.commands.append(("L", call_id))
        if call_id not in self.sessions:
            self._record(f"answer (L) {address}:{port}: no session")
            return fail(RelayError(50, "no session", self.uri))
        relay_port = self._port(call_id, "answer", media_index)
        self._record(f"answer (L) {address}:{port} -> {ADDRESS}:{relay_port}")
        return succeed((ADDRESS, relay_port))

    def delete(self, call_id: str, from_tag: str, to_tag: str | None = None) -> Deferred[bool]:
        self.commands.append(("D", call_id))
        had = self.sessions.pop(call_id, None) is not None
        self._record("delete (D)" + ("" if had else ": no session"))
        if had and self.forgotten is not None:
            self.forgotten(RelayClient.key_of(call_id), "deleted")
        return succeed(had)

    def relay_of(self, call_id: str) -> str | None:
        return self.uri if call_id in self.sessions else None

    @property
    def calls_held(self) -> int:
        return len(self.sessions)

    def startService(self) -> None:
        self.running = True

    def stopService(self) -> None:
        self.running = False


class OfflineMediaSpec:
    """The media module over an OfflineRelay, where ``enabled`` says."""

    name = "media"
    requires = (NAT,)
    runtime_switch = False

    def __init__(self, enabled: Callable[[Config], bool] | None = None) -> None:
        self._enabled = enabled or (lambda config: bool(config.features.nat))

    def enabled(self, config: Config) -> bool:
        return self._enabled(config)

    def setup(self, core: CoreAPI, config: Config) -> MediaManager:
        module = MediaManager(core, OfflineRelay(core))  # type: ignore[arg-type]
        core.modules.provide(MEDIA, module)
        return module
