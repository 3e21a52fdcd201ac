"""Builders for the manifests the scenarios apply, in the exact upstream schema.

Each builder returns a plain dict that ``kubectl apply`` would take as it is. Keyword
arguments only: a Gateway has too many optional parts for positional arguments to stay
readable in a scenario.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["GATEWAY_API", "object_ref", "cluster_trust_bundle_ref", "cluster_trust_bundle",
           "secret_ref", "validation", "frontend_tls", "https_listener", "http_listener",
           "gateway", "parent_ref", "backend_ref", "rule", "http_route", "ca_configmap",
           "ca_secret", "tls_secret", "reference_grant", "policy_target", "san_hostname",
           "san_uri", "backend_tls_policy", "external_name_service"]

GATEWAY_API = "gateway.networking.k8s.io/v1"


def _meta(name: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def object_ref(name: str, *, kind: str = "ConfigMap", group: str = "",
               namespace: str | None = None) -> dict:
    """An ObjectReference as caCertificateRefs takes it: group, kind and name are required."""
    ref = {"group": group, "kind": kind, "name": name}
    if namespace:
        ref["namespace"] = namespace
    return ref


def cluster_trust_bundle_ref(name: str) -> dict:
    """A caCertificateRef to a ClusterTrustBundle (GEP-5075): by name, namespace unset."""
    return {"group": "certificates.k8s.io", "kind": "ClusterTrustBundle", "name": name}


def cluster_trust_bundle(name: str, ca_pem: bytes | str, *, signer_name: str | None = None) -> dict:
    """A cluster-scoped ClusterTrustBundle. With ``signer_name`` the API server wants the
    name to start with the signer name, ``/`` replaced by ``:``, and a ``:``; without one
    the name may not contain ``:``."""
    text = ca_pem.decode() if isinstance(ca_pem, bytes) else ca_pem
    spec: dict[str, Any] = {"trustBundle": text}
    if signer_name:
        spec["signerName"] = signer_name
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "ClusterTrustBundle",
            "metadata": _meta(name, None), "spec": spec}


def secret_ref(name: str, *, namespace: str | None = None) -> dict:
    ref = {"group": "", "kind": "Secret", "name": name}
    if namespace:
        ref["namespace"] = namespace
    return ref


def validation(*ca_refs: Mapping, mode: str | None = None) -> dict:
    """A FrontendTLSValidation: ``mode`` None leaves the default (AllowValidOnly) implicit."""
    spec: dict[str, Any] = {"caCertificateRefs": [dict(r) for r in ca_refs]}
    if mode is not None:
        spec["mode"] = mode
    return spec


def frontend_tls(*, default: Mapping, per_port: Mapping[int, Mapping] | None = None) -> dict:
    """Gateway ``spec.tls.frontend``; ``per_port`` maps a port to its validation."""
    frontend: dict[str, Any] = {"default": {"validation": dict(default)}}
    if per_port:
        frontend["perPort"] = [{"port": port, "tls": {"validation": dict(v)}}
                               for port, v in sorted(per_port.items())]
    return frontend


def https_listener(name: str, port: int, *, certificate: str, hostname: str | None = None,
                   certificate_namespace: str | None = None,
                   options: Mapping[str, str] | None = None, routes_from: str = "All") -> dict:
    tls: dict[str, Any] = {"mode": "Terminate",
                           "certificateRefs": [secret_ref(certificate, namespace=certificate_namespace)]}
    if options:
        tls["options"] = dict(options)
    listener: dict[str, Any] = {"name": name, "protocol": "HTTPS", "port": port, "tls": tls,
                                "allowedRoutes": {"namespaces": {"from": routes_from}}}
    if hostname:
        listener["hostname"] = hostname
    return listener


def http_listener(name: str, port: int, *, hostname: str | None = None,
                  routes_from: str = "All") -> dict:
    listener: dict[str, Any] = {"name": name, "protocol": "HTTP", "port": port,
                                "allowedRoutes": {"namespaces": {"from": routes_from}}}
    if hostname:
        listener["hostname"] = hostname
    return listener


def gateway(name: str, namespace: str, *, gateway_class: str, listeners: Sequence[Mapping],
            frontend: Mapping | None = None, backend_client_certificate: Mapping | None = None) -> dict:
    spec: dict[str, Any] = {"gatewayClassName": gateway_class,
                            "listeners": [dict(listener) for listener in listeners]}
    tls: dict[str, Any] = {}
    if frontend is not None:
        tls["frontend"] = dict(frontend)
    if backend_client_certificate is not None:
        tls["backend"] = {"clientCertificateRef": dict(backend_client_certificate)}
    if tls:
        spec["tls"] = tls
    return {"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": _meta(name, namespace),
            "spec": spec}


def parent_ref(gateway_name: str, *, namespace: str | None = None,
               section_name: str | None = None, port: int | None = None) -> dict:
    ref: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                           "name": gateway_name}
    if namespace:
        ref["namespace"] = namespace
    if section_name:
        ref["sectionName"] = section_name
    if port:
        ref["port"] = port
    return ref


def backend_ref(service: str, port: int, *, namespace: str | None = None,
                weight: int | None = None) -> dict:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": service, "port": port}
    if namespace:
        ref["namespace"] = namespace
    if weight is not None:
        ref["weight"] = weight
    return ref


def rule(*backends: Mapping, path: str | None = None, path_type: str = "PathPrefix") -> dict:
    spec: dict[str, Any] = {"backendRefs": [dict(b) for b in backends]}
    if path is not None:
        spec["matches"] = [{"path": {"type": path_type, "value": path}}]
    return spec


def http_route(name: str, namespace: str, *, parents: Sequence[Mapping],
               hostnames: Iterable[str] = (), rules: Sequence[Mapping]) -> dict:
    spec: dict[str, Any] = {"parentRefs": [dict(p) for p in parents],
                            "rules": [dict(r) for r in rules]}
    hostnames = list(hostnames)
    if hostnames:
        spec["hostnames"] = hostnames
    return {"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": _meta(name, namespace),
            "spec": spec}


def ca_configmap(name: str, namespace: str, ca_pem: bytes | str, *, key: str = "ca.crt") -> dict:
    text = ca_pem.decode() if isinstance(ca_pem, bytes) else ca_pem
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, namespace),
            "data": {key: text}}


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def ca_secret(name: str, namespace: str, ca_pem: bytes | str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, namespace),
            "type": "Opaque", "data": {"ca.crt": _b64(ca_pem)}}


def tls_secret(name: str, namespace: str, *, cert_pem: bytes, key_pem: bytes) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, namespace),
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": _b64(cert_pem), "tls.key": _b64(key_pem)}}


def reference_grant(name: str, namespace: str, *, from_kind: str, from_namespace: str,
                    to_kind: str, from_group: str = "gateway.networking.k8s.io",
                    to_group: str = "", to_name: str | None = None) -> dict:
    """A ReferenceGrant in ``namespace`` (the namespace of the objects referred to);
    ``to_name`` grants one object of ``to_kind`` only."""
    to: dict[str, Any] = {"group": to_group, "kind": to_kind}
    if to_name:
        to["name"] = to_name
    return {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": _meta(name, namespace),
            "spec": {"from": [{"group": from_group, "kind": from_kind, "namespace": from_namespace}],
                     "to": [to]}}


def policy_target(service: str, *, section_name: str | None = None, kind: str = "Service",
                  group: str = "") -> dict:
    """A BackendTLSPolicy targetRef (LocalPolicyTargetReferenceWithSectionName)."""
    ref: dict[str, Any] = {"group": group, "kind": kind, "name": service}
    if section_name:
        ref["sectionName"] = section_name
    return ref


def san_hostname(hostname: str) -> dict:
    return {"type": "Hostname", "hostname": hostname}


def san_uri(uri: str) -> dict:
    return {"type": "URI", "uri": uri}


def backend_tls_policy(name: str, namespace: str, *, targets: Sequence[Mapping], hostname: str,
                       ca_refs: Sequence[Mapping] = (), well_known: str | None = None,
                       subject_alt_names: Sequence[Mapping] = ()) -> dict:
    """A ``gateway.networking.k8s.io/v1`` BackendTLSPolicy; ``ca_refs`` are object_ref()s."""
    validation: dict[str, Any] = {"hostname": hostname}
    if ca_refs:
        validation["caCertificateRefs"] = [dict(r) for r in ca_refs]
    if well_known is not None:
        validation["wellKnownCACertificates"] = well_known
    if subject_alt_names:
        validation["subjectAltNames"] = [dict(s) for s in subject_alt_names]
    return {"apiVersion": GATEWAY_API, "kind": "BackendTLSPolicy", "metadata": _meta(name, namespace),
            "spec": {"targetRefs": [dict(t) for t in targets], "validation": validation}}


def external_name_service(name: str, namespace: str, *, host: str, port: int,
                          port_name: str = "https") -> dict:
    """A Service for a host outside the cluster (``type: ExternalName``)."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace),
            "spec": {"type": "ExternalName", "externalName": host,
                     "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}}
