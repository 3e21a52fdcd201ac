"""Backend TLS: BackendTLSPolicies (targets, trust anchors, conflicts, status) and the
Gateway's client certificate for backends (spec.tls.backend.clientCertificateRef).

Pure, like the rest of the translator (see ``translator``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ._plan import (GW_GROUP, BackendTLS, _cond, _decode_secret, _gen, _Index, _meta, _missing_bundles_only,
                    _resolve_ca_ref, _valid_keypair)
from .faults import BACKEND_FAIL_OPEN, IGNORE_SECTION_NAME, REVERSE_POLICY_CONFLICT_ORDER


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
        pem, problem = _resolve_ca_ref(idx, ref, ns, "InvalidKind")
        if problem:
            bad.append(problem)
        else:
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
        section = None if IGNORE_SECTION_NAME in faults else ref.get("sectionName") or None
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
    fail_open = BACKEND_FAIL_OPEN in faults or _missing_bundles_only(idx, validation.get("caCertificateRefs") or [])
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
        contenders.sort(key=lambda p: p.order, reverse=REVERSE_POLICY_CONFLICT_ORDER in faults)
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
