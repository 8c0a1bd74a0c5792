"""The local apps a node agent serves: one outbound listener and one OutboundProxy per app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from reference.config_sync import Snapshot
from reference.controlplane.names import check_service_name
from reference.drain import DrainController
from reference.http_listener import ProxyListener, drain_aware, drain_aware_fast
from reference.metrics import Registry
from reference.nodeagent.configs import ServiceConfigs
from reference.nodeagent.registrations import Registration, RegistrationStore
from reference.proxy import OutboundProxy
from reference.proxy_config import ProxyConfig, parse_proxy_config

__all__ = [
    "AppConflict",
    "AppRegistry",
    "InvalidApp",
    "LocalApp",
    "RegistryClosed",
    "TooManyApps",
    "UnknownApp",
]

log = logging.getLogger(__name__)

MAX_APP_ID_LENGTH = 253  # a Kubernetes pod name fits

# Each app costs a listening socket and its connections; a bound keeps one misbehaving client
# on the node from exhausting the agent's file descriptors and with them every other app.
DEFAULT_MAX_APPS = 256

# How long Deregister lets requests already on an app's listener finish before it cuts them.
DEREGISTER_GRACE = 2.0

# How long an app restored from the last run has to register again before it is taken for
# gone: several of the reference app's 10 s refreshes, so one slow refresh is not fatal.
RESTORED_GRACE = 60.0


class InvalidApp(ValueError):
    """The app_id or service name is malformed."""


class AppConflict(Exception):
    """The app_id is registered already, for another service."""


class UnknownApp(LookupError):
    """No app with that app_id is registered."""


class TooManyApps(Exception):
    """The agent serves as many apps as it allows."""


class RegistryClosed(Exception):
    """The agent is draining and takes no new apps."""


@dataclass(eq=False)
class LocalApp:
    """One registered app: its own proxy (routes and breakers) and its own listener."""

    app_id: str
    service: str
    proxy: OutboundProxy
    runner: ProxyListener
    port: int = 0
    config_version: int = 0  # 0 until its service has a config

    @property
    def address(self) -> str:
        """Where the app sends its outbound calls."""
        return f"127.0.0.1:{self.port}"


@dataclass(eq=False)
class _ServiceGroup:
    """The apps of one service, and that service's config parsed once for all of them."""

    apps: dict[str, LocalApp] = field(default_factory=dict)
    config: ProxyConfig | None = None
    version: int = 0
    unsubscribe: Callable[[], None] = lambda: None


def _check(app_id: str, service: str) -> None:
    """Raise InvalidApp unless both names are acceptable."""
    if not 0 < len(app_id) <= MAX_APP_ID_LENGTH or not app_id.isprintable():
        raise InvalidApp(f"app_id must be 1-{MAX_APP_ID_LENGTH} printable characters")
    try:
        check_service_name(service)
    except ValueError as error:
        # Checked here with the control plane's own rule: one bad name in the shared
        # Watch request would make the control plane refuse the stream for every app.
        raise InvalidApp(str(error)) from None


