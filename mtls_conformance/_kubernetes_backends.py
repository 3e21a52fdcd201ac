"""The kubernetes target's backends: Deployments of an echo image with a Service
(``--backend-mode=deployment``), or echo processes on the test host whose Service and
EndpointSlice the harness writes (``--backend-mode=local-process``); see ``kubernetes``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from .target import WORKLOAD_LABEL, Manifest, ProcessHost, ServicePort, TargetCannot, TargetError, settled

SLICE_MANAGER = "mtls-conformance.dev"  # endpointslice.kubernetes.io/managed-by of our slices
#: Upstream's conformance backend (conformance/base/manifests.yaml): HTTP on 3000, HTTPS on
#: 8443 when TLS_SERVER_CERT and TLS_SERVER_PRIVKEY name files, client certificates
#: verified against TLS_CLIENT_CACERTS; POD_NAME and NAMESPACE come from the downward API.
ECHO_IMAGE = "gcr.io/k8s-staging-gateway-api/echo-basic:v20240412-v1.0.0-394-g40c666fd"
ECHO_HTTP_PORT, ECHO_HTTPS_PORT = 3000, 8443


def _api_message(exc: Exception) -> str:
    """The API server's own one-line message out of an ApiException."""
    body = getattr(exc, "body", None)
    try:
        data = json.loads(body) if body else {}
    except (TypeError, ValueError):
        data = {}
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or str(exc)
    return f"{status} {reason}".strip() if status else str(reason).splitlines()[0]


# -- backends ------------------------------------------------------------------------
def echo_backend_manifests(*, namespace: str, service: str, port: int, image: str,
                           tls: Any = None, labels: Mapping[str, str] | None = None) -> list[dict]:
    """Deployment + Service (+ Secret for TLS) of one echo backend, as upstream deploys them.

    ``tls`` has ``cert_chain_pem``, ``key_pem`` and optionally ``client_ca_pem``
    (mtls_conformance.echo.ServerTLS): the image serves HTTPS on 8443 with them.
    """
    if tls is not None and getattr(tls, "require_client_cert", False):
        # echo-basic verifies a client certificate only if one is sent (Go's
        # VerifyClientCertIfGiven): a scenario relying on the backend to demand one
        # would pass against a gateway that sends none.
        raise TargetCannot(f"backend {namespace}/{service} must require a client certificate, which the echo "
                          "image cannot (it verifies one only if given); the nginx backend checks this")
    labels = dict(labels or {})
    app = {WORKLOAD_LABEL: service, "app.kubernetes.io/part-of": "mtls-conformance"}
    env: list[dict] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "SERVICE_NAME", "value": service},
    ]
    container: dict[str, Any] = {
        "name": "echo", "image": image, "env": env,
        "ports": [{"name": "http", "containerPort": ECHO_HTTP_PORT}],
        "readinessProbe": {"tcpSocket": {"port": ECHO_HTTP_PORT}, "periodSeconds": 1},
        "resources": {"requests": {"cpu": "10m"}},
    }
    pod_spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 1}
    objects: list[dict] = []
    if tls is not None:
        secret = f"{service}-echo-tls"
        data = {"tls.crt": tls.cert_chain_pem.decode("ascii"), "tls.key": tls.key_pem.decode("ascii")}
        env += [{"name": "TLS_SERVER_CERT", "value": "/etc/echo-tls/tls.crt"},
                {"name": "TLS_SERVER_PRIVKEY", "value": "/etc/echo-tls/tls.key"}]
        if getattr(tls, "client_ca_pem", None):
            data["ca.crt"] = tls.client_ca_pem.decode("ascii")
            env.append({"name": "TLS_CLIENT_CACERTS", "value": "/etc/echo-tls/ca.crt"})
        container["ports"].append({"name": "https", "containerPort": ECHO_HTTPS_PORT})
        container["volumeMounts"] = [{"name": "tls", "mountPath": "/etc/echo-tls", "readOnly": True}]
        pod_spec["volumes"] = [{"name": "tls", "secret": {"secretName": secret}}]
        objects.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": secret, "namespace": namespace, "labels": labels},
                        "stringData": data})
    target_port = ECHO_HTTPS_PORT if tls is not None else ECHO_HTTP_PORT
    objects += [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": service, "namespace": namespace, "labels": {**labels, **app}},
         "spec": {"replicas": 1, "selector": {"matchLabels": app},
                  "template": {"metadata": {"labels": {**labels, **app}}, "spec": pod_spec}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": service, "namespace": namespace, "labels": labels},
         "spec": {"selector": app, "ports": [{"name": "https" if tls is not None else "http", "port": port,
                                              "protocol": "TCP", "targetPort": target_port}]}},
    ]
    return objects


#: What echo-basic prints for each request it answers (conformance/echo-basic/echo-basic.go).
_ECHO_BASIC_LOG = re.compile(r"^Echoing back request made to (\S+) to client \((\S+)\)\s*$")


