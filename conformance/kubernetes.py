"""The kubernetes target: the Gateway API implementation of a real cluster.

``pytest --gateway-class=NAME`` runs the scenarios against the cluster of the current
kubeconfig context (or ``--kubeconfig FILE --context NAME``). The harness talks only to
the API server and to the addresses the Gateways report:

- objects are applied with server-side apply (field manager ``mtls-conformance``) and
  labelled with the run id; each scenario module gets a namespace of its own, labelled
  ``mtls-conformance.dev/managed=true``, and deleted with its content afterwards;
- waits are watches on the one object (``metadata.name`` field selector) from the
  resourceVersion that was read, bounded by the wait's deadline;
- a listener is reached at the Gateway's ``status.addresses[0]`` and the listener's own
  port, or through ``kubectl port-forward`` with ``--gateway-address-mode=port-forward``;
- backends are Deployments of an echo image with a Service (``--backend-mode=
  deployment``), or echo processes on this machine (``--backend-mode=local-process``),
  for a gateway that runs on this machine against an API server without kubelets (the
  project's test tier). The API server refuses loopback endpoint addresses, so those
  processes run on a "test host" that a plugin provides (hook ``pytest_mtls_process_host``;
  the project's is a network namespace, tests/cluster/testhost.py), and the harness
  writes the Service and its EndpointSlice.

Nothing here knows about a particular implementation.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import ipaddress
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .processes import spawn, uninterrupted
from .target import (PROGRESS_AFTER, WORKLOAD_LABEL, Manifest, ObjectRef, ProcessHost, Progress, ServicePort,
                     SystemRootsFile, SystemRootsUnavailable, Target, TargetCannot, TargetError, WaitTimeout, conditions_of,
                     describe_conditions, find_condition, settled)

__all__ = ["KubernetesTarget", "echo_backend_manifests", "MANAGED_LABEL", "RUN_LABEL"]

FIELD_MANAGER = "mtls-conformance"
MANAGED_LABEL = "mtls-conformance.dev/managed"
RUN_LABEL = "mtls-conformance.dev/run"
SLICE_MANAGER = "mtls-conformance.dev"  # endpointslice.kubernetes.io/managed-by of our slices

MIN_GATEWAY_API = (1, 5, 0)
CRD_INSTALL = ("kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/"
               "releases/download/v1.7.0/standard-install.yaml")
CLUSTER_HINT = "kind create cluster --config kind-config.yaml"
#: Upstream's conformance backend (conformance/base/manifests.yaml): HTTP on 3000, HTTPS on
#: 8443 when TLS_SERVER_CERT and TLS_SERVER_PRIVKEY name files, client certificates
#: verified against TLS_CLIENT_CACERTS; POD_NAME and NAMESPACE come from the downward API.
ECHO_IMAGE = "gcr.io/k8s-staging-gateway-api/echo-basic:v20240412-v1.0.0-394-g40c666fd"
ECHO_HTTP_PORT, ECHO_HTTPS_PORT = 3000, 8443

GATEWAY_CRD = "gateways.gateway.networking.k8s.io"
REQUIRED_CRDS = (GATEWAY_CRD, "gatewayclasses.gateway.networking.k8s.io",
                 "httproutes.gateway.networking.k8s.io")
#: Namespaced kinds the harness creates; a namespace's content is deleted kind by kind
#: because a test API server has no namespace controller to do it.
#: Kinds whose manifests name one API version where a cluster may serve the same schema
#: only in another: ClusterTrustBundle is certificates.k8s.io/v1 from Kubernetes v1.37 and
#: v1beta1 (feature gate and runtime-config) in v1.33 to v1.36.
SAME_SCHEMA_VERSIONS = {
    ("certificates.k8s.io/v1", "ClusterTrustBundle"): ("certificates.k8s.io/v1beta1",
                                                       "certificates.k8s.io/v1alpha1"),
}
CONTENT_KINDS = (
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
    ("gateway.networking.k8s.io/v1", "BackendTLSPolicy"),
    ("apps/v1", "Deployment"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("v1", "Service"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
)
#: How long the GatewayClass may take to become Accepted when the run starts.
CLASS_TIMEOUT = 30.0
NAMESPACE_DELETE_TIMEOUT = 60.0
PORT_FORWARD_TIMEOUT = 30.0
#: Longest single watch request; the wait's deadline bounds it too.
WATCH_SEGMENT = 30


def _version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?", text or "")
    return tuple(int(g) for g in match.groups()) if match else None


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

    def __init__(self, target: KubernetesTarget, namespace: str, service: str,
                 parse_log: Callable[[str], list[dict]]) -> None:
        self.namespace, self.service = namespace, service
        self._target, self._parse_log = target, parse_log

    #: A pod's log trails its answers (the container runtime, then the API server): a read
    #: counts only once the log has stayed the same this long.
    LOG_QUIET = 1.0
    LOG_TIMEOUT = 10.0

    @property
    def requests(self) -> list[dict]:
        return settled(lambda: self._parse_log(self._target.pod_logs(self.namespace, f"{WORKLOAD_LABEL}={self.service}")),
                       quiet=self.LOG_QUIET, timeout=self.LOG_TIMEOUT)

    def stop(self) -> None:
        pass  # deleted with its namespace


# -- the target ----------------------------------------------------------------------
class KubernetesTarget(Target):
    kind = "kubernetes"

    @classmethod
    def from_options(cls, config: Any, *, progress: Progress | None = None) -> KubernetesTarget:
        gateway_class = config.getoption("gateway_class")
        if not gateway_class:
            raise TargetError("--target=kubernetes needs --gateway-class NAME (the GatewayClass of the "
                              "implementation under test)")
        return cls(gateway_class=gateway_class,
                   kubeconfig=config.getoption("kubeconfig"),
                   context=config.getoption("context"),
                   address_mode=config.getoption("gateway_address_mode"),
                   backend_mode=config.getoption("backend_mode"),
                   echo_image=config.getoption("echo_image") or ECHO_IMAGE,
                   system_ca_bundle=config.getoption("system_ca_bundle"),
                   process_host=config.hook.pytest_mtls_process_host(config=config)
                   if config.getoption("backend_mode") == "local-process" else None,
                   progress=progress)

    def __init__(self, *, gateway_class: str, kubeconfig: str | None = None, context: str | None = None,
                 address_mode: str = "status", backend_mode: str = "deployment",
                 echo_image: str = ECHO_IMAGE, system_ca_bundle: str | None = None,
                 progress: Progress | None = None, class_timeout: float = CLASS_TIMEOUT,
                 process_host: Any = None) -> None:
        super().__init__(progress=progress)
        if address_mode not in ("status", "port-forward"):
            raise TargetError(f"--gateway-address-mode must be 'status' or 'port-forward', not {address_mode!r}")
        if backend_mode not in ("deployment", "local-process"):
            raise TargetError(f"--backend-mode must be 'deployment' or 'local-process', not {backend_mode!r}")
        self.gateway_class = gateway_class
        self.address_mode = address_mode
        self.backend_mode = backend_mode
        self.echo_image = echo_image
        self.kubeconfig = kubeconfig
        #: The gateway's system trust store, as a file the harness may write (--system-ca-bundle).
        self.system_roots = SystemRootsFile(Path(system_ca_bundle)) if system_ca_bundle else None
        self.run_id = uuid.uuid4().hex[:8]
        self._tmp = Path(tempfile.mkdtemp(prefix="mtls-kube-"))
        self._namespaces: list[str] = []
        #: Cluster-scoped objects applied other than Namespaces (ClusterTrustBundles): no
        #: namespace deletion takes them away, so close() deletes them.
        self._cluster_objects: dict[ObjectRef, None] = {}
        self._backends: list[Any] = []
        self._forwards: dict[tuple[ObjectRef, int], tuple[subprocess.Popen, tuple[str, int]]] = {}
        #: Where --backend-mode=local-process runs backends: ``create()``, ``destroy()``,
        #: ``address`` and ``command_prefix`` (see conformance/hookspecs.py).
        self._test_host: Any = None
        self._resources: dict[tuple[str, str], Any] = {}
        self._api = None
        self._closed = False
        try:
            self._connect(kubeconfig, context)
            self._check_crds()
            self.controller_name = self._check_gateway_class(class_timeout)
            if backend_mode == "local-process":
                if process_host is None:
                    raise TargetError("--backend-mode=local-process needs a test host to run backends on, "
                                      "from a plugin implementing pytest_mtls_process_host (the project's "
                                      "own: -p tests.cluster.testhost in a clone); else use "
                                      "--backend-mode=deployment")
                # Made now, not at the first backend: without root this is one error
                # before any test, not an error in every test.
                self._test_host = process_host
                self._test_host.create()
        except BaseException:
            self.close()
            raise

    # -- connecting and the preflight checks -----------------------------------------
    def _connect(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import config as kconfig
        from kubernetes import dynamic
        from kubernetes.config.config_exception import ConfigException

        source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            self._api = kconfig.new_client_from_config(config_file=kubeconfig, context=context)
        except ConfigException as exc:
            raise TargetError(f"cannot use kubeconfig {source}{f' context {context}' if context else ''}: "
                              f"{str(exc).splitlines()[0]}; pass --kubeconfig FILE and --context NAME, or "
                              f"create a cluster with `{CLUSTER_HINT}`") from None
        except OSError as exc:
            raise TargetError(f"cannot read kubeconfig {source}: {exc.strerror or exc}; pass --kubeconfig FILE, "
                              f"or create a cluster with `{CLUSTER_HINT}`") from None
        self.server = self._api.configuration.host
        # Fail fast and name the server: the client's default is to retry for minutes.
        self._api.configuration.retries = False
        try:
            # Any HTTP answer, even 401, shows that a server is there; the pool manager is
            # the one part of the client's transport that has not changed across versions.
            self._api.rest_client.pool_manager.request("GET", f"{self.server}/version", timeout=5, retries=False)
        except Exception as exc:  # urllib3 and ssl errors have no common base worth naming
            why = str(getattr(exc, "reason", None) or exc).splitlines()[0]
            why = re.sub(r"^<urllib3[^>]*>: ", "", why)
            raise TargetError(f"no Kubernetes API server reachable at {self.server} ({why}); start a cluster "
                              f"with `{CLUSTER_HINT}` or point --kubeconfig/--context at one") from None
        self._dyn = dynamic.DynamicClient(self._api, cache_file=str(self._tmp / "discovery.json"))

    def _resource(self, api_version: str, kind: str):
        key = (api_version, kind)
        if key not in self._resources:
            from kubernetes.dynamic.exceptions import ResourceNotFoundError
            for candidate in (api_version, *SAME_SCHEMA_VERSIONS.get(key, ())):
                try:
                    self._resources[key] = self._dyn.resources.get(api_version=candidate, kind=kind)
                    break
                except ResourceNotFoundError:
                    continue
            else:
                also = SAME_SCHEMA_VERSIONS.get(key, ())
                raise TargetError(f"the API server at {self.server} does not serve {kind} in {api_version}"
                                  + (f" (nor in {', '.join(also)})" if also else "")) from None
        return self._resources[key]

    def _check_crds(self) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        crds = self._resource("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        found = {}
        for name in REQUIRED_CRDS:
            try:
                found[name] = crds.get(name=name).to_dict()
            except NotFoundError:
                pass
        missing = [n for n in REQUIRED_CRDS if n not in found]
        if missing:
            raise TargetError(f"the Gateway API CRDs are not installed at {self.server} (missing "
                              f"{', '.join(missing)}); install v1.5.0 or later: {CRD_INSTALL}")
        gateway = found[GATEWAY_CRD]
        version = (gateway["metadata"].get("annotations") or {}).get("gateway.networking.k8s.io/bundle-version", "")
        served = [v["name"] for v in gateway["spec"]["versions"] if v.get("served")]
        parsed = _version_tuple(version)
        if parsed is None or parsed < MIN_GATEWAY_API or "v1" not in served:
            raise TargetError(f"the Gateway API CRDs at {self.server} are {version or 'of unknown version'}; the "
                              f"suite needs v1.5.0 or later (Gateway v1 with spec.tls.frontend): {CRD_INSTALL}")
        self.gateway_api_version = version

    def _check_gateway_class(self, timeout: float) -> str:
        ref = ObjectRef("GatewayClass", self.gateway_class)
        obj = self.get(ref)
        if obj is None:
            names = sorted(item["metadata"]["name"] for item in
                           self._resource(ref.api_version, "GatewayClass").get().to_dict()["items"])
            known = f"; GatewayClasses there: {', '.join(names)}" if names else "; there is none"
            raise TargetError(f"GatewayClass {self.gateway_class} does not exist at {self.server}{known}; "
                              f"install the implementation or pass the right --gateway-class")
        controller = obj["spec"]["controllerName"]

        def answered(obj: dict | None) -> str | None:
            # Accepted=False at the current generation is the controller's answer: no
            # point in waiting for it to change its mind.
            cond = find_condition(conditions_of(obj), "Accepted")
            if obj and cond and cond.get("status") in ("True", "False") and \
                    cond.get("observedGeneration") == obj["metadata"].get("generation"):
                return None
            return describe_conditions(conditions_of(obj))

        try:
            latest = self.wait_for(ref, answered, what="an answer in condition Accepted", timeout=timeout)
        except WaitTimeout:
            raise TargetError(f"GatewayClass {self.gateway_class} (controllerName {controller}) is not Accepted "
                              f"after {timeout:.0f} s: {describe_conditions(conditions_of(self.get(ref)))}; is "
                              f"its controller running?") from None
        if find_condition(conditions_of(latest), "Accepted").get("status") != "True":
            raise TargetError(f"GatewayClass {self.gateway_class} (controllerName {controller}) is not Accepted: "
                              f"{describe_conditions(conditions_of(latest))}")
        return controller

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Cleanup must finish even if the user presses Ctrl-C again while it runs.
        with uninterrupted():
            try:
                for backend in reversed(self._backends):
                    with contextlib.suppress(Exception):
                        backend.stop()
                self._backends.clear()
                for proc, _ in self._forwards.values():
                    _stop_process(proc)
                self._forwards.clear()
                if self._api is not None:
                    for ref in reversed(list(self._cluster_objects)):
                        try:
                            self.delete(ref)
                        except Exception as exc:
                            self._progress(f"could not delete {ref}: {exc}")
                    for name in list(self._namespaces):
                        try:
                            self._delete_namespace(name)
                        except Exception as exc:
                            self._progress(f"could not delete namespace {name}: {exc}")
                if self._test_host is not None:
                    self._test_host.destroy()
                if self.system_roots is not None:
                    self.system_roots.restore()
                if self._api is not None:
                    with contextlib.suppress(Exception):
                        self._api.close()
            finally:
                shutil.rmtree(self._tmp, ignore_errors=True)

    # -- objects ---------------------------------------------------------------------
    def _labelled(self, obj: Manifest) -> dict:
        new = copy.deepcopy(dict(obj))
        meta = new.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), RUN_LABEL: self.run_id}
        for field in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"):
            meta.pop(field, None)
        new.pop("status", None)
        return new

    def create_namespace(self, name: str) -> None:
        self._namespaces.append(name)
        self.apply({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": {MANAGED_LABEL: "true"}}})

    def keep_namespace(self, name: str) -> str | None:
        if name in self._namespaces:
            self._namespaces.remove(name)  # close() leaves it alone
        for backend in [b for b in self._backends if getattr(b, "namespace", None) == name]:
            if isinstance(backend, _DeployedBackend):
                self._backends.remove(backend)  # a Deployment in the namespace: kept with it
        return f"kubectl get all,gateways,httproutes,backendtlspolicies -n {name}; delete: kubectl delete namespace {name}"

    def delete_namespace(self, name: str) -> None:
        if self._closed or name not in self._namespaces:
            return  # close() got there first (pytest tears fixtures down after the session hook)
        for backend in [b for b in self._backends if getattr(b, "namespace", None) == name]:
            backend.stop()
            self._backends.remove(backend)
        self._delete_namespace(name)

    def _delete_namespace(self, name: str) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        for api_version, kind in CONTENT_KINDS:
            try:
                resource = self._resource(api_version, kind)
            except TargetError:
                continue  # e.g. BackendTLSPolicy on older CRDs: nothing of that kind exists
            with contextlib.suppress(NotFoundError):
                resource.delete(namespace=name, field_selector=f"metadata.namespace={name}")
        from kubernetes.dynamic.exceptions import ConflictError

        namespaces = self._resource("v1", "Namespace")
        try:
            namespaces.delete(name=name)
        except NotFoundError:
            self._namespaces.remove(name)
            return
        except ConflictError:
            pass  # already Terminating: an earlier, interrupted delete
        controlled = self._has_namespace_controller(name)
        if not controlled:
            self._finalize_namespace(name)
        ref = ObjectRef("Namespace", name, api_version="v1")
        try:
            self.wait_for(ref, lambda obj: None if obj is None else f"it is {obj.get('status', {}).get('phase')}",
                          what="the namespace to be gone", timeout=NAMESPACE_DELETE_TIMEOUT)
        except WaitTimeout as exc:
            if not controlled:
                raise
            # The cluster's namespace controller is still at it (pods may take their
            # grace period); it will finish without us.
            self._progress(f"namespace {name} is still terminating, left to the cluster: {exc}")
        finally:
            self._namespaces.remove(name)

    def _has_namespace_controller(self, namespace: str) -> bool:
        # kube-controller-manager gives every namespace a "default" ServiceAccount within
        # moments; the project's test API server runs without one, so nothing would ever
        # empty and finalize a deleted namespace there.
        from kubernetes.dynamic.exceptions import NotFoundError
        try:
            self._resource("v1", "ServiceAccount").get(name="default", namespace=namespace)
            return True
        except NotFoundError:
            return False

    def _finalize_namespace(self, name: str) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError
        try:
            ns = self._resource("v1", "Namespace").get(name=name).to_dict()
        except NotFoundError:
            return
        ns.setdefault("spec", {})["finalizers"] = []
        with contextlib.suppress(NotFoundError):
            self._dyn.request("put", f"/api/v1/namespaces/{name}/finalize", body=ns)

    def apply(self, *objects: Manifest) -> None:
        from kubernetes.dynamic.exceptions import DynamicApiError

        for obj in objects:
            if not isinstance(obj, Mapping) or not obj.get("apiVersion") or not obj.get("kind") or \
                    not (obj.get("metadata") or {}).get("name"):
                raise TargetError(f"a manifest needs apiVersion, kind and metadata.name: {obj!r:.200}")
        for obj in objects:
            ref = ObjectRef.of(obj)
            resource = self._resource(ref.api_version, ref.kind)
            if resource.namespaced and not ref.namespace:
                raise TargetError(f"{ref.kind} {ref.name} has no metadata.namespace")
            body = self._labelled(obj)
            body["apiVersion"] = resource.group_version  # the served version (SAME_SCHEMA_VERSIONS)
            if not resource.namespaced:
                body["metadata"].pop("namespace", None)
            try:
                resource.server_side_apply(body, name=ref.name, namespace=ref.namespace if resource.namespaced
                                           else None, field_manager=FIELD_MANAGER, force_conflicts=True)
            except DynamicApiError as exc:
                raise TargetError(f"the API server refused {ref}: {_api_message(exc)}") from None
            if not resource.namespaced and ref.kind != "Namespace":
                self._cluster_objects[dataclasses.replace(ref, namespace=None)] = None

    def delete(self, *objects: Manifest | ObjectRef) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        for obj in objects:
            ref = obj if isinstance(obj, ObjectRef) else ObjectRef.of(obj)
            with contextlib.suppress(NotFoundError):
                self._resource(ref.api_version, ref.kind).delete(name=ref.name, namespace=ref.namespace)

    @staticmethod
    def _clean(obj: dict) -> dict:
        (obj.get("metadata") or {}).pop("managedFields", None)
        return obj

    def get(self, ref: ObjectRef) -> dict | None:
        from kubernetes.dynamic.exceptions import NotFoundError
        try:
            return self._clean(self._resource(ref.api_version, ref.kind).get(
                name=ref.name, namespace=ref.namespace).to_dict())
        except NotFoundError:
            return None

    def _observe(self, ref: ObjectRef, deadline: float) -> Iterator[dict | None]:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        resource = self._resource(ref.api_version, ref.kind)
        selector = f"metadata.name={ref.name}"
        # A quiet watch yields nothing, and wait_for can only say what it waits for when
        # something is yielded: the first watch ends soon after PROGRESS_AFTER, and every
        # watch's end yields the object again.
        segment = math.ceil(PROGRESS_AFTER) + 1
        while True:
            listing = resource.get(namespace=ref.namespace, field_selector=selector).to_dict()
            items = listing.get("items") or []
            # List items carry no apiVersion/kind; the waits do not need them, callers might.
            yield self._clean({"apiVersion": ref.api_version, "kind": ref.kind, **items[0]}) if items else None
            version = listing["metadata"]["resourceVersion"]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            watcher = watch.Watch()
            try:
                for event in watcher.stream(resource.get, namespace=ref.namespace, field_selector=selector,
                                            resource_version=version, serialize=False,
                                            timeout_seconds=max(1, min(segment, math.ceil(remaining))),
                                            _request_timeout=remaining + 10):
                    kind = event.get("type")
                    if kind == "DELETED":
                        yield None
                    elif kind in ("ADDED", "MODIFIED"):
                        yield self._clean(event["object"])
                    if time.monotonic() >= deadline:
                        return
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: our resourceVersion is too old; list again
                    raise
            finally:
                watcher.stop()
            segment = WATCH_SEGMENT
            if time.monotonic() >= deadline:
                return

    # -- backends --------------------------------------------------------------------
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
        return server

    def backend_process_host(self) -> ProcessHost:
        if self._test_host is None:
            raise TargetCannot("--backend-mode=deployment runs backends only as Deployments of --echo-image; "
                              "processes of the harness need --backend-mode=local-process")
        return ProcessHost(self._test_host.address, self._test_host.command_prefix)

    def trust_as_system_roots(self, ca_pem: bytes) -> None:
        if self.system_roots is None:
            raise SystemRootsUnavailable(
                "the kubernetes target cannot add roots to the gateway's system trust store unless "
                "--system-ca-bundle names the file the gateway reads them from")
        self.system_roots.add(ca_pem)

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
        return _DeployedBackend(self, namespace, service, parse_log)

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

    # -- addresses -------------------------------------------------------------------
    def listener_address(self, gateway: ObjectRef, port: int) -> tuple[str, int]:
        if self.address_mode == "port-forward":
            return self._port_forward(gateway, port)

        def check(obj: dict | None) -> str | None:
            if obj is None:
                return "the Gateway does not exist"
            if not (obj.get("status") or {}).get("addresses"):
                return "status.addresses is empty"
            return None

        obj = self.wait_for(gateway, check, what="an address in status.addresses", timeout=30)
        assert obj is not None
        return obj["status"]["addresses"][0]["value"], port

    def _forward_target(self, gateway: ObjectRef) -> tuple[str, str]:
        """(namespace, service/NAME or pod/NAME) that `kubectl port-forward` reaches the Gateway through."""
        # GEP-1762: implementations label what they deploy for a Gateway with its name.
        services = self._resource("v1", "Service").get(
            namespace=gateway.namespace,
            label_selector=f"gateway.networking.k8s.io/gateway-name={gateway.name}").to_dict()["items"]
        if services:
            return gateway.namespace, f"service/{services[0]['metadata']['name']}"
        # A data plane shared by many Gateways (one Service or pod for all, elsewhere)
        # carries no such label: forward to whatever owns the address the Gateway reports.
        def reported(obj: dict | None) -> str | None:
            return None if obj and (obj.get("status") or {}).get("addresses") else "status.addresses is empty"

        obj = self.wait_for(gateway, reported, what="an address in status.addresses", timeout=30)
        addresses = [a.get("value") for a in (obj or {})["status"]["addresses"]
                     if a.get("type", "IPAddress") == "IPAddress"]
        for address in addresses[:1]:
            for svc in self._resource("v1", "Service").get().to_dict()["items"]:
                spec, status = svc.get("spec") or {}, svc.get("status") or {}
                owned = {spec.get("clusterIP"), *(spec.get("externalIPs") or []),
                         *(i.get("ip") for i in (status.get("loadBalancer") or {}).get("ingress") or [])}
                if address in owned and spec.get("selector"):
                    return svc["metadata"]["namespace"], f"service/{svc['metadata']['name']}"
            pods = self._resource("v1", "Pod").get(field_selector=f"status.podIP={address}").to_dict()["items"]
            running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
            if running:
                return running[0]["metadata"]["namespace"], f"pod/{running[0]['metadata']['name']}"
        owner = f"the Gateway's address {addresses[0]}" if addresses else "an IPAddress in its status.addresses"
        raise TargetError(f"--gateway-address-mode=port-forward: no Service in namespace {gateway.namespace} "
                          f"carries label gateway.networking.k8s.io/gateway-name={gateway.name}, and no Service "
                          f"or running pod owns {owner}, so there is nothing to forward to; use "
                          "--gateway-address-mode=status")

    def _port_forward(self, gateway: ObjectRef, port: int) -> tuple[str, int]:
        key = (gateway, port)
        if key in self._forwards:
            if self._forwards[key][0].poll() is None:
                return self._forwards[key][1]
            # kubectl port-forward ends when the pod it streams to goes away, e.g. when an
            # implementation rolls its proxy Deployment because a Gateway's ports changed
            # (Envoy Gateway does). The next probe needs a forward to the pod serving now.
            del self._forwards[key]
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise TargetError("--gateway-address-mode=port-forward runs `kubectl port-forward` and kubectl is not "
                              "on PATH; install kubectl or use --gateway-address-mode=status")
        namespace, what = self._forward_target(gateway)
        argv = [kubectl, "port-forward", "--address", "127.0.0.1", "-n", namespace, what, f":{port}"]
        if self.kubeconfig:
            argv[1:1] = ["--kubeconfig", self.kubeconfig]
        proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # kubectl prints "Forwarding from 127.0.0.1:NNNNN -> PORT" once it listens.
        import select
        ready, _, _ = select.select([proc.stdout], [], [], PORT_FORWARD_TIMEOUT)
        first = proc.stdout.readline() if ready else f"no answer within {PORT_FORWARD_TIMEOUT:.0f} s"
        match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", first)
        if not match:
            _stop_process(proc)
            raise TargetError(f"kubectl port-forward to {namespace}/{what} port {port} failed: "
                              f"{first.strip() or 'it exited'}")
        address = ("127.0.0.1", int(match.group(1)))
        self._forwards[key] = (proc, address)
        return address


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
