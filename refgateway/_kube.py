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

This module must not import the harness (``conformance``).
"""

from __future__ import annotations

import asyncio
import copy
import errno
import hashlib
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import translator
from ._edge import Edge
from ._server import BACKLOG, Gateway, Site, _now

log = logging.getLogger("refgateway")

GW_GROUP = translator.GW_GROUP
DEBOUNCE_QUIET = 0.020
DEBOUNCE_MAX = 0.250
BACKOFF_MIN, BACKOFF_MAX = 0.2, 10.0
WATCH_SECONDS = (240, 300)  # server-side watch timeout, jittered so reflectors do not reconnect in step
NOT_SERVED_RETRY = 30.0
STATUS_RETRY = 2.0
DEFAULT_POOL = "127.0.0.0/16"
#: Service mode's internal ports: below Linux's ephemeral range (32768-60999), which the
#: pod's own connections to backends draw from.
INTERNAL_PORTS = (10000, 32000)
RESERVED_LOOPBACK = ipaddress.ip_network("127.0.0.0/24")  # 127.0.0.1 and friends belong to other services


class KubeError(Exception):
    """A problem the user must fix (kubeconfig, flags); the message is one line."""


# --------------------------------------------------------------------------- connection


def connect(kubeconfig: str | None, context: str | None):
    """An ApiClient from a kubeconfig, or in-cluster from the ServiceAccount."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    try:
        if kubeconfig is None and not os.environ.get("KUBECONFIG") and os.environ.get("KUBERNETES_SERVICE_HOST"):
            if context is not None:
                raise KubeError("--context needs a kubeconfig: pass --kubeconfig FILE or set KUBECONFIG")
            config.load_incluster_config(client_configuration=cfg)
        elif kubeconfig is None and not os.environ.get("KUBECONFIG"):
            raise KubeError("no --kubeconfig given, KUBECONFIG is not set and not running in a cluster "
                            "(KUBERNETES_SERVICE_HOST unset): pass --kubeconfig FILE")
        else:
            path = kubeconfig or os.environ["KUBECONFIG"].split(os.pathsep)[0]
            if not os.path.isfile(path):
                raise KubeError(f"kubeconfig {path}: no such file")
            config.load_kube_config(config_file=path, context=context, client_configuration=cfg,
                                    persist_config=False)
    except ConfigException as exc:
        raise KubeError(f"cannot load Kubernetes configuration: {str(exc).splitlines()[0]}") from exc
    # One connection per watch plus status writes; the default pool (5 x CPUs) would
    # discard connections and warn on a small machine.
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Resource:
    kind: str
    api_version: str
    plural: str
    namespaced: bool

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def path(self, ns: str = "", name: str = "", sub: str = "") -> str:
        base = f"/apis/{self.api_version}" if self.group else f"/api/{self.version}"
        if ns:
            base += f"/namespaces/{ns}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        return base + (f"/{sub}" if sub else "")


# ReferenceGrant: v1 where served (v1.5+ CRDs), else v1beta1; the reflector tries in order.
RESOURCES: tuple[tuple[Resource, ...], ...] = (
    (Resource("GatewayClass", f"{GW_GROUP}/v1", "gatewayclasses", False),),
    (Resource("Gateway", f"{GW_GROUP}/v1", "gateways", True),),
    (Resource("HTTPRoute", f"{GW_GROUP}/v1", "httproutes", True),),
    (Resource("ReferenceGrant", f"{GW_GROUP}/v1", "referencegrants", True),
     Resource("ReferenceGrant", f"{GW_GROUP}/v1beta1", "referencegrants", True)),
    (Resource("BackendTLSPolicy", f"{GW_GROUP}/v1", "backendtlspolicies", True),),
    (Resource("ConfigMap", "v1", "configmaps", True),),
    (Resource("Secret", "v1", "secrets", True),),
    (Resource("Service", "v1", "services", True),),
    (Resource("EndpointSlice", "discovery.k8s.io/v1", "endpointslices", True),),
    (Resource("Namespace", "v1", "namespaces", False),),
    # GEP-5075: ClusterTrustBundle is certificates.k8s.io/v1 from Kubernetes v1.37, v1beta1
    # (feature gate ClusterTrustBundle plus runtime-config) before. Optional: without it
    # the gateway serves on, and neither advertises the feature nor resolves such refs.
    (Resource("ClusterTrustBundle", "certificates.k8s.io/v1", "clustertrustbundles", False),
     Resource("ClusterTrustBundle", "certificates.k8s.io/v1beta1", "clustertrustbundles", False),
     Resource("ClusterTrustBundle", "certificates.k8s.io/v1alpha1", "clustertrustbundles", False)),
)
#: Kinds the gateway can do without: a 403 (a cluster that withholds read access, see
#: GEP-5075 "Hardened Cluster Caveat") counts as not served instead of blocking the start.
OPTIONAL_KINDS = frozenset({"ClusterTrustBundle"})