def parse_echo_log(text: str) -> list[dict]:
    """The requests in an echo backend's log. Our echo image logs each answer as a JSON
    line ``{"request": ...}`` (``tls`` only over TLS); echo-basic logs path and client
    address only, so its entries have ``tls: None`` (unknown)."""
    entries = []
    for line in text.splitlines():
        if line.startswith('{"request": '):
            entries.append(json.loads(line)["request"])
        elif m := _ECHO_BASIC_LOG.match(line):
            entries.append({"path": m.group(1), "remote": m.group(2), "tls": None})
    return entries


class _DeployedBackend:
    """A backend Deployment: an address only inside the cluster; its requests are read
    from its pods' logs (the log of a restarted container is not included)."""

    def __init__(self, target: KubernetesBackends, namespace: str, service: str,
                 parse_log: Callable[[str], list[dict]]) -> None:
        self.namespace, self.service = namespace, service
        self._target, self._parse_log = target, parse_log

    #: A pod's log trails its answers (the container runtime, then the API server): a read
    #: counts only once the log has stayed the same this long.
    LOG_QUIET = 1.0
    LOG_TIMEOUT = 10.0

    #: How long after the client was answered (or refused) a request that reached the pod
    #: may still be missing from what read_requests() returns: the line goes through the
    #: container runtime's log file, then the kubelet and the API server. The bound of the
    #: check that a refused request reached no backend (GatewayClient.expect_rejected).
    #: Measured on the one-node tier (tests/node/test_nodecluster.py::
    #: test_a_request_is_in_the_pods_log_within_the_harness_bound, 2 cores shared with a Go
    #: build, 2026-12-06), 30 requests each: echo-basic min 5 / median 11 / max 87 ms, our
    #: echo image min 7 / median 13 / max 45 ms. The bound is ten times the worst seen.
    log_lag = 1.0

    @property
    def requests(self) -> list[dict]:
        return settled(self.read_requests, quiet=self.LOG_QUIET, timeout=self.LOG_TIMEOUT)

    def read_requests(self) -> list[dict]:
        """The requests in the pods' logs as they are now, without waiting for them to settle."""
        return self._parse_log(self._target.pod_logs(self.namespace, f"{WORKLOAD_LABEL}={self.service}"))

    def stop(self) -> None:
        pass  # deleted with its namespace


