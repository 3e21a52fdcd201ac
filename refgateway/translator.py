"""Translate Gateway API objects into a data-plane plan and status documents.

Design note
-----------
This module has no I/O at all: no files, no sockets, no clock. ``translate()`` takes
every object the gateway can see (already parsed manifests) and returns

* a ``Plan``: for every listener port of every Gateway this controller owns, what the
  data plane must serve there (certificates, client validation, routes, endpoints);
* the ``status`` documents for every object this controller is responsible for,
  *without* ``lastTransitionTime``. ``stamp_transitions()`` adds those from the
  previous documents and a timestamp the caller passes in, so that a time only
  changes when a condition's status changes (as the Kubernetes API conventions ask).

Being pure keeps the semantics unit-testable and deterministic: the same objects
always give the same plan, whatever order the files were read in. Faults that
concern translation are applied here too (see ``refgateway.faults``); faults that
need memory across generations (``ignore-ca-rotation``, ``stale-insecure-condition``)
are applied by small pure helpers that take the previous state explicitly.

Objects are keyed ``(kind, namespace, name)`` with namespace ``""`` for cluster-scoped
kinds. PEM material travels as bytes and is parsed here only to validate it; the TLS
layer caches parsed forms by content.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "DEFAULT_CONTROLLER",
    "SUPPORTED_FEATURES",
    "Validation",
    "BackendTLS",
    "Listener",
    "Rule",
    "Backend",
    "Port",
    "Plan",
    "translate",
    "stamp_transitions",
    "host_matches",
]

DEFAULT_CONTROLLER = "mtls-conformance.dev/refgateway"
GW_GROUP = "gateway.networking.k8s.io"
OPTION_DOMAIN = "refgateway.mtls-conformance.dev/"
PIN_SAN_KEYS = (OPTION_DOMAIN + "verify-subject-alt-names", "kgateway.dev/verify-subject-alt-names")
PIN_HASH_KEYS = (OPTION_DOMAIN + "verify-certificate-hash", "kgateway.dev/verify-certificate-hash")
ALLOW_VALID_ONLY = "AllowValidOnly"
ALLOW_INSECURE_FALLBACK = "AllowInsecureFallback"

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

    def __init__(self, objects: Mapping[Key, Mapping]):
        self.objects = objects
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


# --------------------------------------------------------------------------- gateway


@dataclass
class _ListenerState:
    spec: Mapping
    name: str
    port: int
    protocol: str
    hostname: str | None
    accepted: tuple[bool, str, str] = (True, "Accepted", "listener is accepted")
    resolved: tuple[bool, str, str] = (True, "ResolvedRefs", "all references are resolved")
    conflicted: tuple[bool, str, str] = (False, "NoConflicts", "no conflicts")
    programmed_problem: str | None = None  # why it cannot be programmed although accepted
    kinds: list = field(default_factory=list)
    cert: tuple[bytes, bytes] | None = None
    validation: Validation | None = None
    fail_closed: bool = False
    attached: int = 0
    rules: list = field(default_factory=list)

    def refuse(self, reason: str, message: str) -> None:
        if self.accepted[0]:
            self.accepted = (False, reason, message)

    def unresolved(self, reason: str, message: str) -> None:
        if self.resolved[0]:
            self.resolved = (False, reason, message)
        else:
            self.resolved = (False, self.resolved[1], self.resolved[2] + "; " + message)

    @property
    def usable(self) -> bool:
        return self.accepted[0] and not self.conflicted[0]


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


def _resolve_ca_refs(idx: _Index, gw_ns: str, refs: list) -> tuple[list[bytes], list[tuple[str, str]]]:
    """Resolve validation.caCertificateRefs: (valid PEM bundles, [(reason, message)])."""
    good, bad = [], []
    for ref in refs or []:
        group = ref.get("group") or ""
        kind = ref.get("kind") or ""
        name = ref.get("name") or ""
        ns = ref.get("namespace") or gw_ns
        where = f"{kind or '<no kind>'} {ns}/{name}"
        if group != "" or kind not in ("ConfigMap", "Secret"):
            bad.append(("InvalidCACertificateKind",
                        f"caCertificateRef {where} (group {group!r}) is not a core ConfigMap or Secret"))
            continue
        if ns != gw_ns and not idx.granted(GW_GROUP, "Gateway", gw_ns, "", kind, ns, name):
            bad.append(("RefNotPermitted",
                        f"caCertificateRef {where} is in another namespace and no ReferenceGrant allows it"))
            continue
        pem, problem = _load_ca_bundle(idx, kind, ns, name, where)
        if problem:
            bad.append(("InvalidCACertificateRef", problem))
            continue
        good.append(pem)
    return good, bad


def _frontend_for_port(spec: Mapping, port: int, faults: frozenset[str]) -> Mapping | None:
    frontend = (spec.get("tls") or {}).get("frontend") or {}
    if "ignore-per-port" not in faults:
        for pp in frontend.get("perPort") or []:
            if pp.get("port") == port:
                return pp.get("tls") or {}
    return frontend.get("default")


def _uses_fallback(spec: Mapping) -> bool:
    frontend = (spec.get("tls") or {}).get("frontend") or {}
    configs = [frontend.get("default")] + [pp.get("tls") for pp in frontend.get("perPort") or []]
    return any(
        ((c or {}).get("validation") or {}).get("mode") == ALLOW_INSECURE_FALLBACK for c in configs
    )


def _check_listener_tls(idx: _Index, gw: Mapping, ls: _ListenerState, faults: frozenset[str]) -> None:
    gw_ns = _meta(gw).get("namespace") or ""
    tls = ls.spec.get("tls") or {}
    if (tls.get("mode") or "Terminate") != "Terminate":
        ls.refuse("UnsupportedValue", f"tls.mode {tls.get('mode')!r} is not supported; only Terminate")
        return
    # Certificate refs: the first usable kubernetes.io/tls Secret is served.
    refs = tls.get("certificateRefs") or []
    if not refs:
        ls.unresolved("InvalidCertificateRef", "an HTTPS listener needs tls.certificateRefs")
    for ref in refs:
        group, kind = ref.get("group") or "", ref.get("kind") or "Secret"
        ns, name = ref.get("namespace") or gw_ns, ref.get("name") or ""
        if group != "" or kind != "Secret":
            ls.unresolved("InvalidCertificateRef", f"certificateRef {kind} {ns}/{name} is not a core Secret")
            continue
        if ns != gw_ns and not idx.granted(GW_GROUP, "Gateway", gw_ns, "", "Secret", ns, name):
            ls.unresolved("RefNotPermitted", f"certificateRef Secret {ns}/{name} is not permitted by a ReferenceGrant")
            continue
        secret = idx.get("Secret", ns, name)
        if secret is None:
            ls.unresolved("InvalidCertificateRef", f"certificateRef Secret {ns}/{name} does not exist")
            continue
        crt, key = _decode_secret(secret, "tls.crt"), _decode_secret(secret, "tls.key")
        problem = _valid_keypair(crt, key)
        if problem:
            ls.unresolved("InvalidCertificateRef", f"certificateRef Secret {ns}/{name}: {problem}")
            continue
        if ls.cert is None:
            ls.cert = (crt, key)
    if ls.cert is None:
        ls.programmed_problem = "no usable server certificate"

    # Frontend client validation (per port, HTTPS listeners only).
    fe = _frontend_for_port(gw.get("spec") or {}, ls.port, faults)
    validation = (fe or {}).get("validation")
    options = tls.get("options") or {}
    pins_requested = any(k in options for k in PIN_SAN_KEYS + PIN_HASH_KEYS)
    for key in sorted(options):
        if key.startswith(OPTION_DOMAIN) and key not in PIN_SAN_KEYS + PIN_HASH_KEYS:
            ls.refuse("UnsupportedValue", f"unknown listener option {key!r}")
    if not validation:
        if pins_requested and "ignore-pinning" not in faults:
            ls.refuse("UnsupportedValue",
                      "invalid option: certificate pinning options need spec.tls.frontend validation "
                      "(caCertificateRefs) for this port")
        return
    mode = validation.get("mode") or ALLOW_VALID_ONLY
    if mode not in (ALLOW_VALID_ONLY, ALLOW_INSECURE_FALLBACK):
        ls.refuse("UnsupportedValue", f"validation.mode {mode!r} is not supported")
        return
    good, bad = _resolve_ca_refs(idx, gw_ns, validation.get("caCertificateRefs") or [])
    if "fail-open-invalid-ca" in faults and not good:
        return  # serve without client verification and say nothing
    for reason, msg in bad:
        if good and "hide-partially-invalid-ca-refs" in faults:
            break
        ls.unresolved(reason, msg)
    if not bad and "report-valid-ca-unresolved" in faults:
        ls.unresolved("InvalidCACertificateRef", "caCertificateRefs could not be resolved")
    if not good:
        ls.refuse("NoValidCACertificate",
                  f"none of the {len(bad)} caCertificateRefs of the validation for port {ls.port} is usable")
        ls.fail_closed = True
        return
    sans: set[str] = set()
    hashes: set[str] = set()
    if "ignore-pinning" not in faults:
        for key in PIN_SAN_KEYS:
            if key in options:
                items = {s.strip() for s in str(options[key]).split(",") if s.strip()}
                if not items:
                    ls.refuse("UnsupportedValue", f"invalid option {key}: empty list")
                sans |= items
        for key in PIN_HASH_KEYS:
            if key in options:
                parsed, err = _parse_hash_pins(str(options[key]))
                if err:
                    ls.refuse("UnsupportedValue", f"invalid option {key}: {err}")
                hashes |= parsed
    if "reject-insecure-fallback" in faults:
        mode = ALLOW_VALID_ONLY
    ls.validation = Validation(mode, tuple(good), frozenset(sans), frozenset(hashes))


def _gateway(idx: _Index, gw: Mapping, faults: frozenset[str]) -> tuple[list[_ListenerState], dict]:
    spec = gw.get("spec") or {}
    listeners: list[_ListenerState] = []
    for lspec in spec.get("listeners") or []:
        ls = _ListenerState(
            spec=lspec,
            name=lspec.get("name") or "",
            port=int(lspec.get("port") or 0),
            protocol=lspec.get("protocol") or "",
            hostname=(lspec.get("hostname") or None),
        )
        listeners.append(ls)
        if ls.protocol not in ("HTTP", "HTTPS"):
            ls.refuse("UnsupportedProtocol", f"protocol {ls.protocol!r} is not supported; HTTP and HTTPS are")
            continue
        # Route kinds: HTTPRoute only.
        kinds = (lspec.get("allowedRoutes") or {}).get("kinds")
        if kinds is None:
            ls.kinds = [{"group": GW_GROUP, "kind": "HTTPRoute"}]
        else:
            for k in kinds:
                if (k.get("group") or GW_GROUP) == GW_GROUP and k.get("kind") == "HTTPRoute":
                    ls.kinds = [{"group": GW_GROUP, "kind": "HTTPRoute"}]
                else:
                    ls.unresolved("InvalidRouteKinds", f"route kind {k.get('kind')!r} is not supported")
        if ls.protocol == "HTTPS":
            _check_listener_tls(idx, gw, ls, faults)

    # Conflicts: protocols on a port, then hostnames within a protocol.
    by_port: dict[int, list[_ListenerState]] = {}
    for ls in listeners:
        if ls.protocol in ("HTTP", "HTTPS"):
            by_port.setdefault(ls.port, []).append(ls)
    for port, group in by_port.items():
        if len({ls.protocol for ls in group}) > 1:
            for ls in group:
                ls.conflicted = (True, "ProtocolConflict", f"port {port} has listeners with different protocols")
                ls.refuse("ProtocolConflict", f"port {port} has listeners with different protocols")
            continue
        seen: dict[str | None, list[_ListenerState]] = {}
        for ls in group:
            seen.setdefault(ls.hostname, []).append(ls)
        for host, same in seen.items():
            if len(same) > 1:
                for ls in same:
                    msg = f"port {port} has several listeners with hostname {host or '<none>'}"
                    ls.conflicted = (True, "HostnameConflict", msg)
                    ls.refuse("HostnameConflict", msg)
    insecure = _uses_fallback(spec)
    client_cert, client_cert_problem = _client_certificate(idx, gw)
    return listeners, {"insecure": insecure, "client_cert": client_cert, "client_cert_problem": client_cert_problem}


# --------------------------------------------------------------------------- backend TLS


def _client_certificate(idx: _Index, gw: Mapping) -> tuple[tuple[bytes, bytes] | None, tuple[str, str] | None]:
    """Resolve spec.tls.backend.clientCertificateRef: (cert and key, (reason, message) if invalid)."""
    ref = (((gw.get("spec") or {}).get("tls") or {}).get("backend") or {}).get("clientCertificateRef")
    if not ref:
        return None, None
    gw_ns = _meta(gw).get("namespace") or ""
    group, kind = ref.get("group") or "", ref.get("kind") or "Secret"
    ns, name = ref.get("namespace") or gw_ns, ref.get("name") or ""
    where = f"{kind} {ns}/{name}"
    if group != "" or kind != "Secret":
        return None, ("InvalidClientCertificateRef",
                      f"clientCertificateRef {where} (group {group!r}) is not a core Secret")
    if ns != gw_ns and not idx.granted(GW_GROUP, "Gateway", gw_ns, "", "Secret", ns, name):
        return None, ("RefNotPermitted",
                      f"clientCertificateRef {where} is in another namespace and no ReferenceGrant allows it")
    secret = idx.get("Secret", ns, name)
    if secret is None:
        return None, ("InvalidClientCertificateRef", f"clientCertificateRef {where} does not exist")
    crt, key = _decode_secret(secret, "tls.crt"), _decode_secret(secret, "tls.key")
    problem = _valid_keypair(crt, key)
    if problem:
        return None, ("InvalidClientCertificateRef", f"clientCertificateRef {where}: {problem}")
    return (crt, key), None


@dataclass
class _Policy:
    namespace: str
    name: str
    order: tuple  # (creationTimestamp, namespace/name): the older, then the first by name, wins
    gen: int
    services: set[str] = field(default_factory=set)  # targeted Services (for ancestors)
    targets: list[tuple[str, str | None]] = field(default_factory=list)  # (service, sectionName)
    accepted: tuple[bool, str, str] = (True, "Accepted", "policy is accepted")
    resolved: tuple[bool, str, str] = (True, "ResolvedRefs", "all references are resolved")
    tls: BackendTLS | None = None  # None: the policy cannot be honoured

    def refuse(self, reason: str, message: str) -> None:
        if self.accepted[0]:
            self.accepted = (False, reason, message)


def _policy_anchors(idx: _Index, ns: str, validation: Mapping) -> tuple[
        tuple[bytes, ...], bool, list[tuple[str, str]], tuple[str, str] | None]:
    """Trust anchors of a policy: (CA bundles, system roots?, bad refs, why none is usable)."""
    refs = validation.get("caCertificateRefs") or []
    well_known = validation.get("wellKnownCACertificates") or ""
    if refs and well_known:
        return (), False, [], ("Invalid", "caCertificateRefs and wellKnownCACertificates are mutually exclusive")
    if well_known:
        if well_known != "System":
            return (), False, [], ("Invalid", f"wellKnownCACertificates {well_known!r} is not supported; only System")
        return (), True, [], None
    if not refs:
        return (), False, [], ("Invalid", "validation needs caCertificateRefs or wellKnownCACertificates")
    good, bad = [], []
    for ref in refs:
        group, kind, name = ref.get("group") or "", ref.get("kind") or "", ref.get("name") or ""
        where = f"{kind or '<no kind>'} {ns}/{name}"
        if group != "" or kind not in ("ConfigMap", "Secret"):
            bad.append(("InvalidKind", f"caCertificateRef {where} (group {group!r}) is not a core ConfigMap or Secret"))
            continue
        pem, problem = _load_ca_bundle(idx, kind, ns, name, where)
        if problem:
            bad.append(("InvalidCACertificateRef", problem))
            continue
        good.append(pem)
    if not good:
        return (), False, bad, ("NoValidCACertificate", f"none of the {len(bad)} caCertificateRefs is usable")
    return tuple(good), False, bad, None


_SAN_FIELDS = {"Hostname": "hostname", "URI": "uri"}


def _policy(idx: _Index, obj: Mapping, faults: frozenset[str]) -> _Policy:
    meta = _meta(obj)
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    p = _Policy(ns, name, (str(meta.get("creationTimestamp") or ""), f"{ns}/{name}"), _gen(obj))
    spec = obj.get("spec") or {}
    if not spec.get("targetRefs"):
        p.refuse("TargetNotFound", "the policy has no targetRefs")
    for ref in spec.get("targetRefs") or []:
        group, kind, svc_name = ref.get("group") or "", ref.get("kind") or "", ref.get("name") or ""
        section = None if "ignore-section-name" in faults else ref.get("sectionName") or None
        if group != "" or kind != "Service":
            p.refuse("TargetNotFound", f"targetRef {group}/{kind} {svc_name} is not a core Service")
            continue
        p.services.add(svc_name)
        svc = idx.get("Service", ns, svc_name)
        if svc is None:
            p.refuse("TargetNotFound", f"targetRef Service {ns}/{svc_name} does not exist")
            continue
        ports = {pt.get("name") or "" for pt in (svc.get("spec") or {}).get("ports") or []}
        if section is not None and section not in ports:
            p.refuse("TargetNotFound", f"targetRef Service {ns}/{svc_name} has no port named {section!r}")
            continue
        p.targets.append((svc_name, section))

    validation = spec.get("validation") or {}
    anchors, system, bad_refs, anchors_problem = _policy_anchors(idx, ns, validation)
    fail_open = "backend-fail-open" in faults
    if bad_refs and not fail_open:
        p.resolved = (False, bad_refs[0][0], "; ".join(m for _, m in bad_refs))
    if anchors_problem and not fail_open:
        p.refuse(*anchors_problem)
    hostname = validation.get("hostname") or ""
    if not hostname or "*" in hostname:
        p.refuse("Invalid", f"validation.hostname {hostname!r} must be a precise hostname")
    sans = []
    for san in validation.get("subjectAltNames") or []:
        value = san.get(_SAN_FIELDS.get(san.get("type"), "")) or ""
        if not value:
            p.refuse("Invalid", f"subjectAltName {dict(san)!r} needs type Hostname with hostname or URI with uri")
        sans.append((san.get("type"), value))
    if p.accepted[0]:  # before conflicts: a policy that wins one target is honoured there
        p.tls = BackendTLS(policy=f"{ns}/{name}", hostname=hostname.lower(), ca_pems=anchors, system=system,
                           subject_alt_names=tuple(sans), verify=anchors_problem is None)
    return p


def _backend_policies(idx: _Index, faults: frozenset[str]) -> tuple[
        list[_Policy], dict[tuple[str, str, str | None], _Policy]]:
    """Every BackendTLSPolicy, and the one that governs each (namespace, Service, sectionName)."""
    policies = [_policy(idx, obj, faults) for (kind, _, _), obj in sorted(idx.objects.items())
                if kind == "BackendTLSPolicy"]
    claims: dict[tuple[str, str, str | None], list[_Policy]] = {}
    for p in policies:
        for svc, section in p.targets:
            claims.setdefault((p.namespace, svc, section), []).append(p)
    governing = {}
    for target, contenders in sorted(claims.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
        contenders.sort(key=lambda p: p.order, reverse="reverse-policy-conflict-order" in faults)
        winner = governing[target] = contenders[0]
        where = f"Service {target[0]}/{target[1]}" + (f" port {target[2]}" if target[2] else "")
        for loser in contenders[1:]:
            loser.refuse("Conflicted", f"BackendTLSPolicy {winner.namespace}/{winner.name} "
                                       f"takes precedence for {where}")
    return policies, governing


def _policy_status(p: _Policy, ancestors: list[tuple[str, str]], controller: str) -> dict:
    return {"ancestors": [
        {"ancestorRef": {"group": GW_GROUP, "kind": "Gateway", "namespace": ns, "name": name},
         "controllerName": controller,
         "conditions": [_cond("Accepted", *p.accepted, p.gen), _cond("ResolvedRefs", *p.resolved, p.gen)]}
        for ns, name in ancestors]}


# --------------------------------------------------------------------------- routes


def _ns_labels(idx: _Index, ns: str) -> Mapping:
    obj = idx.get("Namespace", "", ns)
    labels = dict((_meta(obj).get("labels") or {}) if obj else {})
    labels.setdefault("kubernetes.io/metadata.name", ns)
    return labels


def _selector_matches(sel: Mapping, labels: Mapping) -> bool:
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in sel.get("matchExpressions") or []:
        key, op, vals = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _namespace_allowed(idx: _Index, ls: _ListenerState, gw_ns: str, route_ns: str) -> bool:
    ns_spec = (ls.spec.get("allowedRoutes") or {}).get("namespaces") or {}
    frm = ns_spec.get("from") or "Same"
    if frm == "All":
        return True
    if frm == "Same":
        return route_ns == gw_ns
    if frm == "Selector":
        return _selector_matches(ns_spec.get("selector") or {}, _ns_labels(idx, route_ns))
    return False


def _intersect_hostnames(listener_host: str | None, route_hosts: list[str]) -> list[str] | None:
    """Effective hostnames of a route on a listener; [] = any host, None = no overlap."""
    if not route_hosts:
        return [listener_host] if listener_host else []
    if listener_host is None:
        return list(route_hosts)
    out = []
    for h in route_hosts:
        if host_matches(listener_host, h) or h == listener_host:
            out.append(h)
        elif h.startswith("*.") and host_matches(h, listener_host):
            out.append(listener_host)
    return out or None


@dataclass(frozen=True)
class _BackendTLSContext:
    """What decides TLS to a route's backends on one Gateway."""

    governing: Mapping[tuple[str, str, str | None], _Policy]
    client_cert: tuple[bytes, bytes] | None
    faults: frozenset[str]

    def tls_for(self, ns: str, svc: str, port_name: str) -> tuple[bool, BackendTLS | None]:
        """(usable, TLS settings) for a Service port; not usable: the policy cannot be honoured."""
        policy = self.governing.get((ns, svc, port_name)) or self.governing.get((ns, svc, None))
        if policy is None:
            return True, None
        if policy.tls is None:
            return "backend-plaintext-fallback" in self.faults, None
        return True, replace(policy.tls, client_cert=self.client_cert)


