"""Controller mode: the same gateway, fed by a Kubernetes API server.

Design note
-----------
``KubeGateway`` is the local-mode ``Gateway`` with three parts swapped
(``_server.Gateway.load``/``publish``/``_listen``):

* object source: one ``Reflector`` thread per kind does list+watch (raw JSON, so
  objects look exactly like the manifests of local mode) into a shared ``Cache``.
  The blocking kubernetes client stays in those threads; they only wake the asyncio
  loop, which debounces a burst of events (20 ms of quiet, at most 250 ms) and then
  translates the whole cache, as local mode translates the whole tree.
  Status-only changes do not wake the loop: translation never reads status, and our
  own status writes would otherwise cause a reload per write.
* status sink: ``StatusWriter`` compares what the translator wants with the status
  the API server has (from the cache, so a restart neither rewrites nor loses
  ``lastTransitionTime``) and writes only differences, through the status
  subresource. Gateways and GatewayClasses of our class are ours entirely (merge
  patch). HTTPRoute ``parents[]`` and BackendTLSPolicy ``ancestors[]`` are shared
  with other controllers: those are read-modify-write with ``resourceVersion``,
  replacing only entries with our ``controllerName``.
* sockets: a Gateway has no ports file here. Each Gateway gets an address of its
  own: out of cluster a loopback address from a pool (Linux routes all of 127/8 to
  ``lo``) on which its listeners bind their real ports; in cluster
  (``--service-namespace``) a Service of its own (``GatewayServices``), whose
  ClusterIP is the reported address and whose ports are the listener ports, each
  sent to an internal port the pod binds for that (Gateway, port): one pod serves
  every Gateway, as before, but two Gateways no longer share an address, so both can
  listen on 443. ``--listen-address IP`` alone keeps the old single-address mode. A
  port that cannot be bound makes its listeners ``Accepted=False/PortUnavailable``,
  ``Programmed=False``.

The parts live beside it: ``_kube_api`` (the API client), ``_kube_informer`` (``Reflector``,
``Cache``), ``_kube_status`` (``StatusWriter``), ``_kube_addresses`` (``AddressPool``,
``GatewayServices``); its command line is ``_cli.controller_main``.

This module must not import the harness (``mtls_conformance``).
"""

from __future__ import annotations

import asyncio
import copy
import errno
import hashlib
import ipaddress
import logging
import os
import signal
import threading
import time
from pathlib import Path

from . import translator
from ._edge import Edge
from ._kube_addresses import AddressPool, GatewayServices
from ._kube_api import RESOURCES
from ._kube_informer import Cache, Reflector
from ._kube_status import StatusWriter
from ._server import BACKLOG, Gateway, Site
from .faults import STALE_INSECURE_CONDITION

log = logging.getLogger("refgateway")

DEBOUNCE_QUIET = 0.020
DEBOUNCE_MAX = 0.250
STATUS_RETRY = 2.0
#: Service mode's internal ports: below Linux's ephemeral range (32768-60999), which the
#: pod's own connections to backends draw from.
INTERNAL_PORTS = (10000, 32000)


# --------------------------------------------------------------------------- the controller


