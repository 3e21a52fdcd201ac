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
  the project's is a network namespace, testkit/testhost.py), and the harness
  writes the Service and its EndpointSlice.

Nothing here knows about a particular implementation. The backends (Deployments of the
echo image, or processes on the test host) are in ``_kubernetes_backends``, the
``kubectl port-forward`` address mode in ``_kubernetes_port_forward``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ._kubernetes_backends import (ECHO_IMAGE, KubernetesBackends, _api_message, _DeployedBackend,
                                   echo_backend_manifests, parse_echo_log)
from ._kubernetes_port_forward import PortForwards, _stop_process
from ._turns import waiting_for
from .processes import uninterrupted
from .target import (PROGRESS_AFTER, Manifest, ObjectRef, Progress,
                     SystemRootsFile, SystemRootsUnavailable, Target, TargetError, WaitTimeout, conditions_of,
                     describe_conditions, find_condition)

__all__ = ["KubernetesTarget", "echo_backend_manifests", "parse_echo_log", "MANAGED_LABEL", "RUN_LABEL"]

FIELD_MANAGER = "mtls-conformance"
MANAGED_LABEL = "mtls-conformance.dev/managed"
RUN_LABEL = "mtls-conformance.dev/run"

MIN_GATEWAY_API = (1, 5, 0)
CRD_INSTALL = ("kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/"
               "releases/download/v1.7.0/standard-install.yaml")
CLUSTER_HINT = "kind create cluster --config kind-config.yaml"

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
#: Longest single watch request; the wait's deadline bounds it too.
WATCH_SEGMENT = 30


def _version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?", text or "")
    return tuple(int(g) for g in match.groups()) if match else None


# -- the target ----------------------------------------------------------------------
class KubernetesTarget(KubernetesBackends, PortForwards, Target):
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
        #: ``address`` and ``command_prefix`` (see mtls_conformance/hookspecs.py).
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
                                      "own: -p testkit.testhost in a clone); else use "
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
        self._forget_backends(name)  # no later test's Gateway reaches into it
        if name in self._namespaces:
            self._namespaces.remove(name)  # close() leaves it alone
        for backend in [b for b in self._backends if getattr(b, "namespace", None) == name]:
            if isinstance(backend, _DeployedBackend):
                self._backends.remove(backend)  # a Deployment in the namespace: kept with it
        return f"kubectl get all,gateways,httproutes,backendtlspolicies -n {name}; delete: kubectl delete namespace {name}"

    def delete_namespace(self, name: str) -> None:
        if self._closed or name not in self._namespaces:
            return  # close() got there first (pytest tears fixtures down after the session hook)
        self._forget_backends(name)
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
            self.changed()
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
            self.changed()  # the namespace controller deleted what was left in it until now

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
            finally:
                self.changed()  # also a refused one: part of a list may have been applied
            if not resource.namespaced and ref.kind != "Namespace":
                self._cluster_objects[dataclasses.replace(ref, namespace=None)] = None

    def delete(self, *objects: Manifest | ObjectRef) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        for obj in objects:
            ref = obj if isinstance(obj, ObjectRef) else ObjectRef.of(obj)
            with contextlib.suppress(NotFoundError):
                self._resource(ref.api_version, ref.kind).delete(name=ref.name, namespace=ref.namespace)
            self.changed()

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

    def add_status_entry(self, ref: ObjectRef, field: str, entry: dict) -> dict:
        """Read, append, and write the status subresource with the read's resourceVersion;
        a conflict (the gateway wrote meanwhile) reads again, as a controller does."""
        from kubernetes.dynamic.exceptions import ConflictError, DynamicApiError

        resource = self._resource(ref.api_version, ref.kind)
        for _ in range(10):
            obj = self.get(ref)
            if obj is None:
                raise TargetError(f"{ref} does not exist")
            status = obj.get("status") or {}
            status[field] = [*(status.get(field) or []), copy.deepcopy(entry)]
            obj["status"] = status
            try:
                stored = resource.status.replace(body=obj, name=ref.name, namespace=ref.namespace).to_dict()
            except ConflictError:
                continue
            except DynamicApiError as exc:
                raise TargetError(f"the API server refused a status write to {ref}: {_api_message(exc)}") from None
            same = [e for e in (stored.get("status") or {}).get(field) or []
                    if e.get("controllerName") == entry.get("controllerName")
                    and all(e.get(k) == entry[k] for k in ("ancestorRef", "parentRef") if k in entry)]
            if not same:
                raise TargetError(f"the API server dropped the status entry written to {ref}.status.{field}")
            return same[-1]
        raise TargetError(f"a status write to {ref} conflicted 10 times in a row with other writers")

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
                events = watcher.stream(resource.get, namespace=ref.namespace, field_selector=selector,
                                        resource_version=version, serialize=False,
                                        timeout_seconds=max(1, min(segment, math.ceil(remaining))),
                                        _request_timeout=remaining + 10)
                for event in waiting_for(events):
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

    def trust_as_system_roots(self, ca_pem: bytes) -> None:
        if self.system_roots is None:
            raise SystemRootsUnavailable(
                "the kubernetes target cannot add roots to the gateway's system trust store unless "
                "--system-ca-bundle names the file the gateway reads them from")
        self.system_roots.add(ca_pem)
        self.changed(for_all=True)

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