def _resolve_backends(idx: _Index, route: Mapping, rule: Mapping,
                      tls: _BackendTLSContext | None = None) -> tuple[tuple[Backend, ...], list[tuple[str, str]]]:
    """The backends of a rule (with the TLS their policies ask for when ``tls`` is given)."""
    rns = _meta(route).get("namespace") or ""
    backends, problems = [], []
    for ref in rule.get("backendRefs") or []:
        weight = int(ref.get("weight", 1) if ref.get("weight") is not None else 1)
        group, kind = ref.get("group") or "", ref.get("kind") or "Service"
        name, ns, port = ref.get("name") or "", ref.get("namespace") or rns, ref.get("port")
        endpoints, backend_tls = None, None
        if group != "" or kind != "Service":
            problems.append(("InvalidKind", f"backendRef {group}/{kind} {name} is not a core Service"))
        elif ns != rns and not idx.granted(GW_GROUP, "HTTPRoute", rns, "", "Service", ns, name):
            problems.append(("RefNotPermitted", f"backendRef Service {ns}/{name} is not permitted by a ReferenceGrant"))
        else:
            svc = idx.get("Service", ns, name)
            svc_spec = (svc or {}).get("spec") or {}
            sport = next((p for p in svc_spec.get("ports") or [] if p.get("port") == port), None)
            external = svc_spec.get("type") == "ExternalName" and svc_spec.get("externalName")
            if external and sport is None and port:
                sport = {"name": "", "port": port}  # ExternalName Services need not list their ports
            if svc is None:
                problems.append(("BackendNotFound", f"backendRef Service {ns}/{name} does not exist"))
            elif sport is None:
                problems.append(("BackendNotFound", f"backendRef Service {ns}/{name} has no port {port}"))
            elif external:
                endpoints = ((str(svc_spec["externalName"]), int(port)),)
            else:
                eps = []
                for sl in idx.slices.get((ns, name), []):
                    ep_port = next((p.get("port") for p in sl.get("ports") or []
                                    if (p.get("name") or "") == (sport.get("name") or "")), None)
                    if ep_port is None:
                        continue
                    for ep in sl.get("endpoints") or []:
                        if (ep.get("conditions") or {}).get("ready") is False:
                            continue
                        eps.extend((a, int(ep_port)) for a in ep.get("addresses") or [])
                endpoints = tuple(eps)
            if endpoints is not None and tls is not None:
                usable, backend_tls = tls.tls_for(ns, name, sport.get("name") or "")
                if not usable:
                    endpoints = None  # a policy that cannot be honoured: 500, never plaintext
        if weight > 0:
            backends.append(Backend(weight, endpoints, backend_tls))
    return tuple(backends), problems


