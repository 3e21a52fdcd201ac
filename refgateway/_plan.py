"""The plan the translator produces, and what its sections share.

The data-plane plan (``Plan`` down to ``Validation`` and ``BackendTLS``), the constants
of the API, small status and Secret helpers, the object index, and the loading of CA
bundles (ConfigMap, Secret, ClusterTrustBundle) that frontend validation and backend
TLS policies both use. Pure, like the rest of the translator (see ``translator``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .faults import CLUSTER_TRUST_BUNDLE_FAIL_OPEN, CLUSTER_TRUST_BUNDLE_SIGNER_WIDE, NO_CLUSTER_TRUST_BUNDLES

DEFAULT_CONTROLLER = "mtls-conformance.dev/refgateway"
GW_GROUP = "gateway.networking.k8s.io"
OPTION_DOMAIN = "refgateway.mtls-conformance.dev/"
PIN_SAN_KEYS = (OPTION_DOMAIN + "verify-subject-alt-names", "kgateway.dev/verify-subject-alt-names")
PIN_HASH_KEYS = (OPTION_DOMAIN + "verify-certificate-hash", "kgateway.dev/verify-certificate-hash")
ALLOW_VALID_ONLY = "AllowValidOnly"
ALLOW_INSECURE_FALLBACK = "AllowInsecureFallback"
# GEP-5075 (Gateway API v1.7.0, experimental): caCertificateRefs may name a cluster-scoped
# ClusterTrustBundle by name (namespace unset); its PEM anchors are spec.trustBundle.
CTB_GROUP, CTB_KIND = "certificates.k8s.io", "ClusterTrustBundle"

SUPPORTED_FEATURES = (
    "Gateway",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "HTTPRoute",
    "ReferenceGrant",
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "GatewayBackendClientCertificate",
    "ClusterTrustBundle",  # advertised only where the API server serves ClusterTrustBundles
)

Key = tuple[str, str, str]  # (kind, namespace, name)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Validation:
    """Client-certificate validation that applies to one HTTPS listener."""

    mode: str
    ca_pems: tuple[bytes, ...]  # one entry per valid reference; each may hold several CAs
    pin_sans: frozenset[str] = frozenset()
    pin_hashes: frozenset[str] = frozenset()  # lowercase hex, no separators


@dataclass(frozen=True)
class BackendTLS:
    """TLS from the gateway to one backend, from the BackendTLSPolicy that governs its port."""

    policy: str  # namespace/name, for logs
    hostname: str  # the SNI; also the identity checked unless subject_alt_names are given
    ca_pems: tuple[bytes, ...] = ()  # trust anchors from caCertificateRefs
    system: bool = False  # wellKnownCACertificates: System
    subject_alt_names: tuple[tuple[str, str], ...] = ()  # ("Hostname" | "URI", value)
    client_cert: tuple[bytes, bytes] | None = None  # the Gateway's spec.tls.backend certificate
    verify: bool = True  # False only under the backend-fail-open fault


@dataclass(frozen=True)
class Backend:
    weight: int
    endpoints: tuple[tuple[str, int], ...] | None  # None: the backendRef is invalid (500)
    tls: BackendTLS | None = None  # None: plain HTTP


@dataclass(frozen=True)
class Rule:
    hostnames: tuple[str, ...]  # effective hostnames on this listener; () matches any
    path_type: str  # "PathPrefix" | "Exact"
    path: str
    method: str | None
    headers: tuple[tuple[str, str], ...]  # exact matches, lowercase names
    backends: tuple[Backend, ...]
    order: tuple  # precedence tie-breakers (creationTimestamp, ns/name, rule, match)


@dataclass(frozen=True)
class Listener:
    name: str
    hostname: str | None
    protocol: str  # "HTTP" | "HTTPS"
    servable: bool  # False: HTTPS connections selecting this listener are refused
    cert_pem: bytes | None = None  # leaf + chain
    key_pem: bytes | None = None
    validation: Validation | None = None
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Port:
    namespace: str
    gateway: str
    port: int
    protocol: str
    listeners: tuple[Listener, ...]


@dataclass(frozen=True)
class Plan:
    ports: Mapping[tuple[str, str, int], Port]  # (namespace, gateway, port)
    gateways: tuple[tuple[str, str], ...]  # every Gateway we own, even with no ports


# --------------------------------------------------------------------------- helpers


def _meta(obj: Mapping) -> Mapping:
    return obj.get("metadata") or {}


def _gen(obj: Mapping) -> int:
    try:
        return int(_meta(obj).get("generation") or 1)
    except (TypeError, ValueError):
        return 1


def _cond(ctype: str, ok: bool, reason: str, message: str, gen: int) -> dict:
    return {
        "type": ctype,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": gen,
    }


def host_matches(pattern: str | None, host: str) -> bool:
    """Gateway API hostname matching: ``*.a.b`` matches one or more labels before ``.a.b``."""
    if pattern is None:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def host_rank(pattern: str | None) -> tuple[int, int]:
    """Sort key: exact before wildcard (longer suffix first) before no hostname."""
    if pattern is None:
        return (2, 0)
    if pattern.startswith("*."):
        return (1, -len(pattern))
    return (0, -len(pattern))


def _decode_secret(obj: Mapping, key: str) -> bytes | None:
    raw = (obj.get("data") or {}).get(key)
    if raw is not None:
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError, TypeError):
            return None
    raw = (obj.get("stringData") or {}).get(key)
    return raw.encode() if isinstance(raw, str) else None


def _parse_ca_bundle(pem: bytes | None) -> bool:
    if not pem:
        return False
    try:
        return bool(x509.load_pem_x509_certificates(pem))
    except ValueError:
        return False


def _valid_keypair(cert: bytes | None, key: bytes | None) -> str | None:
    """Return why a tls.crt/tls.key pair is unusable, or None."""
    if not cert or not key:
        return "missing tls.crt or tls.key"
    try:
        leaf = x509.load_pem_x509_certificates(cert)[0]
        priv = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        return f"cannot parse certificate or key ({exc.__class__.__name__})"
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != priv.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return "tls.key does not match tls.crt"
    return None


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _parse_hash_pins(value: str) -> tuple[frozenset[str], str | None]:
    pins = set()
    for item in value.split(","):
        item = "".join(item.split()).lower()
        if not item:
            continue
        flat = item.replace(":", "")
        if ":" in item and not re.fullmatch(r"([0-9a-f]{2}:){31}[0-9a-f]{2}", item):
            return frozenset(), f"malformed certificate hash {item!r}"
        if not _HEX64.match(flat):
            return frozenset(), f"malformed certificate hash {item!r} (want 64 hex digits)"
        pins.add(flat)
    if not pins:
        return frozenset(), "empty certificate hash list"
    return frozenset(pins), None


class _Index:
    """Lookups over the object set that the translation needs repeatedly."""

    def __init__(self, objects: Mapping[Key, Mapping], *, faults: frozenset[str] = frozenset(),
                 cluster_trust_bundles: bool = True):
        self.objects = objects
        self.faults = faults
        # False: the API server does not serve ClusterTrustBundles (GEP-5075: InvalidKind).
        self.cluster_trust_bundles = cluster_trust_bundles
        self.grants = [o for (k, _, _), o in sorted(objects.items()) if k == "ReferenceGrant"]
        self.slices: dict[tuple[str, str], list[Mapping]] = {}
        for (kind, ns, name), obj in sorted(objects.items()):
            if kind == "EndpointSlice":
                svc = (_meta(obj).get("labels") or {}).get("kubernetes.io/service-name")
                if svc:
                    self.slices.setdefault((ns, svc), []).append(obj)

    def get(self, kind: str, ns: str, name: str) -> Mapping | None:
        return self.objects.get((kind, ns, name))

    def granted(self, from_group: str, from_kind: str, from_ns: str,
                to_group: str, to_kind: str, to_ns: str, to_name: str) -> bool:
        for g in self.grants:
            if _meta(g).get("namespace") != to_ns:
                continue
            spec = g.get("spec") or {}
            if not any(
                (f.get("group") or "") == from_group and f.get("kind") == from_kind
                and f.get("namespace") == from_ns
                for f in spec.get("from") or []
            ):
                continue
            if any(
                (t.get("group") or "") == to_group and t.get("kind") == to_kind
                and (not t.get("name") or t.get("name") == to_name)
                for t in spec.get("to") or []
            ):
                return True
        return False


# --------------------------------------------------------------------------- CA bundles


def _load_ca_bundle(idx: _Index, kind: str, ns: str, name: str,
                    where: str) -> tuple[bytes | None, str | None]:
    """The PEM under key ca.crt of a ConfigMap or Secret, or why there is none."""
    obj = idx.get(kind, ns, name)
    if obj is None:
        return None, f"caCertificateRef {where} does not exist"
    if kind == "ConfigMap":
        raw = (obj.get("data") or {}).get("ca.crt")
        pem = raw.encode() if isinstance(raw, str) else None
    else:
        pem = _decode_secret(obj, "ca.crt")
    if not _parse_ca_bundle(pem):
        return None, f"caCertificateRef {where} has no parsable PEM certificate under key ca.crt"
    return pem, None


def _resolve_ca_ref(idx: _Index, ref: Mapping, ns: str, kind_reason: str,
                    not_permitted=None) -> tuple[bytes | None, tuple[str, str] | None]:
    """One caCertificateRef of a Gateway or a BackendTLSPolicy -> (PEM, None) or (None,
    (reason, message)). ``kind_reason`` is the reason for a ref of the wrong kind, which the
    two APIs name differently (InvalidCACertificateKind, InvalidKind); ``not_permitted(kind,
    ns, name, where)`` says why a ref may not be followed (ReferenceGrant), or None."""
    group, kind, name = ref.get("group") or "", ref.get("kind") or "", ref.get("name") or ""
    if _is_bundle_ref(ref):
        pem, kind_problem, problem = _load_trust_bundle(idx, ref)
        if kind_problem:
            return None, (kind_reason, kind_problem)
        if problem:
            return None, ("InvalidCACertificateRef", problem)
        return pem, None
    where = f"{kind or '<no kind>'} {ns}/{name}"
    if group != "" or kind not in ("ConfigMap", "Secret"):
        return None, (kind_reason, f"caCertificateRef {where} (group {group!r}) is not a core ConfigMap or Secret")
    problem = not_permitted(kind, ns, name, where) if not_permitted else None
    if problem:
        return None, ("RefNotPermitted", problem)
    pem, problem = _load_ca_bundle(idx, kind, ns, name, where)
    if problem:
        return None, ("InvalidCACertificateRef", problem)
    return pem, None


def _is_bundle_ref(ref: Mapping) -> bool:
    return (ref.get("group") or "") == CTB_GROUP and ref.get("kind") == CTB_KIND


def _load_trust_bundle(idx: _Index, ref: Mapping) -> tuple[bytes | None, str | None, str | None]:
    """A ClusterTrustBundle ref -> (PEM, None, None), or (None, kind problem, ref problem)."""
    name = ref.get("name") or ""
    where = f"caCertificateRef {CTB_KIND} {name}"
    if not idx.cluster_trust_bundles or NO_CLUSTER_TRUST_BUNDLES in idx.faults:
        return None, f"{where}: the API server does not serve {CTB_GROUP} {CTB_KIND}", None
    if ref.get("namespace"):
        return None, None, f"{where} names namespace {ref['namespace']!r}; a {CTB_KIND} is cluster-scoped"
    obj = idx.get(CTB_KIND, "", name)
    if obj is None:
        return None, None, f"{where} does not exist"
    spec = obj.get("spec") or {}
    bundles = [spec.get("trustBundle")]
    signer = spec.get("signerName")
    if signer and CLUSTER_TRUST_BUNDLE_SIGNER_WIDE in idx.faults:
        bundles += [(o.get("spec") or {}).get("trustBundle") for (k, _, n), o in sorted(idx.objects.items())
                    if k == CTB_KIND and n != name and (o.get("spec") or {}).get("signerName") == signer]
    pem = "\n".join(b for b in bundles if isinstance(b, str)).encode()
    if not _parse_ca_bundle(pem):
        return None, None, f"{where} has no parsable PEM certificate in spec.trustBundle"
    return pem, None, None


def _missing_bundles_only(idx: _Index, refs: list) -> bool:
    """Fault cluster-trust-bundle-fail-open: every ref names a ClusterTrustBundle that is absent."""
    return (CLUSTER_TRUST_BUNDLE_FAIL_OPEN in idx.faults and bool(refs)
            and all(_is_bundle_ref(r) and idx.get(CTB_KIND, "", r.get("name") or "") is None for r in refs))


