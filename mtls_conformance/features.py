"""The features this suite checks, and what each one means.

Upstream features keep their exact ``SupportedFeature`` name from sigs.k8s.io/gateway-api
``pkg/features`` of v1.7.0, so that a verdict here and a ConformanceReport line up. All of
them are in the standard channel (since v1.5.0) except ``ClusterTrustBundle`` (new in
v1.7.0, experimental), which upstream lists in both GatewayExtendedFeatures and
BackendTLSPolicyExtendedFeatures: with GatewayFrontendClientCertificateValidation it
means ClusterTrustBundle references in frontend validation, with BackendTLSPolicy in
BackendTLSPolicy validation (GEP-5075). What upstream has no name for gets an extension name
of ours, flagged ``upstream=False``; such features never appear in a ConformanceReport's
``supportedFeatures``.
"""

from __future__ import annotations

import dataclasses

__all__ = ["GATEWAY_HTTP", "Feature", "FEATURES", "table", "UnknownFeature", "lookup"]

GATEWAY_HTTP = "GATEWAY-HTTP"


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    description: str
    support: str  # "core" or "extended", as in the upstream conformance profiles
    upstream: bool = True
    profile: str = GATEWAY_HTTP
    channel: str = "standard"


FEATURES: dict[str, Feature] = {f.name: f for f in (
    Feature("Gateway", "Gateways with HTTP and HTTPS listeners, status conditions and addresses",
            "core"),
    Feature("HTTPRoute", "HTTPRoutes attached to Gateway listeners route to backend Services", "core"),
    Feature("ReferenceGrant", "cross-namespace references are allowed only by a ReferenceGrant",
            "core"),
    Feature("GatewayFrontendClientCertificateValidation",
            "spec.tls.frontend default and perPort client certificate validation (AllowValidOnly: "
            "RFC 5280 path validation of the client chain, each rule checked on its own)",
            "extended"),
    Feature("GatewayFrontendClientCertificateValidationInsecureFallback",
            "validation mode AllowInsecureFallback: a certificate is requested, "
            "unverified clients still connect", "extended"),
    Feature("GatewayHTTPSListenerDetectMisdirectedRequests",
            "421 when the Host header belongs to another HTTPS listener on the port than the SNI",
            "extended"),
    Feature("BackendTLSPolicy", "BackendTLSPolicy v1: TLS from the Gateway to backends", "extended"),
    Feature("BackendTLSPolicySANValidation",
            "BackendTLSPolicy subjectAltNames verify the backend certificate", "extended"),
    Feature("GatewayBackendClientCertificate",
            "spec.tls.backend.clientCertificateRef is presented to TLS backends", "extended"),
    Feature("ClusterTrustBundle",
            "caCertificateRefs may name a cluster-scoped certificates.k8s.io ClusterTrustBundle "
            "by name, for frontend validation and BackendTLSPolicy (GEP-5075)",
            "extended", channel="experimental"),
    # Extensions of ours: behaviours the guides describe that upstream does not name.
    Feature("FrontendClientIdentityForwarding",
            "the backend is told what the Gateway verified about the client certificate, "
            "and clients cannot forge it (how: the implementation profile)",
            "extended", upstream=False),
    Feature("BackendTLSPolicySystemCACertificates",
            "BackendTLSPolicy wellKnownCACertificates: System verifies backends against the "
            "gateway's system roots, and caCertificateRefs never widen to them",
            "extended", upstream=False),
    Feature("FrontendClientCertificatePinning",
            "listener tls.options pin the client certificate beyond the CA: allowed SANs and "
            "SHA-256 hashes of the leaf (option keys: the implementation profile)",
            "extended", upstream=False),
    Feature("FrontendClientCertificateChainDepth",
            "client chains with more intermediate CAs than the implementation's stated limit "
            "(profile max_chain_depth) are rejected, chains at the limit accepted",
            "extended", upstream=False),
    Feature("FrontendCACertificateInSecret",
            "caCertificateRefs may name a core Secret with key ca.crt instead of a ConfigMap",
            "extended", upstream=False),
    Feature("FrontendCertificateRotation",
            "a changed CA bundle or listener certificate takes effect for new connections "
            "without restarting anything",
            "extended", upstream=False),
    Feature("FrontendResumptionScopedToValidation",
            "a resumed TLS session (TLS 1.3 ticket, TLS 1.2 session ID or ticket) is served only "
            "under the client validation that made it: not by another listener or port, not "
            "after a CA rotation removed the client's CA, not after its chain expired; a gateway "
            "that never resumes passes, reported as \"resumption not offered\"",
            "extended", upstream=False),
)}


def table() -> list[str]:
    """``pytest --list-features``: name, profile and support level, origin, channel, meaning."""
    rows = [("FEATURE", "PROFILE", "SUPPORT", "ORIGIN", "CHANNEL", "DESCRIPTION")]
    rows += [(f.name, f.profile, f.support, "upstream" if f.upstream else "extension",
              f.channel if f.upstream else "-", f.description) for f in FEATURES.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]


class UnknownFeature(ValueError):
    pass


def lookup(name: str) -> Feature:
    try:
        return FEATURES[name]
    except KeyError:
        close = [n for n in FEATURES if n.lower() == name.lower()]
        hint = f"; did you mean {close[0]}?" if close else f"; known features: {', '.join(FEATURES)}"
        raise UnknownFeature(f"unknown feature {name!r}{hint}") from None