def _route_rules(idx: _Index, route: Mapping, hostnames: list[str], tls: _BackendTLSContext) -> list[Rule]:
    meta = _meta(route)
    order_base = (str(meta.get("creationTimestamp") or ""), f"{meta.get('namespace')}/{meta.get('name')}")
    rules = []
    for ri, rule in enumerate((route.get("spec") or {}).get("rules") or [{}]):
        backends, _ = _resolve_backends(idx, route, rule, tls)
        for mi, m in enumerate(rule.get("matches") or [{}]):
            path = m.get("path") or {}
            ptype = path.get("type") or "PathPrefix"
            if ptype not in ("PathPrefix", "Exact"):
                continue  # RegularExpression is not supported: never matches
            headers = tuple(
                ((h.get("name") or "").lower(), h.get("value") or "")
                for h in m.get("headers") or [] if (h.get("type") or "Exact") == "Exact"
            )
            rules.append(Rule(
                hostnames=tuple(hostnames), path_type=ptype, path=path.get("value") or "/",
                method=m.get("method"), headers=headers, backends=backends,
                order=order_base + (ri, mi),
            ))
    return rules


def _route(idx: _Index, route: Mapping, owned: Mapping[tuple[str, str], list[_ListenerState]],
           controller: str, backend_tls: Mapping[tuple[str, str], _BackendTLSContext],
           services_used: dict[tuple[str, str], set[tuple[str, str]]]) -> list[dict]:
    """Attach one HTTPRoute; return its status.parents entries for our Gateways.

    ``services_used`` collects, per Gateway, the Services its attached routes send to
    (the Gateways that are ancestors of a BackendTLSPolicy).
    """
    meta = _meta(route)
    rns, gen = meta.get("namespace") or "", _gen(route)
    spec = route.get("spec") or {}
    route_hosts = spec.get("hostnames") or []
    problems = []
    for rule in spec.get("rules") or []:
        problems += _resolve_backends(idx, route, rule)[1]
    parents = []
    for pref in spec.get("parentRefs") or []:
        group, kind = pref.get("group", GW_GROUP), pref.get("kind", "Gateway")
        gw_key = (pref.get("namespace") or rns, pref.get("name") or "")
        if group != GW_GROUP or kind != "Gateway" or gw_key not in owned:
            continue
        candidates = [
            ls for ls in owned[gw_key]
            if (pref.get("sectionName") in (None, ls.name)) and (pref.get("port") in (None, ls.port))
        ]
        attached = []
        reason, msg = "NoMatchingParent", "no listener matches the parentRef's sectionName/port"
        if candidates:
            reason, msg = "NotAllowedByListeners", "no listener allows routes from this namespace or kind"
        for ls in candidates:
            if not ls.kinds or not _namespace_allowed(idx, ls, gw_key[0], rns):
                continue
            eff = _intersect_hostnames(ls.hostname, route_hosts)
            if eff is None:
                if reason == "NotAllowedByListeners":
                    reason, msg = "NoMatchingListenerHostname", "no listener hostname intersects the route's hostnames"
                continue
            attached.append((ls, eff))
        for ls, eff in attached:
            ls.attached += 1
            ls.rules.extend(_route_rules(idx, route, eff, backend_tls[gw_key]))
        if attached:
            services_used.setdefault(gw_key, set()).update(
                (ref.get("namespace") or rns, ref.get("name") or "")
                for rule in spec.get("rules") or [] for ref in rule.get("backendRefs") or []
                if (ref.get("group") or "") == "" and (ref.get("kind") or "Service") == "Service")
        conds = [_cond("Accepted", True, "Accepted", "route is accepted", gen)] if attached else [
            _cond("Accepted", False, reason, msg, gen)]
        if problems:
            conds.append(_cond("ResolvedRefs", False, problems[0][0], "; ".join(m for _, m in problems), gen))
        else:
            conds.append(_cond("ResolvedRefs", True, "ResolvedRefs", "all references are resolved", gen))
        ref_out = {"group": group, "kind": kind}
        ref_out.update({k: v for k, v in pref.items() if k not in ("group", "kind")})
        parents.append({"parentRef": ref_out, "controllerName": controller, "conditions": conds})
    return parents