# kind -> (plural, the shared list in status or None when the whole status is ours)
STATUS_KINDS = {
    "GatewayClass": ("gatewayclasses", None),
    "Gateway": ("gateways", None),
    "HTTPRoute": ("httproutes", "parents"),
    "BackendTLSPolicy": ("backendtlspolicies", "ancestors"),
}


class ApiError(Exception):
    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        msg = body.get("message") if isinstance(body, dict) else str(body)[:200]
        super().__init__(f"HTTP {status}: {msg}")


def request(api, method: str, path: str, *, query: dict | None = None, body: Any = None,
            content_type: str = "application/json", timeout: Any = 30, stream: bool = False):
    """One raw API request; JSON in, JSON (or the open response when streaming) out."""
    url = api.configuration.host + path
    if query:
        from urllib.parse import urlencode

        url += "?" + urlencode({k: ("true" if v is True else v) for k, v in query.items() if v is not None})
    headers = {"Accept": "application/json", "Content-Type": content_type}
    api.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
    resp = api.rest_client.pool_manager.request(
        method, url, headers=headers, body=json.dumps(body) if body is not None else None,
        preload_content=not stream, timeout=_timeout(timeout), retries=False)
    if stream and resp.status == 200:
        return resp
    data = resp.data if not stream else resp.read()
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        parsed = data.decode(errors="replace")
    if not 200 <= resp.status < 300:
        raise ApiError(resp.status, parsed)
    return parsed


def _timeout(t):
    import urllib3

    if isinstance(t, tuple):
        return urllib3.Timeout(connect=t[0], read=t[1])
    return urllib3.Timeout(total=t)


# --------------------------------------------------------------------------- cache


def _semantic(obj: dict) -> dict:
    """What translation can depend on: everything but status and bookkeeping metadata."""
    view = {k: v for k, v in obj.items() if k != "status"}
    meta = dict(view.get("metadata") or {})
    for k in ("resourceVersion", "managedFields"):
        meta.pop(k, None)
    view["metadata"] = meta
    return view


class Cache:
    """Every object seen, keyed (kind, ns, name); thread-safe; wakes the loop on changes."""

    def __init__(self, wake: Callable[[], None]):
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._wake = wake

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._objects)

    def get(self, key) -> dict | None:
        with self._lock:
            return self._objects.get(key)

    def put(self, key, obj: dict, *, wake: bool = True) -> None:
        with self._lock:
            old = self._objects.get(key)
            if old is not None and _rv(old) and _rv(obj) and _rv_newer(_rv(old), _rv(obj)):
                return  # a status write's answer arrived after a newer watch event
            self._objects[key] = obj
            changed = old is None or _semantic(old) != _semantic(obj)
        if changed and wake:
            self._wake()

    def delete(self, key) -> None:
        with self._lock:
            changed = self._objects.pop(key, None) is not None
        if changed:
            self._wake()

    def replace_kind(self, kind: str, objects: dict) -> None:
        """A fresh list of one kind: drop what is gone, keep what is unchanged."""
        with self._lock:
            old = {k: v for k, v in self._objects.items() if k[0] == kind}
            for k in old:
                if k not in objects:
                    del self._objects[k]
            self._objects.update(objects)
            changed = old.keys() != objects.keys() or any(
                _semantic(old[k]) != _semantic(v) for k, v in objects.items())
        if changed:
            self._wake()


