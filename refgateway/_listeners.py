"""Listeners and frontend validation: a Gateway's listeners, their certificates, and
the client-certificate validation (spec.tls.frontend) each HTTPS listener gets.

Pure, like the rest of the translator (see ``translator``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ._backend_tls import _client_certificate
from ._plan import (ALLOW_INSECURE_FALLBACK, ALLOW_VALID_ONLY, GW_GROUP, OPTION_DOMAIN, PIN_HASH_KEYS,
                    PIN_SAN_KEYS, Validation, _decode_secret, _Index, _is_bundle_ref, _meta,
                    _missing_bundles_only, _parse_hash_pins, _resolve_ca_ref, _valid_keypair)
from .faults import (CERTIFICATE_REFS_DENY_CROSS_NAMESPACE, CERTIFICATE_REFS_IGNORE_REFERENCE_GRANT,
                     FAIL_OPEN_INVALID_CA, HIDE_PARTIALLY_INVALID_CA_REFS, IGNORE_PER_PORT, IGNORE_PINNING,
                     INVALID_CA_TAKES_DOWN_GATEWAY, REJECT_INSECURE_FALLBACK, REPORT_VALID_CA_UNRESOLVED)


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
    takes_down_gateway: bool = False  # the invalid-ca-takes-down-gateway fault
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


def _resolve_ca_refs(idx: _Index, gw_ns: str, refs: list) -> tuple[list[bytes], list[tuple[str, str]], int]:
    """Resolve validation.caCertificateRefs: (valid PEM bundles, [(reason, message)], how many
    refs the invalid-ca-takes-down-gateway fault took as resolved)."""
    def not_permitted(kind: str, ns: str, name: str, where: str) -> str | None:
        if ns != gw_ns and not idx.granted(GW_GROUP, "Gateway", gw_ns, "", kind, ns, name):
            return f"caCertificateRef {where} is in another namespace and no ReferenceGrant allows it"
        return None

    good, bad, unreadable = [], [], 0
    for ref in refs or []:
        ns = ref.get("namespace") or gw_ns
        pem, problem = _resolve_ca_ref(idx, ref, ns, "InvalidCACertificateKind", not_permitted)
        if problem and INVALID_CA_TAKES_DOWN_GATEWAY in idx.faults and problem[0] == "InvalidCACertificateRef" \
                and not _is_bundle_ref(ref) and idx.get(ref.get("kind") or "", ns, ref.get("name") or "") is not None:
            # The object exists, so it counts as resolved; its unparsed bytes go to the data
            # plane, which refuses them, and with them the Gateway's whole TLS configuration.
            unreadable += 1
        elif problem:
            bad.append(problem)
        else:
            good.append(pem)
    return good, bad, unreadable


def _frontend_for_port(spec: Mapping, port: int, faults: frozenset[str]) -> Mapping | None:
    frontend = (spec.get("tls") or {}).get("frontend") or {}
    if IGNORE_PER_PORT not in faults:
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
        if ns != gw_ns and (CERTIFICATE_REFS_DENY_CROSS_NAMESPACE in faults or not idx.granted(
                GW_GROUP, "Gateway", gw_ns, "", "Secret", ns, name)):
            ls.unresolved("RefNotPermitted", f"certificateRef Secret {ns}/{name} is not permitted by a ReferenceGrant")
            if CERTIFICATE_REFS_IGNORE_REFERENCE_GRANT not in faults:
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
        if pins_requested and IGNORE_PINNING not in faults:
            ls.refuse("UnsupportedValue",
                      "invalid option: certificate pinning options need spec.tls.frontend validation "
                      "(caCertificateRefs) for this port")
        return
    mode = validation.get("mode") or ALLOW_VALID_ONLY
    if mode not in (ALLOW_VALID_ONLY, ALLOW_INSECURE_FALLBACK):
        ls.refuse("UnsupportedValue", f"validation.mode {mode!r} is not supported")
        return
    good, bad, unreadable = _resolve_ca_refs(idx, gw_ns, validation.get("caCertificateRefs") or [])
    ls.takes_down_gateway = unreadable > 0  # reported as usable CAs: Accepted, Programmed
    if FAIL_OPEN_INVALID_CA in faults and not good:
        return  # serve without client verification and say nothing
    if _missing_bundles_only(idx, validation.get("caCertificateRefs") or []):
        return  # the same, only for ClusterTrustBundles that do not exist
    for reason, msg in bad:
        if good and HIDE_PARTIALLY_INVALID_CA_REFS in faults:
            break
        ls.unresolved(reason, msg)
    if not bad and REPORT_VALID_CA_UNRESOLVED in faults:
        ls.unresolved("InvalidCACertificateRef", "caCertificateRefs could not be resolved")
    if not good and not unreadable:
        ls.refuse("NoValidCACertificate",
                  f"none of the {len(bad)} caCertificateRefs of the validation for port {ls.port} is usable")
        ls.fail_closed = True
        return
    sans: set[str] = set()
    hashes: set[str] = set()
    if IGNORE_PINNING not in faults:
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
    if REJECT_INSECURE_FALLBACK in faults:
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


@functools.cache
def _throwaway_certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate no client trusts (the invalid-ca-throwaway-certificate fault)."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "throwaway.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("throwaway.invalid")]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