# --------------------------------------------------------------------------- entry point


def _doc(api: str, kind: str, obj: Mapping, status: dict, cluster: bool = False) -> dict:
    meta = _meta(obj)
    md = {"name": meta.get("name"), "generation": _gen(obj)}
    if not cluster:
        md = {"name": meta.get("name"), "namespace": meta.get("namespace"), "generation": _gen(obj)}
    return {"apiVersion": api, "kind": kind, "metadata": md, "status": status}


def translate(objects: Mapping[Key, Mapping], *, controller: str = DEFAULT_CONTROLLER,
              faults: frozenset[str] = frozenset()) -> tuple[Plan, dict[Key, dict]]:
    """Objects -> (data-plane plan, status documents keyed like the objects)."""
    idx = _Index(objects)
    statuses: dict[Key, dict] = {}
    classes = set()
    for (kind, _, name), gc in sorted(objects.items()):
        if kind != "GatewayClass" or (gc.get("spec") or {}).get("controllerName") != controller:
            continue
        classes.add(name)
        gen = _gen(gc)
        statuses[(kind, "", name)] = _doc("gateway.networking.k8s.io/v1", kind, gc, {
            "conditions": [
                _cond("Accepted", True, "Accepted", "handled by the reference gateway", gen),
                _cond("SupportedVersion", True, "SupportedVersion", "standard channel v1.5+ objects", gen),
            ],
            "supportedFeatures": [{"name": f} for f in sorted(SUPPORTED_FEATURES)],
        }, cluster=True)

    owned: dict[tuple[str, str], list[_ListenerState]] = {}
    extras: dict[tuple[str, str], dict] = {}
    for (kind, ns, name), gw in sorted(objects.items()):
        if kind == "Gateway" and (gw.get("spec") or {}).get("gatewayClassName") in classes:
            owned[(ns, name)], extras[(ns, name)] = _gateway(idx, gw, faults)

    policies, governing = _backend_policies(idx, faults)
    backend_tls = {}
    for key, extra in extras.items():
        client_cert = None if "omit-backend-client-cert" in faults else extra["client_cert"]
        backend_tls[key] = _BackendTLSContext(governing, client_cert, faults)
    services_used: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for (kind, ns, name), route in sorted(objects.items()):
        if kind != "HTTPRoute":
            continue
        parents = _route(idx, route, owned, controller, backend_tls, services_used)
        if parents:
            statuses[(kind, ns, name)] = _doc("gateway.networking.k8s.io/v1", kind, route, {"parents": parents})
    for p in policies:
        ancestors = sorted(gw for gw, used in services_used.items()
                           if any((p.namespace, svc) in used for svc in p.services))
        if ancestors:
            statuses[("BackendTLSPolicy", p.namespace, p.name)] = _doc(
                "gateway.networking.k8s.io/v1", "BackendTLSPolicy", objects[("BackendTLSPolicy", p.namespace, p.name)],
                _policy_status(p, ancestors, controller))

    ports: dict[tuple[str, str, int], Port] = {}
    for (ns, name), listeners in owned.items():
        gw = objects[("Gateway", ns, name)]
        gen = _gen(gw)
        lstatus = []
        for ls in listeners:
            programmed = ls.usable and ls.programmed_problem is None
            conds = [
                _cond("Accepted", *ls.accepted[:2], ls.accepted[2], gen),
                _cond("Programmed", programmed, "Programmed" if programmed else "Invalid",
                      "listener is programmed" if programmed else
                      (ls.programmed_problem if ls.usable else f"listener is not accepted: {ls.accepted[2]}"), gen),
                _cond("ResolvedRefs", *ls.resolved[:2], ls.resolved[2], gen),
                _cond("Conflicted", *ls.conflicted[:2], ls.conflicted[2], gen),
            ]
            lstatus.append({"name": ls.name, "supportedKinds": ls.kinds,
                            "attachedRoutes": ls.attached, "conditions": conds})
        usable = [ls for ls in listeners if ls.usable]
        all_ok = len(usable) == len(listeners)
        any_programmed = any(ls.usable and ls.programmed_problem is None for ls in listeners)
        gconds = [
            _cond("Accepted", bool(usable) or not listeners, "Accepted" if all_ok else "ListenersNotValid",
                  "gateway is accepted" if all_ok else "some listeners are not valid", gen),
            _cond("Programmed", any_programmed or not listeners, "Programmed" if any_programmed or not listeners else "Invalid",
                  "gateway is programmed on 127.0.0.1" if any_programmed or not listeners else "no listener can be programmed", gen),
        ]
        cert_problem = extras[(ns, name)]["client_cert_problem"]
        if cert_problem and "report-client-certificate-ref-resolved" not in faults:
            gconds.append(_cond("ResolvedRefs", False, *cert_problem, gen))
        elif any(not ls.resolved[0] for ls in listeners):
            gconds.append(_cond("ResolvedRefs", False, "ListenersNotResolved",
                                "some listeners have unresolved references", gen))
        else:
            gconds.append(_cond("ResolvedRefs", True, "ResolvedRefs", "all references are resolved", gen))
        if extras[(ns, name)]["insecure"] and "no-insecure-condition" not in faults:
            gconds.append(_cond("InsecureFrontendValidationMode", True, "ConfigurationChanged",
                                "client certificate validation allows insecure fallback", gen))
        statuses[("Gateway", ns, name)] = _doc("gateway.networking.k8s.io/v1", "Gateway", gw, {
            "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
            "conditions": gconds,
            "listeners": lstatus,
        })
        by_port: dict[int, list[_ListenerState]] = {}
        for ls in listeners:
            if ls.protocol in ("HTTP", "HTTPS") and 0 < ls.port < 65536:
                by_port.setdefault(ls.port, []).append(ls)
        for port, group in sorted(by_port.items()):
            protocol = group[0].protocol
            plan_listeners = []
            for ls in group:
                servable = ls.usable and not ls.fail_closed and (protocol == "HTTP" or ls.cert is not None)
                validation = ls.validation if servable else None
                if protocol == "HTTP" and "validate-http-listeners" in faults \
                        and ((gw.get("spec") or {}).get("tls") or {}).get("frontend"):
                    validation = Validation(ALLOW_VALID_ONLY, ())
                plan_listeners.append(Listener(
                    name=ls.name, hostname=ls.hostname, protocol=ls.protocol, servable=servable,
                    cert_pem=ls.cert[0] if ls.cert else None, key_pem=ls.cert[1] if ls.cert else None,
                    validation=validation,
                    rules=tuple(ls.rules) if servable else (),
                ))
            ports[(ns, name, port)] = Port(ns, name, port, protocol, tuple(plan_listeners))

    if "stale-observed-generation" in faults:
        statuses = {k: _stale_generation(v) for k, v in statuses.items()}
    return Plan(ports=ports, gateways=tuple(sorted(owned))), statuses