class KubernetesBackends:
    """The backend methods of ``KubernetesTarget`` (a mixin: it uses the target's
    ``apply``, ``_resource``, ``_api``, ``backend_mode``, ``echo_image``, ``_test_host``,
    ``_tmp`` and ``_backends``)."""

    def publish_service(self, namespace: str, name: str, ports: list[ServicePort]) -> None:
        hosts = sorted({p.address[0] for p in ports})
        if len(hosts) != 1:
            raise TargetError(f"Service {namespace}/{name}: all ports must be served from one address, got {hosts}")
        if ipaddress.ip_address(hosts[0]).is_loopback:
            raise TargetError(f"Service {namespace}/{name}: the API server refuses loopback endpoint addresses "
                              f"such as {hosts[0]}; start backends with Target.start_backend, which runs them "
                              "where the gateway can reach them")
        service_ports = []
        for p in ports:
            entry = {"name": p.name, "port": p.port, "protocol": "TCP", "targetPort": p.address[1]}
            if p.app_protocol:
                entry["appProtocol"] = p.app_protocol
            service_ports.append(entry)
        family = "IPv6" if ":" in hosts[0] else "IPv4"
        self.apply(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
             "spec": {"type": "ClusterIP", "ports": service_ports}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-harness", "namespace": namespace,
                          "labels": {"kubernetes.io/service-name": name,
                                     "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER}},
             "addressType": family,
             "endpoints": [{"addresses": hosts, "conditions": {"ready": True}}],
             "ports": [{"name": p.name, "port": p.address[1], "protocol": "TCP"} for p in ports]},
        )

    def start_backend(self, *, namespace: str, service: str, port: int, tls: Any = None) -> Any:
        if self.backend_mode == "deployment":
            return self._deploy_backend(namespace=namespace, service=service, port=port, tls=tls)
        from .echo import EchoProcess  # run in the test host

        host = self.backend_process_host()
        server = EchoProcess(namespace=namespace, service=service, pod=f"{service}-0", tls=tls,
                             host=host.address, command_prefix=host.command_prefix,
                             log_path=str(self._tmp / f"echo-{namespace}-{service}.log"))
        self._backends.append(server)  # before start(): an interrupted start is stopped by close()
        try:
            server.start()
        except RuntimeError as exc:
            raise TargetError(str(exc)) from None
        self.publish_service(namespace, service, [
            ServicePort(name="https" if tls else "http", port=port, address=server.address)])
        self.record_backend(namespace, server)
        return server

    def backend_process_host(self) -> ProcessHost:
        if self._test_host is None:
            raise TargetCannot("--backend-mode=deployment runs backends only as Deployments of --echo-image; "
                              "processes of the harness need --backend-mode=local-process")
        return ProcessHost(self._test_host.address, self._test_host.command_prefix)

    def start_multiport_backend(self, *, namespace: str, service: str,
                                ports: list[tuple[str, int, Any]]) -> dict[str, Any]:
        if self.backend_mode != "deployment":
            return super().start_multiport_backend(namespace=namespace, service=service, ports=ports)
        # One echo pod serves HTTP on 3000 and, with a certificate, HTTPS on 8443: each
        # Service port targets one of them, so TLS ports must share one certificate.
        tls_configs = {tls for _, _, tls in ports if tls is not None}
        if len(tls_configs) > 1:
            raise TargetCannot(f"Service {namespace}/{service}: with --backend-mode=deployment its TLS ports are one "
                              "echo pod's HTTPS port, so they must share one certificate")
        tls = next(iter(tls_configs), None)
        objects = echo_backend_manifests(namespace=namespace, service=service, port=ports[0][1],
                                         image=self.echo_image, tls=tls)
        svc = next(o for o in objects if o["kind"] == "Service")
        svc["spec"]["ports"] = [{"name": name, "port": port, "protocol": "TCP",
                                 "targetPort": ECHO_HTTPS_PORT if port_tls is not None else ECHO_HTTP_PORT}
                                for name, port, port_tls in ports]
        backend = self.deploy_workload(objects, namespace=namespace, service=service, parse_log=parse_echo_log)
        return {name: backend for name, _, _ in ports}

    def _deploy_backend(self, *, namespace: str, service: str, port: int, tls: Any) -> _DeployedBackend:
        return self.deploy_workload(echo_backend_manifests(namespace=namespace, service=service, port=port,
                                                           image=self.echo_image, tls=tls),
                                    namespace=namespace, service=service, parse_log=parse_echo_log)

    def deploy_workload(self, objects: list[Manifest], *, namespace: str, service: str,
                        parse_log: Callable[[str], list[dict]]) -> _DeployedBackend:
        for obj in objects:
            if obj["kind"] == "Deployment" and (obj["spec"]["template"]["metadata"].get("labels") or {}).get(
                    WORKLOAD_LABEL) != service:
                raise TargetError(f"Deployment {namespace}/{obj['metadata']['name']}: its pods need the label "
                                  f"{WORKLOAD_LABEL}={service} (their logs are the backend's request log)")
        self.apply(*objects)
        images = sorted({c["image"] for o in objects if o["kind"] == "Deployment"
                         for c in o["spec"]["template"]["spec"]["containers"]})
        self._wait_for_ready_endpoints(namespace, service, timeout=120, images=images)
        self.changed()  # the Service's endpoints changed just now, not when it was applied
        backend = _DeployedBackend(self, namespace, service, parse_log)
        self.record_backend(namespace, backend)
        return backend

    def pod_logs(self, namespace: str, selector: str) -> str:
        """The logs of the pods that ``selector`` matches, one after another."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self._api)
        try:
            pods = core.list_namespaced_pod(namespace, label_selector=selector).items
            if not pods:  # an empty log would read as "no requests"
                raise TargetError(f"no pod with label {selector} in namespace {namespace}: its log is the "
                                  "backend's request log")
            # A pod that has not started yet has no log (204 No Content): no requests.
            return "\n".join(core.read_namespaced_pod_log(pod.metadata.name, namespace) or "" for pod in pods)
        except ApiException as exc:
            raise TargetError(f"cannot read the logs of pods {selector} in namespace {namespace}: "
                              f"{_api_message(exc)}") from None

    def _wait_for_ready_endpoints(self, namespace: str, service: str, *, timeout: float,
                                  images: list[str]) -> None:
        from kubernetes import watch

        slices = self._resource("discovery.k8s.io/v1", "EndpointSlice")
        selector = f"kubernetes.io/service-name={service}"
        deadline = time.monotonic() + timeout

        def ready(items: list[dict]) -> bool:
            return any((e.get("conditions") or {}).get("ready") for s in items for e in s.get("endpoints") or [])

        listing = slices.get(namespace=namespace, label_selector=selector).to_dict()
        seen = {s["metadata"]["name"]: s for s in listing.get("items") or []}
        version = listing["metadata"]["resourceVersion"]
        while not ready(list(seen.values())):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TargetError(f"backend {namespace}/{service} (image {', '.join(images)}) has no ready endpoint "
                                  f"after {timeout:.0f} s; see `kubectl -n {namespace} describe deployment {service}`")
            watcher = watch.Watch()
            for event in watcher.stream(slices.get, namespace=namespace, label_selector=selector,
                                        resource_version=version, serialize=False,
                                        timeout_seconds=max(1, math.ceil(remaining)), _request_timeout=remaining + 10):
                obj = event["object"]
                if event["type"] == "DELETED":
                    seen.pop(obj["metadata"]["name"], None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    seen[obj["metadata"]["name"]] = obj
                if ready(list(seen.values())):
                    watcher.stop()
                    break
            version = watcher.resource_version or version
