"""Digest authentication of requests, like Kamailio's auth_db module:
``auth_check`` / ``auth_challenge`` / ``consume_credentials``.

Nonces are stateless (an HMAC over their issue time with ``[auth] secret``),
so any proxy node sharing the secret accepts a nonce another one issued. The
nonce-count check against replays is kept per node, as Kamailio keeps it per
instance: a replay sent to another node is caught there only by the nonce's
short lifetime. With worker processes (``[proxy] workers > 1``, which needs
``[redis] url``) the node is several processes, so the check is in Redis
(registrar/redis/noncecount.py): a replay sent to another worker is refused
as one sent to the same process is. One worker keeps it in memory, without
a Redis round trip.

A module (issue 13): ``SPEC`` sets it up always, whatever ``[features]
auth`` says: that switch is the default script's (kamailio.cfg's
WITH_AUTH), and a routing class of one's own may call ``ctx.auth_check``
with it off.  It provides AUTH and reads ``[auth]`` at use; only the nonce
lifetime is handed over on ``cfg set``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.log import get_logger
from sipsuite.proxy.registrar.bindings import StoreUnavailable
from sipsuite.proxy.services import AUTH, REDIS, SUBSCRIBERS
from sipsuite.sip import digest

if TYPE_CHECKING:
    from sipsuite.config import AuthConfig, Config
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.registrar.location import SubscriberStore
    from sipsuite.proxy.registrar.redis.noncecount import RedisNonceCounter
    from sipsuite.proxy.routing.base import RequestContext

log = get_logger("sipsuite.proxy.auth")


class Authenticator:
    """The auth module, provided as AUTH: challenges a request (401/407 with
    a fresh nonce), checks its credentials against the subscriber store
    (``check``, the script's ``ctx.auth_check``) and strips them before
    forwarding (``consume``)."""

    name: ClassVar[str] = "auth"

    def __init__(self, core: CoreAPI, secret: str, nonce_expires: float) -> None:
        self.core = core
        # "" (a single node): random, so nonces die with the process.
        key = secret.encode() if secret else secrets.token_bytes(32)
        self.nonces = digest.NonceFactory(key, nonce_expires)
        self.counter = digest.NonceCounter()
        # Worker processes: the per-host check in Redis (AuthSpec.setup).
        self.shared_counter: RedisNonceCounter | None = None

    # Read at use: cfg set replaces the config whole.
    @property
    def cfg(self) -> AuthConfig:
        return self.core.config.auth

    @property
    def realm(self) -> str:
        return self.core.config.auth.realm

    @property
    def retry_after(self) -> str:
        return str(self.core.config.registrar.retry_after)

    @property
    def subscribers(self) -> SubscriberStore:
        return self.core.modules.require(SUBSCRIBERS)

    def clock(self) -> float:
        return self.core.wall()

    def _credentials(self, ctx: RequestContext, header: str) -> digest.Credentials | None:
        """Our realm's credentials among the request's (a request that crossed
        several proxies may carry credentials for each of them)."""
        for value in ctx.request.header_all(header):
            creds = digest.parse_credentials(value)
            if creds is not None and creds.realm == self.realm:
                return creds
        return None

    def challenge(self, ctx: RequestContext, proxy: bool, stale: bool = False) -> None:
        now = self.clock()
        nonce = self.nonces.make(now, self.realm)
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        headers = [
            (name, digest.challenge(self.realm, nonce, alg, stale=stale)) for alg in self.cfg.algorithms
        ]
        if proxy:
            ctx.reply(407, "Proxy Authentication Required", headers)
        else:
            ctx.reply(401, "Unauthorized", headers)

    async def check(self, ctx: RequestContext, user: str, *, proxy: bool) -> bool:
        """True when the request carries valid credentials of ``user``;
        otherwise it has been answered (401/407 challenge, 403, or 500 when
        the subscriber store is unavailable) and the caller stops."""
        header = "proxy-authorization" if proxy else "authorization"
        creds = self._credentials(ctx, header)
        if creds is None or creds.algorithm not in self.cfg.algorithms:
            self.challenge(ctx, proxy)
            return False
        now = self.clock()
        state = self.nonces.check(creds.nonce, now, self.realm)
        if state == digest.NonceState.INVALID:
            self.challenge(ctx, proxy)
            return False
        try:
            sub = await self.subscribers.get(creds.username)
        except StoreUnavailable as e:
            log.warn("auth of {u}: subscriber store unavailable: {e}", u=creds.username, e=e)
            ctx.reply(500, "Subscriber Store Unavailable", [("Retry-After", self.retry_after)])
            return False
        ha1 = sub.ha1.get(creds.algorithm) if sub is not None and sub.realm == self.realm else None
        if ha1 is None or not digest.verify(creds, ctx.request.method, ha1):
            log.info("{m} from {s}: wrong credentials for {u}", m=ctx.request.method, s=ctx.source,
                     u=creds.username)
            self.challenge(ctx, proxy)
            return False
        if state == digest.NonceState.STALE:
            # Right password, old nonce: the phone retries with a new one
            # without asking its user (RFC 2617 3.2.1 stale).
            self.challenge(ctx, proxy, stale=True)
            return False
        if creds.qop is None:
            accepted: bool | None = True
        elif self.shared_counter is None:
            accepted = self.counter.accept(creds.nonce, creds.nc or "", now + self.cfg.nonce_expires, now)
        else:
            accepted = await self._accept_shared_nc(self.shared_counter, ctx, creds, now)
        if accepted is None:
            return False  # answered 500
        if not accepted:
            log.info("{m} from {s}: replayed nonce-count for {u}", m=ctx.request.method,
                     s=ctx.source, u=creds.username)
            self.challenge(ctx, proxy)
            return False
        if creds.username != user:
            ctx.reply(403, "Forbidden auth ID")
            return False
        return True

    async def _accept_shared_nc(self, shared: RedisNonceCounter, ctx: RequestContext,
                                creds: digest.Credentials, now: float) -> bool | None:
        """The nonce-count check of worker processes, in Redis: whether nc is
        above every one accepted for the nonce (then it is the highest);
        None when Redis did not answer (the request has been answered 500,
        as for the subscriber store)."""
        # The key lives as long as the nonce does (its issue time is in it).
        expires = self.nonces.expires_at(creds.nonce, self.realm)
        try:
            return expires is not None and await shared.accept(creds.nonce, creds.nc or "", expires, now)
        except StoreUnavailable as e:
            log.warn("auth of {u}: nonce-count store unavailable: {e}", u=creds.username, e=e)
            ctx.reply(500, "Subscriber Store Unavailable", [("Retry-After", self.retry_after)])
            return None

    def consume(self, ctx: RequestContext, *, proxy: bool) -> None:
        """Remove our credentials before forwarding (consume_credentials):
        the next hop has no use for them and should not see them."""
        header = "proxy-authorization" if proxy else "authorization"
        req = ctx.request
        values = req.header_all(header)
        if not values:
            return
        keep = []
        for value in values:
            creds = digest.parse_credentials(value)
            if creds is None or creds.realm != self.realm:
                keep.append(value)
        req.remove_header(header)
        name = "Proxy-Authorization" if proxy else "Authorization"
        for value in keep:
            req.add_header(name, value, top=False)

    # -- the module's life --------------------------------------------------------
    def start(self) -> None:
        pass

    def reconfigure(self, old: Config, new: Config) -> None:
        # The factory took the lifetime when it was made; the rest is read at use.
        self.nonces.lifetime = new.auth.nonce_expires

    def stats(self) -> Mapping[str, object]:
        return {}

    def stop(self) -> None:
        pass


class AuthSpec:
    """Always set up (see the module's docstring)."""

    name = "auth"
    requires: tuple[ServiceKey[Any], ...] = (SUBSCRIBERS,)
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return True

    def setup(self, core: CoreAPI, config: Config) -> Authenticator:
        auth = Authenticator(core, config.auth.secret, config.auth.nonce_expires)
        redis = core.modules.get(REDIS)
        if config.proxy.workers > 1 and redis is not None:
            from sipsuite.proxy.registrar.redis.noncecount import RedisNonceCounter

            auth.shared_counter = RedisNonceCounter(redis, config.redis.prefix)
        core.modules.provide(AUTH, auth)
        return auth


SPEC = AuthSpec()