def _stale_generation(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: (1 if k == "observedGeneration" else _stale_generation(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_stale_generation(v) for v in doc]
    return doc


# --------------------------------------------------------------------------- status memory


def _walk_conditions(doc: Any, path: tuple = ()) -> Iterable[tuple[tuple, list]]:
    """Yield (path, conditions list) for every ``conditions`` list, keyed stably."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "conditions" and isinstance(v, list):
                yield path, v
            else:
                yield from _walk_conditions(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            ref = next((v[k] for k in ("parentRef", "ancestorRef") if isinstance(v, dict) and k in v), None)
            key = v.get("name") if isinstance(v, dict) and "name" in v else (
                repr(sorted(ref.items())) if ref is not None else i)
            yield from _walk_conditions(v, path + (key,))


def stamp_transitions(new: dict, old: dict | None, now: str, *, sticky_types: frozenset[str] = frozenset()) -> dict:
    """Give every condition in ``new`` a lastTransitionTime.

    A condition keeps its previous time while its status is unchanged. Conditions in
    ``sticky_types`` that were present before and are now missing are carried over
    (that is how the ``stale-insecure-condition`` fault keeps a removed condition).
    """
    previous = dict(_walk_conditions(old)) if old else {}
    for path, conds in _walk_conditions(new):
        before = {c.get("type"): c for c in previous.get(path, [])}
        for c in conds:
            p = before.get(c["type"])
            c["lastTransitionTime"] = p["lastTransitionTime"] if (
                p and p.get("status") == c["status"] and p.get("lastTransitionTime")) else now
        present = {c["type"] for c in conds}
        for t in sorted(sticky_types):
            if t in before and t not in present:
                conds.append(dict(before[t]))
    return new


def sticky_cas(plan: Plan, memory: dict[tuple[str, str, int, str], tuple[bytes, ...]]) -> Plan:
    """Fault ``ignore-ca-rotation``: reuse the first CA bundles seen per Gateway listener.

    ``memory`` is updated in place with bundles seen for the first time.
    """
    ports = {}
    for key, port in plan.ports.items():
        listeners = []
        for ls in port.listeners:
            if ls.validation is not None:
                mkey = (port.namespace, port.gateway, port.port, ls.name)
                first = memory.setdefault(mkey, ls.validation.ca_pems)
                ls = replace(ls, validation=replace(ls.validation, ca_pems=first))
            listeners.append(ls)
        ports[key] = replace(port, listeners=tuple(listeners))
    return replace(plan, ports=ports)


def sticky_certs(plan: Plan, memory: dict[tuple[str, str, int, str], tuple[bytes, bytes]]) -> Plan:
    """Fault ``ignore-certificate-rotation``: keep the first server certificate per listener.

    ``memory`` is updated in place with certificates seen for the first time.
    """
    ports = {}
    for key, port in plan.ports.items():
        listeners = []
        for ls in port.listeners:
            if ls.cert_pem is not None and ls.key_pem is not None:
                mkey = (port.namespace, port.gateway, port.port, ls.name)
                cert, key_pem = memory.setdefault(mkey, (ls.cert_pem, ls.key_pem))
                ls = replace(ls, cert_pem=cert, key_pem=key_pem)
            listeners.append(ls)
        ports[key] = replace(port, listeners=tuple(listeners))
    return replace(plan, ports=ports)
