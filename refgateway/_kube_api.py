"""Controller mode's API client: the kinds it reads and raw JSON requests (``_kube``'s design note).

This module must not import the harness (``mtls_conformance``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from . import translator

GW_GROUP = translator.GW_GROUP


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
