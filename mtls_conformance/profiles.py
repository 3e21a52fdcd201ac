"""Implementation profiles: what is particular to one implementation, in one place.

Scenarios never test for an implementation by name. Whatever differs between vendors
(which features they claim, the option keys they use for SAN or hash pinning, how they
tell a backend what they verified, which HTTP statuses they answer a rejected client
certificate with) is a field here, keyed by the GatewayClass controllerName.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import yaml

from . import features

__all__ = ["UPSTREAM_FRONTEND", "IdentityForwarding", "Pinning", "Profile", "REFGATEWAY",
           "GENERIC", "KGATEWAY", "NGINX_GATEWAY_FABRIC", "ENVOY_GATEWAY", "ISTIO", "AGENTGATEWAY",
           "TRAEFIK", "BUILTIN", "ProfileError", "for_controller", "load"]

UPSTREAM_FRONTEND = ("Gateway", "HTTPRoute", "ReferenceGrant",
                     "GatewayFrontendClientCertificateValidation",
                     "GatewayFrontendClientCertificateValidationInsecureFallback")


@dataclasses.dataclass(frozen=True)
class IdentityForwarding:
    """How the gateway tells a backend what it verified about the client certificate."""

    verify_header: str
    verified: str          # value when the certificate chain verified
    absent: str            # value when the client sent no certificate
    failed_prefix: str     # values starting with this: a certificate was sent and failed
    sha256_header: str | None = None  # carries the SHA-256 of the presented leaf


@dataclasses.dataclass(frozen=True)
class Pinning:
    """Listener ``tls.options`` keys that pin client certificates beyond the CA."""

    subject_alt_names: str | None = None
    certificate_hash: str | None = None


@dataclasses.dataclass(frozen=True)
class Profile:
    key: str
    name: str
    controller_names: tuple[str, ...] = ()
    organization: str = ""
    project: str = ""
    url: str = ""
    supported_features: frozenset[str] = frozenset()
    identity: IdentityForwarding | None = None
    pinning: Pinning | None = None
    #: HTTP statuses that count as a rejected client certificate when the implementation
    #: completes the handshake and answers instead (never under --strict-rejection).
    rejection_statuses: frozenset[int] = frozenset()
    ca_in_secret: bool = False
    #: The most intermediate CAs between a client leaf and a trusted root that the
    #: implementation verifies (OpenSSL/nginx "verify depth"); None: not stated, not tested.
    max_chain_depth: int | None = None
    #: Weak client-chain crypto the implementation states it refuses (its policy, not RFC
    #: 5280): any of WEAK_CRYPTO. What is not listed is not tested.
    refused_weak_crypto: frozenset[str] = frozenset()
    notes: str = ""
    #: ConformanceReport ``implementation`` defaults (the --implementation-* options win).
    version: str = ""
    contact: tuple[str, ...] = ()
    #: Where the facts in this profile come from (documentation, source, published reports).
    sources: tuple[str, ...] = ()
    #: Which input decided ``supported_features``; shown in the report and the matrix.
    features_source: str = "built-in profile"

    def with_features(self, names: Iterable[str], *, source: str | None = None) -> Profile:
        return dataclasses.replace(self, supported_features=frozenset(names),
                                   features_source=source or self.features_source)


REFGATEWAY = Profile(
    key="refgateway",
    name="refgateway (the bundled reference gateway)",
    controller_names=("mtls-conformance.dev/refgateway",),
    organization="mtls-conformance",
    project="refgateway",
    url="https://mtls-conformance.dev/refgateway",
    supported_features=frozenset(features.FEATURES),
    identity=IdentityForwarding(
        verify_header="x-refgateway-client-verify", verified="SUCCESS", absent="NONE",
        failed_prefix="FAILED", sha256_header="x-refgateway-client-cert-sha256"),
    pinning=Pinning(subject_alt_names="refgateway.mtls-conformance.dev/verify-subject-alt-names",
                    certificate_hash="refgateway.mtls-conformance.dev/verify-certificate-hash"),
    ca_in_secret=True,
    max_chain_depth=4,
    refused_weak_crypto=frozenset({"sha1-signatures", "rsa-1024-keys"}),
    contact=("https://mtls-conformance.dev/refgateway/issues",),
)

GENERIC = Profile(key="generic", name="an implementation without a profile",
                  supported_features=frozenset(UPSTREAM_FRONTEND))

# Vendor profiles. Supported features: the implementation's published ConformanceReport in
# kubernetes-sigs/gateway-api conformance/reports/v1.6 (v1.5 for Istio) at 4564255a, plus
# the extensions of ours that its documentation describes. Everything else is a default.
# ClusterTrustBundle (v1.7.0, experimental) is claimed by none: no v1.7 report lists it, and
# upstream makes it one feature for frontend validation and BackendTLSPolicy together.
_CORE = ("Gateway", "HTTPRoute", "ReferenceGrant")
_FE = ("GatewayFrontendClientCertificateValidation",
       "GatewayFrontendClientCertificateValidationInsecureFallback")
_BACKEND = ("BackendTLSPolicy", "GatewayBackendClientCertificate")
_REPORTS = "https://github.com/kubernetes-sigs/gateway-api/tree/main/conformance/reports"

KGATEWAY = Profile(
    key="kgateway",
    name="kgateway",
    controller_names=("kgateway.dev/kgateway",),
    organization="kgateway-dev", project="kgateway",
    url="https://github.com/kgateway-dev/kgateway",
    supported_features=frozenset((*_CORE, *_FE, *_BACKEND, "BackendTLSPolicySANValidation",
                                  "FrontendClientCertificatePinning",
                                  "FrontendCACertificateInSecret")),
    # api/annotations/gateway.go: listener tls.options keys; only valid with caCertificateRefs.
    pinning=Pinning(subject_alt_names="kgateway.dev/verify-subject-alt-names",
                    certificate_hash="kgateway.dev/verify-certificate-hash"),
    ca_in_secret=True,
    contact=("github.com/kgateway-dev/kgateway/issues/new/choose",),
    sources=(f"{_REPORTS}/v1.6/kgateway/v2.4.0-rc.1-report.yaml",
             "kgateway-dev/kgateway api/annotations/gateway.go, "
             "pkg/kgateway/translator/sslutils/ssl_utils.go"),
    notes="verify-certificate-hash takes SHA-256 as 64 hex digits or colon-separated pairs; "
          "in AllowInsecureFallback a CA that cannot be fetched disables validation",
)

NGINX_GATEWAY_FABRIC = Profile(
    key="nginx-gateway-fabric",
    name="NGINX Gateway Fabric",
    controller_names=("gateway.nginx.org/nginx-gateway-controller",),
    organization="nginx", project="nginx-gateway-fabric",
    url="https://github.com/nginx/nginx-gateway-fabric",
    supported_features=frozenset((*_CORE, *_FE, *_BACKEND,
                                  "GatewayHTTPSListenerDetectMisdirectedRequests")),
    # ssl_verify_client on: nginx completes the handshake and flags the request 495/496
    # (shown as 400); NGF answers those with "return 444", a close without a response.
    rejection_statuses=frozenset({400, 495, 496}),
    max_chain_depth=4,
    contact=("https://github.com/nginx/nginx-gateway-fabric/discussions/new/choose",),
    sources=(f"{_REPORTS}/v1.6/nginx-nginx-gateway-fabric/"
             "experimental-2.7.0-pre-release-default-report.yaml",
             "nginx/nginx-gateway-fabric internal/controller/state/dataplane/configuration.go, "
             "internal/controller/nginx/config/servers_template.go"),
    notes="rejects after the handshake: 444 (close) or nginx's 400/495/496; "
          "AllowInsecureFallback is ssl_verify_client optional_no_ca",
)

ENVOY_GATEWAY = Profile(
    key="envoy-gateway",
    name="Envoy Gateway",
    controller_names=("gateway.envoyproxy.io/gatewayclass-controller",),
    organization="envoyproxy", project="envoy-gateway",
    url="https://github.com/envoyproxy/gateway",
    supported_features=frozenset((*_CORE, *_FE, *_BACKEND, "BackendTLSPolicySANValidation")),
    contact=("https://github.com/envoyproxy/gateway/blob/main/GOVERNANCE.md",),
    sources=(f"{_REPORTS}/v1.6/envoy-gateway/experimental-v1.9.0-default-report.yaml",
             "envoyproxy/gateway#6353 and #6714 (ClusterTrustBundle in BackendTLSPolicy caCertificateRefs)",
             # v1.9.1 translates spec.tls.frontend default and perPort, both modes; it publishes
             # no supportedFeatures in the GatewayClass status (commented out), so these come
             # from the report above. Run here: docs/implementations/envoy-gateway.md.
             "envoyproxy/gateway v1.9.1 internal/gatewayapi/listener.go:43-140, "
             "internal/gatewayapi/status/gatewayclass.go:33-36",
             "reports/envoy-gateway/run.json"),
    notes="documents ClusterTrustBundle caCertificateRefs for BackendTLSPolicy only (certificates.k8s.io/"
          "v1beta1), not for frontend validation, so the ClusterTrustBundle feature is not claimed; "
          "--supported-features can add it. Envoy (1.39.1, BoringSSL) refuses in the handshake, never with "
          "an HTTP status: TLS 1.2 handshake alert 'unknown ca'; TLS 1.3 on the first read 'unknown ca', "
          "'certificate required' (none sent), 'certificate expired' (also not yet valid), 'unsupported "
          "certificate' (server-auth-only EKU), 'certificate unknown' (a chain that breaks name constraints "
          "or carries an unknown critical extension), 'decrypt error' (a leaf whose signature does not "
          "verify); the same over HTTP/2 (runs of 2026-12-06, docs/implementations/envoy-gateway.md)",
)

ISTIO = Profile(
    key="istio",
    name="Istio",
    controller_names=("istio.io/gateway-controller",),
    organization="istio", project="istio", url="https://istio.io/",
    # Its v1.5 report claims neither frontend feature; v1.6 has no Istio report.
    supported_features=frozenset((*_CORE, "BackendTLSPolicy", "BackendTLSPolicySANValidation")),
    contact=("@istio/maintainers",),
    sources=(f"{_REPORTS}/v1.5/istio-istio/1.30.0-default-report.yaml",),
)

AGENTGATEWAY = Profile(
    key="agentgateway",
    name="agentgateway",
    controller_names=("agentgateway.dev/agentgateway", "kgateway.dev/agentgateway"),
    organization="agentgateway", project="agentgateway", url="http://agentgateway.dev/",
    supported_features=frozenset((*_CORE, *_FE, *_BACKEND, "BackendTLSPolicySANValidation",
                                  "GatewayHTTPSListenerDetectMisdirectedRequests")),
    contact=("github.com/agentgateway/agentgateway/issues/new/choose",),
    sources=(f"{_REPORTS}/v1.6/agentgateway-agentgateway/v1.3.1-report.yaml",),
    notes="kgateway.dev/agentgateway is the controllerName of releases before the project split",
)

TRAEFIK = Profile(
    key="traefik",
    name="Traefik",
    controller_names=("traefik.io/gateway-controller",),
    organization="traefik", project="traefik", url="https://traefik.io/",
    # Its v1.6 report lists both frontend features as unsupported.
    supported_features=frozenset((*_CORE, "BackendTLSPolicy")),
    contact=("@traefik/maintainers",),
    sources=(f"{_REPORTS}/v1.6/traefik-traefik/experimental-v3.7.10-default-report.yaml",
             "https://doc.traefik.io/traefik/routing/providers/kubernetes-gateway/",
             # v3.6.12, run here (docs/implementations/traefik.md): the same features in its
             # GatewayClass status (pkg/provider/kubernetes/gateway/features.go).
             "reports/traefik/run.json"),
)

BUILTIN: dict[str, Profile] = {p.key: p for p in (
    REFGATEWAY, KGATEWAY, NGINX_GATEWAY_FABRIC, ENVOY_GATEWAY, ISTIO, AGENTGATEWAY, TRAEFIK,
    GENERIC)}


#: Profile.refused_weak_crypto values: SHA-1 signatures in the client chain, RSA keys under 2048 bits.
WEAK_CRYPTO = frozenset({"sha1-signatures", "rsa-1024-keys"})


class ProfileError(ValueError):
    pass


def for_controller(controller_name: str) -> Profile | None:
    return next((p for p in BUILTIN.values() if controller_name in p.controller_names), None)


def load(path: Path) -> Profile:
    """A user's profile file (YAML with the fields of Profile)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"--profile {path}: cannot read it: {exc}") from exc
    if not isinstance(data, dict) or "key" not in data:
        raise ProfileError(f"--profile {path}: expected a mapping with at least 'key' and 'name'")
    known = {f.name for f in dataclasses.fields(Profile)}
    unknown = set(data) - known
    if unknown:
        raise ProfileError(f"--profile {path}: unknown fields {sorted(unknown)}; known: {sorted(known)}")
    depth = data.get("max_chain_depth")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ProfileError(f"--profile {path}: max_chain_depth must be a whole number of intermediate CAs "
                           f"(0 or more), or left out when the implementation states none; got {depth!r}")
    weak = data.get("refused_weak_crypto", ())
    if not isinstance(weak, (list, tuple)) or set(weak) - WEAK_CRYPTO:
        raise ProfileError(f"--profile {path}: refused_weak_crypto must be a list of {sorted(WEAK_CRYPTO)}; "
                           f"got {weak!r}")
    for name in data.get("supported_features", ()):
        try:
            features.lookup(name)
        except features.UnknownFeature as exc:
            raise ProfileError(f"--profile {path}: {exc}") from None
    try:
        return Profile(
            **{**data,
               "controller_names": tuple(data.get("controller_names", ())),
               "contact": tuple(data.get("contact", ())),
               "sources": tuple(data.get("sources", ())),
               # A file without supported_features leaves them to the GatewayClass status.
               "features_source": f"--profile {path}" if "supported_features" in data else "",
               "supported_features": frozenset(data.get("supported_features", ())),
               "rejection_statuses": frozenset(data.get("rejection_statuses", ())),
               "refused_weak_crypto": frozenset(weak),
               "identity": IdentityForwarding(**data["identity"]) if data.get("identity") else None,
               "pinning": Pinning(**data["pinning"]) if data.get("pinning") else None})
    except TypeError as exc:
        raise ProfileError(f"--profile {path}: {exc}") from exc
