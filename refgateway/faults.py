"""Deliberate deviations ("faults") that make the reference gateway wrong on purpose.

The harness proves that each scenario can fail by running it against a gateway with
one fault enabled. A fault is therefore a single, targeted deviation: it changes one
behaviour and leaves everything else correct, so a scenario that still passes with it
enabled is not checking what it claims to check.

Faults are enabled only with ``--fault NAME`` on the command line; nothing turns them
on implicitly. ``FAULTS`` is the registry (name -> one-line description) and is what
``--list-faults`` prints.
"""

from __future__ import annotations

__all__ = ["FAULTS", "UnknownFault", "check_faults"]

FAULTS: dict[str, str] = {
    "accept-any-client-cert": "AllowValidOnly accepts any presented client certificate (no certificate is still rejected)",
    "accept-no-client-cert": "AllowValidOnly accepts connections that present no client certificate",
    "accept-expired-client-cert": "client certificate verification ignores the validity window",
    "ignore-per-port": "spec.tls.frontend.perPort is ignored; the default applies to every HTTPS port",
    "reject-insecure-fallback": "AllowInsecureFallback behaves like AllowValidOnly in the data plane",
    "fallback-without-cert-request": "AllowInsecureFallback does not request a client certificate at all",
    "keep-client-identity-headers": "client-sent x-refgateway-* headers are passed to the backend unchanged",
    "report-fallback-as-verified": "in AllowInsecureFallback the backend is told SUCCESS even when verification failed",
    "no-insecure-condition": "the Gateway condition InsecureFrontendValidationMode is never set",
    "stale-insecure-condition": "InsecureFrontendValidationMode is never removed once it was set",
    "fail-open-invalid-ca": "when every CA reference is invalid the port is served without client verification and status reports it valid",
    "ignore-ca-rotation": "each Gateway keeps using the first CA bundle loaded for it",
    "ignore-pinning": "the verify-subject-alt-names / verify-certificate-hash listener options are ignored",
    "stale-observed-generation": "every observedGeneration is reported as 1",
    "distrust-client-ca": "the CA bundles of a frontend validation are not loaded: no client certificate verifies",
    "validate-http-listeners": "frontend validation is also applied to HTTP listeners, which then refuse every request",
    "report-valid-ca-unresolved": "listeners report ResolvedRefs=False/InvalidCACertificateRef although their CA refs are valid",
    "hide-partially-invalid-ca-refs": "when at least one CA ref of a validation is valid, the invalid ones are not reported (listener ResolvedRefs=True)",
    "ignore-chain-depth": "client certificate chains are verified to any depth (no verify-depth limit)",
    "ignore-certificate-rotation": "each Gateway listener keeps serving the first server certificate loaded for it",
    "ignore-misdirected-requests": "on HTTPS ports the Host header picks the listener; no 421 when it differs from the SNI listener",
    "misdirected-on-any-host-mismatch": "421 whenever the Host header differs from the SNI, even where both select the same listener",
    "unmatched-host-to-first-route": "a request whose Host matches no route of its listener goes to the listener's first route instead of 404",
    "route-host-with-port": "the Host header is matched against route hostnames with its port (Host example.com:8080 finds no route)",
    "no-sni-skips-client-validation": "a TLS connection without SNI is served without requesting a client certificate",
    "first-listener-certificate-per-port": "every HTTPS listener on a port serves the certificate of the port's first listener",
    "misdirected-only-with-client-validation": "421 only on HTTPS ports that verify client certificates; elsewhere the Host header picks the listener",
    "backend-skip-hostname-verification": "the backend certificate's chain is verified but not its identity (neither the policy hostname nor its subjectAltNames)",
    "backend-ignore-subject-alt-names": "BackendTLSPolicy subjectAltNames are ignored; the backend certificate is verified against the hostname instead",
    "backend-skip-chain-verification": "the backend certificate's chain is not verified (any issuer, any validity window); its identity still is",
    "backend-trust-system-roots": "BackendTLSPolicy caCertificateRefs are not used: backends are verified against the system roots instead",
    "backend-plaintext-fallback": "a BackendTLSPolicy that cannot be honoured is ignored: its backends get the request in plain HTTP instead of 5xx",
    "backend-fail-open": "a BackendTLSPolicy without usable trust anchors is reported Accepted and its backends are reached over TLS without verification",
    "backend-sni-from-host": "the SNI sent to a TLS backend is the client's Host instead of the policy hostname (verification still uses the hostname)",
    "omit-backend-client-cert": "the Gateway's spec.tls.backend.clientCertificateRef is resolved and reported but never presented to backends",
    "report-client-certificate-ref-resolved": "an invalid spec.tls.backend.clientCertificateRef is not reported: the Gateway says ResolvedRefs=True",
    "ignore-backend-tls-policy-deletion": "a deleted BackendTLSPolicy stays in force (its backends still get TLS with its settings) until one replaces it",
    "certificate-refs-deny-cross-namespace": "a listener certificateRef to another namespace is refused even when a ReferenceGrant permits it",
    "certificate-refs-ignore-reference-grant": "a listener certificateRef to another namespace is served without a ReferenceGrant (status still says RefNotPermitted)",
    "ignore-section-name": "BackendTLSPolicy targetRefs sectionName is ignored: a policy for one Service port applies to every port",
    "reverse-policy-conflict-order": "when BackendTLSPolicies conflict, the newest wins (then the last by namespace/name)",
    "no-cluster-trust-bundles": "caCertificateRefs to ClusterTrustBundles are an unsupported kind, although the feature is advertised",
    "cluster-trust-bundle-fail-open": "a caCertificateRef to a ClusterTrustBundle that does not exist is reported resolved and verifies nothing (clients and backends get through unverified)",
    "cluster-trust-bundle-signer-wide": "a ClusterTrustBundle ref trusts every bundle with the same spec.signerName, not only the one it names",
    "ignore-cluster-trust-bundle-rotation": "each ClusterTrustBundle keeps the first trustBundle seen for its name, also after it is changed or deleted",
    "invalid-ca-throwaway-certificate": "when every CA reference of a listener is invalid, status says so, but the port is served with a throwaway self-signed certificate and lets every client in",
    "keep-last-backend-client-cert": "TLS to a backend is cached per backend and policy, not per client certificate: a Gateway whose clientCertificateRef is invalid presents the last valid one used for that backend",
    "fail-tls-backends": "the trust anchors of BackendTLSPolicies are never loaded: every TLS backend fails verification and the client gets 502",
    "accept-any-on-tls12": "on TLS 1.2 connections, listeners with AllowValidOnly validation do not request a client certificate (everyone is let in); TLS 1.3 is correct",
    "accept-any-on-tls13": "on TLS 1.3 connections, listeners with AllowValidOnly validation do not request a client certificate (everyone is let in); TLS 1.2 is correct",
    "tls13-only-accept-any": "listeners with AllowValidOnly validation refuse TLS 1.2 with a protocol_version alert and let every TLS 1.3 client in",
    "internal-error-for-bad-client-cert": "a refused client certificate ends the handshake with an internal_error alert, not a certificate alert",
    "accept-non-ca-intermediate": "client chains may pass through an intermediate that is not a CA (basicConstraints cA=FALSE or absent): the verify callback overrules OpenSSL's invalid-CA verdict",
    "ignore-path-length": "the pathLenConstraint of client-chain CAs is not enforced (the verify callback overrules path-length-exceeded)",
    "ignore-ca-key-usage": "a client-chain CA is a CA by basicConstraints alone: an intermediate whose keyUsage lacks keyCertSign may sign",
    "ignore-name-constraints": "name constraints of client-chain CAs are not enforced (permitted and excluded subtrees)",
    "ignore-unknown-critical-extensions": "client certificates with an unrecognised critical extension verify (leaf and intermediates)",
    "accept-bad-certificate-signature": "a client-chain certificate whose signature does not verify with its issuer's key is accepted",
    "check-leaf-validity-only": "only the client leaf's validity window is checked: expired and not-yet-valid intermediates verify",
    "client-security-level-1": "listeners run at OpenSSL's default security level 1: RSA-1024 client keys verify (SHA-1 signatures still do not)",
    "client-security-level-0": "listeners run at OpenSSL security level 0 (the usual workaround for 'ca md too weak'): SHA-1-signed client certificates and RSA-1024 keys verify",
    "refuse-after-proxying": "AllowValidOnly is enforced only once the backend has answered: the handshake lets any client certificate (or none) in, the request is forwarded, and a client that failed verification then gets the connection closed instead of the answer",
    "sessions-across-listeners": "one session cache and ticket key for every listener and port: a session resumes wherever it is offered, whatever validation made it (nginx CVE-2014-3616, CVE-2025-23419)",
    "sessions-survive-ca-change": "a listener's sessions keep the scope of its first validation: sessions made before a CA bundle change still resume after it (Go CVE-2025-68121, golang/go#77113)",
    "resumption-checks-leaf-expiry-only": "a resumed session is refused when the client's leaf has expired, but not when another certificate of its verified chain has (Go CVE-2025-68121, golang/go#77217)",
}


class UnknownFault(ValueError):
    pass


def check_faults(names: list[str] | tuple[str, ...]) -> frozenset[str]:
    """Return the names as a set, or raise UnknownFault naming the valid ones."""
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise UnknownFault(
            f"unknown fault {', '.join(map(repr, unknown))}; valid faults: {', '.join(sorted(FAULTS))}"
        )
    return frozenset(names)