class KubeGateway(Gateway):
    def __init__(self, api, *, controller: str, faults: frozenset[str], pool: AddressPool | None,
                 listen_address: str | None, report_address: str | None, system_ca_bundle: Path | None = None,
                 service_namespace: str | None = None, service_selector: dict[str, str] | None = None):
        super().__init__(controller=controller, faults=faults, system_ca_bundle=system_ca_bundle)
        self.api = api
        self.pool, self.listen_address, self.report_address = pool, listen_address, report_address
        self.service_namespace, self.service_selector = service_namespace, service_selector or {}
        self.services: GatewayServices | None = None  # made in run(), with the cache
        self.bind_errors: dict[tuple[str, str, int], str] = {}
        self.changed = asyncio.Event()
        self.stop_threads = threading.Event()
        self.cache: Cache | None = None
        self.reflectors: list[Reflector] = []
        self.writer: StatusWriter | None = None
        self.retry_at: float | None = None

    # -- object source

    def load(self) -> tuple[dict, dict[str, str]]:
        return self.cache.snapshot(), {}

    def cluster_trust_bundles_served(self) -> bool:
        return any(r.choices[0].kind == "ClusterTrustBundle" and r.res is not None for r in self.reflectors)

    # -- sockets

    def _address(self, gw: tuple[str, str]) -> str | None:
        if self.pool is None:
            return self.listen_address
        obj = self.cache.get(("Gateway", *gw)) or {}
        previous = [a.get("value") for a in (obj.get("status") or {}).get("addresses") or []
                    if isinstance(a, dict) and a.get("type", "IPAddress") == "IPAddress"]
        return self.pool.get(gw, previous[0] if previous else None)

    async def _listen(self, key: tuple[str, str, int], site: Site) -> bool:
        if self.services is not None:
            return await self._listen_internal(key, site)
        gw, port = key[:2], key[2]
        loop = asyncio.get_running_loop()
        for _ in range(16):
            host = self._address(gw)
            if host is None:
                self.bind_errors[key] = f"no free address left in the pool {self.pool.net}"
                return False
            try:
                site.server = await loop.create_server(lambda: Edge(site), host, port, backlog=BACKLOG)
            except OSError as exc:
                gw_has_sites = any(k[:2] == gw for k in self.sites)
                if exc.errno == errno.EADDRINUSE and self.pool is not None and not gw_has_sites:
                    log.info("gateway %s/%s: %s:%d is in use elsewhere; trying another address", *gw, host, port)
                    self.pool.mark_busy(gw)
                    continue
                hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if (
                    exc.errno == errno.EACCES and port < 1024) else ""
                # asyncio rewrites strerror into a sentence of its own; the errno's text is shorter.
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                msg = f"cannot listen on {host}:{port}: {reason}{hint}"
                self.bind_errors[key] = msg
                log.warning("gateway %s/%s listener port %d: %s", *gw, port, msg)
                return False
            site.bound = port
            self.bind_errors.pop(key, None)
            log.info("gateway %s/%s port %d listening on %s:%d", *gw, port, host, port)
            return True
        self.bind_errors[key] = "every address tried is in use"
        return False

    async def _listen_internal(self, key: tuple[str, str, int], site: Site) -> bool:
        """Service mode: an internal port for (Gateway, listener port); the Gateway's Service
        maps the listener port to it. The port the Service already names if it is free (a
        restarted pod keeps its Services as they are), else a hash of namespace/name/port
        in INTERNAL_PORTS (below the kernel's ephemeral range), the next free one on a
        collision: so a Gateway deleted and made again gets the same port, and a
        `kubectl port-forward` to its Service, which holds on to the pod and the port it
        resolved at its start, keeps working. The kernel's choice as a last resort."""
        gw, port = key[:2], key[2]
        loop = asyncio.get_running_loop()
        previous = self.services.target_port(gw, port)
        taken = {s.bound for s in self.sites.values()}
        span = INTERNAL_PORTS[1] - INTERNAL_PORTS[0]
        start = int.from_bytes(hashlib.sha256(f"{gw[0]}/{gw[1]}/{port}".encode()).digest()[:8], "big") % span
        hashed = [INTERNAL_PORTS[0] + (start + i) % span for i in range(64)]
        candidates = [p for p in ([previous] if previous else []) + hashed if p not in taken]
        for internal in candidates + [0]:
            try:
                site.server = await loop.create_server(lambda: Edge(site), self.listen_address, internal,
                                                       backlog=BACKLOG)
            except OSError as exc:
                if internal:
                    continue
                msg = f"cannot listen on {self.listen_address}:{internal}: {os.strerror(exc.errno) if exc.errno else exc}"
                self.bind_errors[key] = msg
                log.warning("gateway %s/%s listener port %d: %s", *gw, port, msg)
                return False
            site.bound = site.server.sockets[0].getsockname()[1]
            self.bind_errors.pop(key, None)
            log.info("gateway %s/%s port %d listening on %s:%d", *gw, port, self.listen_address, site.bound)
            return True
        return False

    async def _program(self, plan: translator.Plan) -> None:
        self.bind_errors = {k: v for k, v in self.bind_errors.items() if k in plan.ports}
        await super()._program(plan)
        if self.pool is not None:
            self.pool.release_except({k[:2] for k in self.sites} | set(plan.gateways))

    # -- status sink

    async def publish(self, plan: translator.Plan, statuses: dict, errors: dict[str, str]) -> None:
        services_ok = True
        if self.services is not None:
            # The Service first: a Gateway reports its address (and Programmed) only once
            # its Service sends every bound listener port to this pod.
            wanted: dict[tuple[str, str], dict[int, int]] = {}
            for (ns, name, port), site in self.sites.items():
                if (ns, name) in plan.gateways:
                    wanted.setdefault((ns, name), {})[port] = site.bound
            services_ok = await asyncio.to_thread(self.services.sync, wanted)
        statuses = {k: self._localize(k, v) if k[0] == "Gateway" else v for k, v in statuses.items()}
        ok = await asyncio.to_thread(self.writer.sync, statuses)
        self.retry_at = None if ok and services_ok and not self.bind_errors else time.monotonic() + STATUS_RETRY

    def _reported(self, gw: tuple[str, str]) -> list[dict]:
        if self.services is not None:
            addr = None if gw in self.services.errors else self.services.address(gw)
            return [{"type": "IPAddress", "value": addr}] if addr else []
        if self.pool is not None:
            addr = self.pool.by_gateway.get(gw)
            return [{"type": "IPAddress", "value": addr}] if addr else []
        if self.report_address:
            return [{"type": "IPAddress", "value": self.report_address}]
        spec = ((self.cache.get(("Gateway", *gw)) or {}).get("spec") or {}).get("addresses") or []
        given = [{"type": "IPAddress", "value": a["value"]} for a in spec
                 if isinstance(a, dict) and a.get("type", "IPAddress") == "IPAddress" and a.get("value")]
        if given:
            return given
        if self.listen_address and not ipaddress.ip_address(self.listen_address).is_unspecified:
            return [{"type": "IPAddress", "value": self.listen_address}]
        return []

    def _localize(self, key, doc: dict) -> dict:
        """Put the real address and the ports that failed to bind into a Gateway's status."""
        doc = copy.deepcopy(doc)
        st = doc["status"]
        gw = key[1:]
        spec = (self.cache.get(key) or {}).get("spec") or {}
        port_of = {ls.get("name"): ls.get("port") for ls in spec.get("listeners") or []}
        st["addresses"] = self._reported(gw)
        where = ", ".join(a["value"] for a in st["addresses"]) or "no address"
        any_programmed = False
        for ls in st.get("listeners") or []:
            problem = self.bind_errors.get((*gw, port_of.get(ls["name"])))
            for c in ls.get("conditions") or []:
                if problem and c["type"] == "Accepted" and c["status"] == "True":
                    c.update(status="False", reason="PortUnavailable", message=problem)
                if problem and c["type"] == "Programmed":
                    c.update(status="False", reason="Invalid", message=problem)
                if c["type"] == "Programmed" and c["status"] == "True":
                    any_programmed = True
        for c in st.get("conditions") or []:
            if c["type"] == "Programmed" and c["status"] == "True":
                if st.get("listeners") and not any_programmed:
                    c.update(status="False", reason="Invalid", message="no listener can be programmed")
                elif not st["addresses"]:
                    why = self.services.errors.get(gw) if self.services is not None else None
                    c.update(status="False", reason="AddressNotAssigned", message=why or "no address to report")
                else:
                    c["message"] = f"gateway is programmed on {where}"
            if c["type"] == "Accepted" and c["reason"] == "Accepted" and any(
                    (*gw, port_of.get(ls["name"])) in self.bind_errors for ls in st.get("listeners") or []):
                c.update(reason="ListenersNotValid", message="some listeners are not valid")
        return doc

    # -- loop

    def _wake(self) -> None:
        self.loop.call_soon_threadsafe(self.changed.set)

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        self.cache = Cache(self._wake)
        sticky = frozenset({"InsecureFrontendValidationMode"}) if STALE_INSECURE_CONDITION in self.faults else frozenset()
        self.writer = StatusWriter(self.api, self.cache, self.controller, sticky, self.faults)
        if self.service_namespace:
            self.services = GatewayServices(self.api, self.cache, self.service_namespace, self.service_selector,
                                            self.controller)
        self.reflectors = [Reflector(self.api, choices, self.cache, self.stop_threads) for choices in RESOURCES]
        for r in self.reflectors:
            r.start()
        try:
            if await self._initial_sync():
                await self._serve()
        finally:
            self.stop_threads.set()
            for r in self.reflectors:
                r.close()
            await self.shutdown()

    async def _initial_sync(self) -> bool:
        t0 = time.monotonic()
        while not all(r.synced.is_set() for r in self.reflectors):
            self.changed.clear()
            try:
                await asyncio.wait_for(self._stopping_or_changed(), 1.0)
            except asyncio.TimeoutError:
                if time.monotonic() - t0 > 10:
                    missing = [r.choices[0].kind for r in self.reflectors if not r.synced.is_set()]
                    log.warning("still waiting for the first list of %s", ", ".join(missing))
                    t0 = time.monotonic()
            if self.stopping.is_set():
                return False
        log.info("ready (pid %d, controller %s, faults: %s)", os.getpid(), self.controller,
                 ", ".join(sorted(self.faults)) or "none")
        return True

    async def _stopping_or_changed(self) -> None:
        waits = [asyncio.ensure_future(self.stopping.wait()), asyncio.ensure_future(self.changed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _serve(self) -> None:
        self.changed.set()
        while not self.stopping.is_set():
            timeout = None if self.retry_at is None else max(0.0, self.retry_at - time.monotonic())
            try:
                await asyncio.wait_for(self._stopping_or_changed(), timeout)
            except asyncio.TimeoutError:
                pass  # a retry of failed status writes or binds
            if self.stopping.is_set():
                break
            # Debounce: a burst of events (a test creating ten objects) is one reload.
            first = time.monotonic()
            while True:
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), DEBOUNCE_QUIET)
                except asyncio.TimeoutError:
                    break
                if time.monotonic() - first > DEBOUNCE_MAX:
                    self.changed.clear()
                    break
            try:
                await self.reload()
            except Exception:  # keep serving the previous configuration
                log.exception("reload failed; keeping the previous configuration")
                self.retry_at = time.monotonic() + STATUS_RETRY
