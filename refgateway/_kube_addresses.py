"""Controller mode's addresses: a loopback address per Gateway out of cluster, a Service per
Gateway in cluster (``_kube``'s design note).

This module must not import the harness (``mtls_conformance``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time

from ._kube_api import ApiError, KubeError, Resource, request
from ._kube_informer import Cache

log = logging.getLogger("refgateway")

DEFAULT_POOL = "127.0.0.0/16"
RESERVED_LOOPBACK = ipaddress.ip_network("127.0.0.0/24")  # 127.0.0.1 and friends belong to other services


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
            key = ("Service", self.namespace, answer["metadata"]["name"])
            if svc is None:
                self.cache.put(key, answer, wake=False)  # ours: no one else deletes it
            else:
                self.cache.refresh(key, answer)  # unless it was deleted meanwhile after all
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