class AppRegistry:
    """Register and deregister local apps; fan each service's config out to its apps."""

    def __init__(
        self,
        configs: ServiceConfigs,
        session: aiohttp.ClientSession,
        *,
        drain: DrainController,
        metrics: Registry | None = None,
        on_services_changed: Callable[[frozenset[str]], None] = lambda services: None,
        max_apps: int = DEFAULT_MAX_APPS,
        registrations: RegistrationStore | None = None,
    ) -> None:
        self._configs = configs
        self._session = session  # one connection pool for every app; breakers stay per app
        self._drain = drain
        self._metrics = metrics
        self._on_services_changed = on_services_changed
        self._max_apps = max_apps
        self._apps: dict[str, LocalApp] = {}
        self._groups: dict[str, _ServiceGroup] = {}
        # Register and Deregister change several structures and await in between (cache read,
        # listener start); one at a time keeps them consistent. Both are rare and fast.
        self._lock = asyncio.Lock()
        self._closed = False
        self._registrations = registrations
        # Apps restored from the last run that have not registered again yet.
        self._unconfirmed: set[str] = set()
        self._expiry: asyncio.Task[None] | None = None

    def apps(self) -> list[LocalApp]:
        """Every registered app, sorted by app_id."""
        return [self._apps[app_id] for app_id in sorted(self._apps)]

    def get(self, app_id: str) -> LocalApp | None:
        """The app registered as `app_id`, if any."""
        return self._apps.get(app_id)

    @property
    def services(self) -> frozenset[str]:
        """The services at least one registered app needs."""
        return frozenset(self._groups)

    def close(self) -> None:
        """Refuse new registrations from now on (the agent is draining or stopping)."""
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()

    # --8<-- [start:register]
    async def register(self, app_id: str, service: str) -> LocalApp:
        """Give `app_id` its own proxy and listener for `service`; idempotent for the same pair."""
        _check(app_id, service)
        async with self._lock:
            existing = self._apps.get(app_id)
            if existing is not None:
                if existing.service == service:
                    self._unconfirmed.discard(app_id)
                    return existing  # an app that restarted and registers again keeps its port
                if app_id not in self._unconfirmed:
                    raise AppConflict(
                        f"app {app_id!r} is registered for service {existing.service!r}; "
                        "deregister it first"
                    )
                # Restored from the last run, and the app now says otherwise: its word wins.
                # Closed under the lock: rare, and the new listener must not race the old.
                await self._close(await self._forget(app_id))
            if self._closed:
                raise RegistryClosed("the node agent is draining")
            return await self._add(app_id, service, port=0)

    async def _add(self, app_id: str, service: str, *, port: int) -> LocalApp:
        """Serve `app_id` on a new listener (on `port`, 0: any free one); the lock is held."""
        if len(self._apps) >= self._max_apps:
            raise TooManyApps(f"this node agent serves at most {self._max_apps} apps")
        group = await self._group(service)
        # A proxy of its own even when the service's config is shared: its breakers then
        # count only this app's calls, so one app's failing upstream never trips another's.
        proxy = OutboundProxy(self._session, metrics=self._metrics, name=app_id)
        app = LocalApp(app_id, service, proxy, self._runner(proxy))
        if group.config is not None:
            proxy.apply(group.config)
            app.config_version = group.version
        try:
            # Loopback only: the listener acts with the app's identity, so only processes
            # on this host may use it.
            app.port = await app.runner.start("127.0.0.1", port)
        except BaseException:
            proxy.close()
            await app.runner.cleanup()
            self._forget_group_if_empty(service)
            raise
        group.apps[app_id] = app
        self._apps[app_id] = app
        # A config may have reached the group while the listener was starting; fan-out
        # skipped this app then, because it was not in group.apps yet.
        if group.config is not None and group.version != app.config_version:
            proxy.apply(group.config)
            app.config_version = group.version
        self._on_services_changed(self.services)
        if self._registrations is not None:
            await asyncio.to_thread(self._registrations.save,
                                    Registration(app_id, service, app.port))
        log.info("registered %s for %s on %s", app_id, service, app.address)
        return app
    # --8<-- [end:register]

    async def deregister(self, app_id: str) -> None:
        """Close `app_id`'s listener, letting its requests in flight finish first."""
        async with self._lock:
            app = await self._forget(app_id)
        # Outside the lock, so other apps can register while this one's requests finish.
        await self._close(app)

    async def _forget(self, app_id: str) -> LocalApp:
        """Take `app_id` out of every structure and the record; the lock is held."""
        app = self._apps.pop(app_id, None)
        if app is None:
            raise UnknownApp(f"no app {app_id!r} is registered")
        self._unconfirmed.discard(app_id)
        self._groups[app.service].apps.pop(app_id, None)
        self._forget_group_if_empty(app.service)
        self._on_services_changed(self.services)
        if self._registrations is not None:
            await asyncio.to_thread(self._registrations.remove, app_id)
        return app

    @staticmethod
    async def _close(app: LocalApp) -> None:
        app.proxy.close()
        # cleanup() stops accepting at once, then waits up to the runner's shutdown_timeout
        # for the requests in flight.
        await app.runner.cleanup()
        log.info("deregistered %s", app.app_id)

    # --8<-- [start:restore]
    async def restore(self, *, grace: float = RESTORED_GRACE) -> list[LocalApp]:
        """Serve the apps the last run recorded, each on its old port, before any registers again.

        An app keeps calling the port it was given, so a restarted agent that listens there at
        once spares it the failed calls until its next refresh. An app that has not registered
        again within `grace` seconds is taken for gone and deregistered. One whose port is
        taken now is dropped; it gets a new port when it registers.
        """
        if self._registrations is None:
            return []
        saved = await asyncio.to_thread(self._registrations.load)
        restored = []
        async with self._lock:
            for registration in saved:
                if registration.app_id in self._apps:
                    continue
                try:
                    _check(registration.app_id, registration.service)
                    app = await self._add(registration.app_id, registration.service,
                                          port=registration.port)
                except (OSError, ValueError, TooManyApps) as error:
                    log.warning("not restoring %s on port %d: %s", registration.app_id,
                                registration.port, error)
                    await asyncio.to_thread(self._registrations.remove, registration.app_id)
                    continue
                self._unconfirmed.add(app.app_id)
                restored.append(app)
        if restored:
            self._expiry = asyncio.get_running_loop().create_task(self._expire(grace))
        return restored

    async def _expire(self, grace: float) -> None:
        await asyncio.sleep(grace)
        for app_id in sorted(self._unconfirmed):
            log.warning("%s has not registered again %g s after the restart; deregistering",
                        app_id, grace)
            try:
                await self.deregister(app_id)
            except UnknownApp:
                pass  # deregistered by its own request meanwhile
    # --8<-- [end:restore]

    def _runner(self, proxy: OutboundProxy) -> ProxyListener:
        # Every path and method goes to the proxy: the Host header picks the destination.
        # The node's one DrainController tracks requests on every app's listener, so SIGTERM
        # can drain them all with a single delay and grace period. Its /healthz and /readyz
        # live on the admin listener, not here, where they would shadow upstream paths.
        return ProxyListener(drain_aware(self._drain, proxy.handle),
                             fast=drain_aware_fast(self._drain, proxy.handle_nowait),
                             shutdown_timeout=DEREGISTER_GRACE)

    # --8<-- [start:fanout]
    async def _group(self, service: str) -> _ServiceGroup:
        group = self._groups.get(service)
        if group is not None:
            return group
        store = await self._configs.store(service)  # seeded from the disk cache, if any
        group = self._groups[service] = _ServiceGroup()
        if store.current is not None:
            self._set_config(group, store.current)

        def fan_out(snapshot: Snapshot) -> None:
            # Parsed once per service and version, then applied to every app of the service.
            self._set_config(group, snapshot)
            for app in list(group.apps.values()):
                try:
                    app.proxy.apply(group.config)  # type: ignore[arg-type]
                except Exception:
                    # Validated already, so this is a bug; the other apps must still update.
                    log.exception("app %s could not apply version %s", app.app_id, group.version)
                    continue
                app.config_version = group.version

        group.unsubscribe = store.subscribe(fan_out)
        return group
    # --8<-- [end:fanout]

    @staticmethod
    def _set_config(group: _ServiceGroup, snapshot: Snapshot) -> None:
        group.config = parse_proxy_config(snapshot.config)
        group.version = snapshot.version

    def _forget_group_if_empty(self, service: str) -> None:
        group = self._groups.get(service)
        if group is not None and not group.apps:
            group.unsubscribe()
            del self._groups[service]