def _rv(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion") or ""


def _rv_newer(a: str, b: str) -> bool:
    # resourceVersions are opaque, but etcd-backed servers use increasing integers;
    # compare only when both are numbers.
    return a.isdigit() and b.isdigit() and int(a) > int(b)


def _key(res: Resource, obj: dict) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return res.kind, (meta.get("namespace") or "") if res.namespaced else "", meta.get("name") or ""


class _Gone(Exception):
    pass


class Reflector(threading.Thread):
    """list+watch of one kind into the cache, relisting on 410 Gone, with bounded backoff."""

    def __init__(self, api, choices: tuple[Resource, ...], cache: Cache, stop: threading.Event):
        super().__init__(name=f"watch-{choices[0].kind}", daemon=True)
        self.api, self.choices, self.cache, self.stop_event = api, choices, cache, stop
        self.res: Resource | None = None
        self.synced = threading.Event()
        self._resp = None

    def run(self) -> None:
        backoff, rv, warned = BACKOFF_MIN, None, False
        while not self.stop_event.is_set():
            try:
                if rv is None:
                    rv = self._list()
                    warned = False
                rv = self._watch(rv)
                backoff = BACKOFF_MIN
            except _Gone:
                log.info("watch %s: resourceVersion expired; listing again", self.choices[0].kind)
                rv = None
            except ApiError as exc:
                if exc.status == 404 or (exc.status == 403 and self.choices[0].kind in OPTIONAL_KINDS):
                    # CRD not installed (yet): serve without this kind and look again later.
                    if not warned:
                        log.warning("%s is not %s (%s); retrying every %.0f s", self.choices[0].kind,
                                    "served by the API server" if exc.status == 404 else "readable (403)",
                                    ", ".join(r.api_version for r in self.choices), NOT_SERVED_RETRY)
                        warned = True
                    self.res = None
                    self.cache.replace_kind(self.choices[0].kind, {})
                    self.synced.set()
                    rv = None
                    self.stop_event.wait(NOT_SERVED_RETRY)
                    continue
                log.warning("watch %s: %s; retrying in %.1f s", self.choices[0].kind, exc, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                rv = None if exc.status in (401, 403) else rv
            except Exception as exc:  # connection refused/reset, timeouts, bad JSON
                if self.stop_event.is_set():
                    break
                log.warning("watch %s: %s: %s; retrying in %.1f s", self.choices[0].kind,
                            exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "", backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _list(self) -> str:
        last: ApiError | None = None
        for res in self.choices:
            try:
                items, rv, cont = {}, "", None
                while True:
                    body = request(self.api, "GET", res.path(), query={"limit": 500, "continue": cont})
                    for obj in body.get("items") or []:
                        obj.setdefault("apiVersion", res.api_version)
                        obj.setdefault("kind", res.kind)
                        items[_key(res, obj)] = obj
                    rv = (body.get("metadata") or {}).get("resourceVersion") or rv
                    cont = (body.get("metadata") or {}).get("continue")
                    if not cont:
                        break
            except ApiError as exc:
                if exc.status == 404:
                    last = exc
                    continue
                if exc.status == 410:
                    raise _Gone() from exc
                raise
            self.res = res
            self.cache.replace_kind(res.kind, items)
            if not self.synced.is_set():
                self.synced.set()
                self.cache._wake()  # the loop waits for every first list, changed or not
            return rv
        assert last is not None
        raise last

    def _watch(self, rv: str) -> str:
        res = self.res
        assert res is not None
        seconds = random.randint(*WATCH_SECONDS)
        try:
            resp = request(self.api, "GET", res.path(), stream=True, timeout=(10, seconds + 30), query={
                "watch": True, "resourceVersion": rv, "allowWatchBookmarks": True, "timeoutSeconds": seconds})
        except ApiError as exc:
            if exc.status == 410:  # expired before the stream even started
                raise _Gone() from exc
            raise
        self._resp = resp
        try:
            buf = b""
            for chunk in resp.stream(65536, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        rv = self._event(res, json.loads(line), rv)
                if self.stop_event.is_set():
                    break
        finally:
            self._resp = None
            resp.release_conn()
        return rv

    def _event(self, res: Resource, event: dict, rv: str) -> str:
        etype, obj = event.get("type"), event.get("object") or {}
        if etype == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise ApiError(obj.get("code") or 500, obj)
        new_rv = _rv(obj) or rv
        if etype == "BOOKMARK":
            return new_rv
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        if etype == "DELETED":
            self.cache.delete(_key(res, obj))
        else:
            self.cache.put(_key(res, obj), obj)
        return new_rv

    def close(self) -> None:
        resp = self._resp
        if resp is not None:  # unblock a read in progress (as kubernetes.watch.Watch.stop does)
            try:
                sock = getattr(getattr(resp, "connection", None), "sock", None)
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------- status


def _ours_only(entries: list, controller: str) -> list:
    return [e for e in entries or [] if isinstance(e, dict) and e.get("controllerName") == controller]


class StatusWriter:
    """Writes the differences between wanted and current status; blocking, so run in a thread."""

    def __init__(self, api, cache: Cache, controller: str, sticky: frozenset[str]):
        self.api, self.cache, self.controller, self.sticky = api, cache, controller, sticky
        self.writes = 0  # for tests and logs: how many status writes reached the API server

    def sync(self, statuses: dict) -> bool:
        """Return False when some write failed (the caller retries later)."""
        ok = True
        objects = self.cache.snapshot()
        keys = set(statuses) | {k for k, o in objects.items() if k[0] in ("HTTPRoute", "BackendTLSPolicy")}
        now = _now()
        for key in sorted(keys):
            if key not in objects or key[0] not in STATUS_KINDS:
                continue
            try:
                self._sync_one(key, objects[key], statuses.get(key), now)
            except ApiError as exc:
                if exc.status == 404:
                    continue  # deleted meanwhile; the watch will tell the loop
                ok = False
                log.warning("status of %s %s: %s", key[0], "/".join(filter(None, key[1:])), exc)
            except Exception as exc:
                ok = False
                log.warning("status of %s %s: %s: %s", key[0], "/".join(filter(None, key[1:])),
                            exc.__class__.__name__, exc)
        return ok

    def _sync_one(self, key, obj: dict, doc: dict | None, now: str) -> None:
        plural, shared = STATUS_KINDS[key[0]]
        res = Resource(key[0], f"{GW_GROUP}/v1", plural, bool(key[1]))
        if shared is None:
            if doc is None:
                return  # not ours
            current = obj.get("status") or {}
            old = {k: current[k] for k in doc["status"] if k in current}
            new = translator.stamp_transitions({"status": copy.deepcopy(doc["status"])}, {"status": old}, now,
                                               sticky_types=self.sticky)["status"]
            if new == old:
                return
            answer = request(self.api, "PATCH", res.path(key[1], key[2], "status"), body={"status": new},
                             content_type="application/merge-patch+json")
            self._written(key, res, answer)
            return
        wanted = copy.deepcopy((doc or {}).get("status", {}).get(shared, []))
        for _ in range(5):
            current = (obj.get("status") or {}).get(shared) or []
            old = _ours_only(current, self.controller)
            if not wanted and not old:
                return
            new = translator.stamp_transitions({"status": {shared: copy.deepcopy(wanted)}},
                                               {"status": {shared: old}}, now)["status"][shared]
            if new == old:
                return
            others = [e for e in current if not (isinstance(e, dict) and e.get("controllerName") == self.controller)]
            body = copy.deepcopy(obj)
            body.setdefault("status", {})[shared] = others + new
            try:
                answer = request(self.api, "PUT", res.path(key[1], key[2], "status"), body=body)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                obj = request(self.api, "GET", res.path(key[1], key[2]))  # someone else wrote; merge again
                continue
            self._written(key, res, answer)
            return
        raise RuntimeError("gave up after 5 conflicting writes")

    def _written(self, key, res: Resource, answer: dict) -> None:
        self.writes += 1
        answer.setdefault("apiVersion", res.api_version)
        answer.setdefault("kind", res.kind)
        # Only the status changed: record it without waking the loop.
        self.cache.put(key, answer, wake=False)
        log.info("status of %s %s written (generation %s)", key[0], "/".join(filter(None, key[1:])),
                 (answer.get("metadata") or {}).get("generation"))


# --------------------------------------------------------------------------- addresses


class AddressPool:
    """Stable per-Gateway loopback addresses: a hash of ns/name, probing on collisions."""

    def __init__(self, network: str):
        net = ipaddress.ip_network(network, strict=False)
        if net.version != 4 or not net.subnet_of(ipaddress.ip_network("127.0.0.0/8")):
            raise KubeError(f"--listen-address-pool {network}: must be an IPv4 network inside 127.0.0.0/8")
        self.net = net
        self.size = net.num_addresses
        self.by_gateway: dict[tuple[str, str], str] = {}
        self.busy: dict[str, float] = {}  # addresses another process holds, until a time

    def _usable(self, addr: ipaddress.IPv4Address) -> bool:
        last = int(addr) & 0xFF
        return last not in (0, 255) and addr not in RESERVED_LOOPBACK

    def get(self, gw: tuple[str, str], preferred: str | None = None) -> str | None:
        if gw in self.by_gateway:
            return self.by_gateway[gw]
        taken = set(self.by_gateway.values())
        now = time.monotonic()
        if preferred and preferred not in taken and self.busy.get(preferred, 0) < now:
            try:
                addr = ipaddress.ip_address(preferred)
            except ValueError:
                addr = None
            if addr is not None and addr in self.net and self._usable(addr):
                self.by_gateway[gw] = preferred
                return preferred
        start = int.from_bytes(hashlib.sha256(f"{gw[0]}/{gw[1]}".encode()).digest()[:8], "big") % self.size
        for i in range(self.size):
            addr = self.net.network_address + (start + i) % self.size
            text = str(addr)
            if self._usable(addr) and text not in taken and self.busy.get(text, 0) < now:
                self.by_gateway[gw] = text
                return text
        return None

    def mark_busy(self, gw: tuple[str, str], seconds: float = 60.0) -> None:
        addr = self.by_gateway.pop(gw, None)
        if addr:
            self.busy[addr] = time.monotonic() + seconds

    def release_except(self, keep) -> None:
        for gw in [g for g in self.by_gateway if g not in keep]:
            del self.by_gateway[gw]


# --------------------------------------------------------------------------- Services


#: GEP-1762: what an implementation deploys for a Gateway carries the Gateway's name.
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_NAMESPACE_LABEL = "refgateway.mtls-conformance.dev/gateway-namespace"
CONTROLLER_LABEL = "refgateway.mtls-conformance.dev/controller"
MANAGED_BY = ("app.kubernetes.io/managed-by", "refgateway")
SERVICE = Resource("Service", "v1", "services", True)


def parse_selector(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; a KubeError naming the flag for anything else."""
    selector = {}
    for part in text.split(","):
        key, eq, value = part.strip().partition("=")
        if not eq or not key or not value:
            raise KubeError(f"--service-selector {text}: want KEY=VALUE[,KEY=VALUE...] (the pod's labels)")
        selector[key] = value
    return selector


class GatewayServices:
    """One ClusterIP Service per Gateway, in the controller's own namespace.

    The Service selects the controller's pod (``selector``) and maps each listener port
    to the internal port the pod bound for it. It lives in the controller's namespace,
    not the Gateway's, because a Service selects pods of its own namespace only; so it
    cannot be owned by the Gateway (owner references do not cross namespaces) and is
    deleted here when its Gateway is gone, also at start for Gateways deleted while the
    controller was down. Labels: GEP-1762's gateway-name, the Gateway's namespace, and
    a hash of the controllerName (two controllers in one namespace leave each other's
    Services alone). Blocking: run in a thread. Writes only differences, read back from
    the cache (no ``get`` right needed)."""

    def __init__(self, api, cache: Cache, namespace: str, selector: dict[str, str], controller: str):
        self.api, self.cache, self.namespace, self.selector = api, cache, namespace, selector
        self.controller_hash = hashlib.sha256(controller.encode()).hexdigest()[:16]
        self.errors: dict[tuple[str, str], str] = {}  # gateway -> why it has no (up to date) Service

    def name(self, gw: tuple[str, str]) -> str:
        """A DNS-1035 label: readable, and unique by a hash of namespace/name."""
        digest = hashlib.sha256(f"{gw[0]}/{gw[1]}/{self.controller_hash}".encode()).hexdigest()[:8]
        readable = "".join(c if c.isalnum() else "-" for c in f"{gw[1]}-{gw[0]}".lower())
        return f"gw-{readable[:50].strip('-')}-{digest}"

    def labels(self, gw: tuple[str, str]) -> dict[str, str]:
        ns_label = gw[0] if len(gw[0]) <= 63 else hashlib.sha256(gw[0].encode()).hexdigest()[:63]
        name_label = gw[1] if len(gw[1]) <= 63 else hashlib.sha256(gw[1].encode()).hexdigest()[:63]
        return {GATEWAY_NAME_LABEL: name_label, GATEWAY_NAMESPACE_LABEL: ns_label,
                CONTROLLER_LABEL: self.controller_hash, MANAGED_BY[0]: MANAGED_BY[1]}

    def current(self) -> dict[tuple[str, str], dict]:
        """Our Services in the cache, by the Gateway they serve."""
        found = {}
        for (kind, ns, _), svc in self.cache.snapshot().items():
            labels = (svc.get("metadata") or {}).get("labels") or {}
            if kind == "Service" and ns == self.namespace and labels.get(CONTROLLER_LABEL) == self.controller_hash:
                found[self._gateway_of(svc)] = svc
        return found

    def _gateway_of(self, svc: dict) -> tuple[str, str]:
        ann = (svc.get("metadata") or {}).get("annotations") or {}
        return ann.get(GATEWAY_NAMESPACE_LABEL, ""), ann.get(GATEWAY_NAME_LABEL, "")

    def target_port(self, gw: tuple[str, str], port: int) -> int | None:
        """The internal port the Gateway's Service sends ``port`` to now (kept across restarts)."""
        svc = self.current().get(gw) or {}
        for p in (svc.get("spec") or {}).get("ports") or []:
            if p.get("port") == port and isinstance(p.get("targetPort"), int):
                return p["targetPort"]
        return None

    def address(self, gw: tuple[str, str]) -> str | None:
        ip = ((self.current().get(gw) or {}).get("spec") or {}).get("clusterIP")
        return ip if ip and ip != "None" else None

    def sync(self, wanted: dict[tuple[str, str], dict[int, int]]) -> bool:
        """wanted: gateway -> {listener port: internal port}. False when a write failed."""
        ok, errors = True, {}
        current = self.current()
        for gw, ports in sorted(wanted.items()):
            spec = {"type": "ClusterIP", "selector": self.selector, "ports": [
                {"name": f"port-{p}", "port": p, "targetPort": t, "protocol": "TCP"} for p, t in sorted(ports.items())]}
            svc = current.get(gw)
            name = self.name(gw)
            try:
                if svc is None:
                    body = {"apiVersion": "v1", "kind": "Service", "metadata": {
                        "name": name, "namespace": self.namespace, "labels": self.labels(gw),
                        "annotations": {GATEWAY_NAMESPACE_LABEL: gw[0], GATEWAY_NAME_LABEL: gw[1]}}, "spec": spec}
                    answer = request(self.api, "POST", SERVICE.path(self.namespace), body=body)
                    log.info("gateway %s/%s: Service %s/%s created (%s)", *gw, self.namespace, name,
                             (answer.get("spec") or {}).get("clusterIP"))
                elif not self._same(svc.get("spec") or {}, spec):
                    answer = request(self.api, "PATCH", SERVICE.path(self.namespace, svc["metadata"]["name"]),
                                     body={"spec": {"selector": spec["selector"], "ports": spec["ports"]}},
                                     content_type="application/merge-patch+json")
                    log.info("gateway %s/%s: Service %s/%s ports now %s", *gw, self.namespace,
                             svc["metadata"]["name"], ", ".join(f"{p}->{t}" for p, t in sorted(ports.items())))
                else:
                    continue
            except Exception as exc:  # ApiError (403 names the missing right), connection errors
                ok = False
                errors[gw] = f"cannot write Service {self.namespace}/{name}: {_one_line(exc)}"
                log.warning("gateway %s/%s: %s", *gw, errors[gw])
                continue
            answer.setdefault("apiVersion", "v1")
            answer.setdefault("kind", "Service")
            self.cache.put(("Service", self.namespace, answer["metadata"]["name"]), answer, wake=False)
        for gw, svc in sorted(current.items()):
            if gw in wanted:
                continue
            name = svc["metadata"]["name"]
            try:
                request(self.api, "DELETE", SERVICE.path(self.namespace, name))
                log.info("gateway %s/%s is gone: Service %s/%s deleted", *gw, self.namespace, name)
            except ApiError as exc:
                if exc.status != 404:
                    ok = False
                    log.warning("gateway %s/%s is gone: cannot delete Service %s/%s: %s", *gw, self.namespace,
                                name, _one_line(exc))
                    continue
            except Exception as exc:
                ok = False
                log.warning("gateway %s/%s is gone: cannot delete Service %s/%s: %s", *gw, self.namespace, name,
                            _one_line(exc))
                continue
            self.cache.delete(("Service", self.namespace, name))
        self.errors = errors
        return ok

    @staticmethod
    def _same(have: dict, want: dict) -> bool:
        def ports(spec):
            return sorted((p.get("name"), p.get("port"), p.get("targetPort"), p.get("protocol", "TCP"))
                          for p in spec.get("ports") or [])
        return have.get("selector") == want["selector"] and ports(have) == ports(want)


def _one_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, ApiError) else f"{exc.__class__.__name__}: {text}"


# --------------------------------------------------------------------------- the controller


class KubeGateway(Gateway):
    def __init__(self, api, *, controller: str, faults: frozenset[str], pool: AddressPool | None,
                 listen_address: str | None, report_address: str | None, system_ca_bundle: Path | None = None,
                 service_namespace: str | None = None, service_selector: dict[str, str] | None = None):
        super().__init__(None, None, controller=controller, faults=faults,  # type: ignore[arg-type]
                         system_ca_bundle=system_ca_bundle)
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
        sticky = frozenset({"InsecureFrontendValidationMode"}) if "stale-insecure-condition" in self.faults else frozenset()
        self.writer = StatusWriter(self.api, self.cache, self.controller, sticky)
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


# --------------------------------------------------------------------------- command line


def _parser():
    from ._cli import _Parser, add_timeout_arguments

    p = _Parser(prog="python -m refgateway controller",
                description="Run refgateway as a Kubernetes controller (see docs/refgateway.md).")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else in-cluster config)")
    p.add_argument("--context", help="kubeconfig context (default: the current context)")
    p.add_argument("--controller-name", default=translator.DEFAULT_CONTROLLER,
                   help=f"GatewayClass controllerName to own (default {translator.DEFAULT_CONTROLLER})")
    p.add_argument("--system-ca-bundle", type=Path, metavar="FILE", default=None,
                   help="PEM file of the roots that BackendTLSPolicy wellKnownCACertificates: System trusts "
                        "(default: this machine's default verify paths); read when a backend context is built")
    p.add_argument("--fault", action="append", default=[], metavar="NAME",
                   help="enable a deliberate deviation; repeatable; see python -m refgateway --list-faults")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen-address-pool", metavar="CIDR",
                       help=f"give each Gateway its own loopback address from CIDR (default {DEFAULT_POOL}, "
                            "minus 127.0.0.0/24)")
    where.add_argument("--listen-address", metavar="IP",
                       help="bind every Gateway's listeners on IP (in cluster: 0.0.0.0)")
    p.add_argument("--service-namespace", metavar="NS",
                   help="with --listen-address (in cluster: 0.0.0.0): give each Gateway a ClusterIP Service of "
                        "its own in namespace NS (the pod's own), labelled gateway.networking.k8s.io/gateway-name, "
                        "whose ports go to internal ports this process binds; its ClusterIP is the reported "
                        "address. Needs --service-selector")
    p.add_argument("--service-selector", metavar="KEY=VALUE[,...]",
                   help="with --service-namespace: the labels of this controller's pod, the Services' selector")
    p.add_argument("--report-address", metavar="IP",
                   help="with --listen-address: the address to report in Gateway status.addresses "
                        "(e.g. the pod IP); default: the Gateway's spec.addresses, else IP unless unspecified")
    add_timeout_arguments(p)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str]) -> int:
    from .faults import UnknownFault, check_faults

    args = _parser().parse_args(argv)
    try:
        faults = check_faults(args.fault)
        pool = None
        if args.listen_address:
            try:
                ipaddress.ip_address(args.listen_address)
            except ValueError:
                raise KubeError(f"--listen-address {args.listen_address}: not an IP address") from None
        else:
            try:
                pool = AddressPool(args.listen_address_pool or DEFAULT_POOL)
            except ValueError as exc:
                raise KubeError(f"--listen-address-pool {args.listen_address_pool}: {exc}") from None
        selector = None
        if args.service_namespace or args.service_selector:
            if not args.listen_address:
                raise KubeError("--service-namespace needs --listen-address (in cluster: 0.0.0.0)")
            if not (args.service_namespace and args.service_selector):
                raise KubeError("--service-namespace and --service-selector go together (the Services' namespace "
                                "and the labels of this controller's pod)")
            if args.report_address:
                raise KubeError("--report-address does not go with --service-namespace (each Gateway reports "
                                "its Service's ClusterIP)")
            selector = parse_selector(args.service_selector)
        if args.report_address:
            if not args.listen_address:
                raise KubeError("--report-address needs --listen-address (a pool reports each Gateway's own address)")
            try:
                ipaddress.ip_address(args.report_address)
            except ValueError:
                raise KubeError(f"--report-address {args.report_address}: not an IP address") from None
        bundle = args.system_ca_bundle.absolute() if args.system_ca_bundle else None
        if bundle is not None and not bundle.parent.is_dir():
            raise KubeError(f"--system-ca-bundle {args.system_ca_bundle}: its directory does not exist")
        api = connect(args.kubeconfig, args.context)
    except (UnknownFault, KubeError) as exc:
        print(f"refgateway: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s refgateway[%(process)d] %(levelname)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # our own messages say what failed
    gw = KubeGateway(api, controller=args.controller_name, faults=faults, pool=pool,
                     listen_address=args.listen_address, report_address=args.report_address,
                     system_ca_bundle=bundle, service_namespace=args.service_namespace, service_selector=selector)
    from ._cli import timeouts

    gw.timeouts = timeouts(args)
    gw.apply_delay = args.apply_delay or 0.0
    try:
        asyncio.run(gw.run())
    finally:
        api.close()
    return 0
