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

# One constant per fault. refgateway's other modules test ``CONSTANT in faults`` and never
# spell the name out (tests/refgateway/test_fault_names.py), so a search for the constant
# finds every place the fault acts; docs/refgateway.md's fault table lists them ("acts in").
ACCEPT_ANY_CLIENT_CERT = "accept-any-client-cert"
ACCEPT_NO_CLIENT_CERT = "accept-no-client-cert"
ACCEPT_EXPIRED_CLIENT_CERT = "accept-expired-client-cert"
IGNORE_PER_PORT = "ignore-per-port"
REJECT_INSECURE_FALLBACK = "reject-insecure-fallback"
FALLBACK_WITHOUT_CERT_REQUEST = "fallback-without-cert-request"
KEEP_CLIENT_IDENTITY_HEADERS = "keep-client-identity-headers"
REPORT_FALLBACK_AS_VERIFIED = "report-fallback-as-verified"
NO_INSECURE_CONDITION = "no-insecure-condition"
STALE_INSECURE_CONDITION = "stale-insecure-condition"
FAIL_OPEN_INVALID_CA = "fail-open-invalid-ca"
IGNORE_CA_ROTATION = "ignore-ca-rotation"
IGNORE_PINNING = "ignore-pinning"
STALE_OBSERVED_GENERATION = "stale-observed-generation"
DISTRUST_CLIENT_CA = "distrust-client-ca"
VALIDATE_HTTP_LISTENERS = "validate-http-listeners"
REPORT_VALID_CA_UNRESOLVED = "report-valid-ca-unresolved"
HIDE_PARTIALLY_INVALID_CA_REFS = "hide-partially-invalid-ca-refs"
IGNORE_CHAIN_DEPTH = "ignore-chain-depth"
IGNORE_CERTIFICATE_ROTATION = "ignore-certificate-rotation"
IGNORE_MISDIRECTED_REQUESTS = "ignore-misdirected-requests"
MISDIRECTED_ON_ANY_HOST_MISMATCH = "misdirected-on-any-host-mismatch"
UNMATCHED_HOST_TO_FIRST_ROUTE = "unmatched-host-to-first-route"
ROUTE_HOST_WITH_PORT = "route-host-with-port"
NO_SNI_SKIPS_CLIENT_VALIDATION = "no-sni-skips-client-validation"
FIRST_LISTENER_CERTIFICATE_PER_PORT = "first-listener-certificate-per-port"
MISDIRECTED_ONLY_WITH_CLIENT_VALIDATION = "misdirected-only-with-client-validation"
BACKEND_SKIP_HOSTNAME_VERIFICATION = "backend-skip-hostname-verification"
BACKEND_IGNORE_SUBJECT_ALT_NAMES = "backend-ignore-subject-alt-names"
BACKEND_SKIP_CHAIN_VERIFICATION = "backend-skip-chain-verification"
BACKEND_TRUST_SYSTEM_ROOTS = "backend-trust-system-roots"
BACKEND_PLAINTEXT_FALLBACK = "backend-plaintext-fallback"
BACKEND_FAIL_OPEN = "backend-fail-open"
BACKEND_SNI_FROM_HOST = "backend-sni-from-host"
OMIT_BACKEND_CLIENT_CERT = "omit-backend-client-cert"
REPORT_CLIENT_CERTIFICATE_REF_RESOLVED = "report-client-certificate-ref-resolved"
IGNORE_BACKEND_TLS_POLICY_DELETION = "ignore-backend-tls-policy-deletion"
CERTIFICATE_REFS_DENY_CROSS_NAMESPACE = "certificate-refs-deny-cross-namespace"
CERTIFICATE_REFS_IGNORE_REFERENCE_GRANT = "certificate-refs-ignore-reference-grant"
IGNORE_SECTION_NAME = "ignore-section-name"
REVERSE_POLICY_CONFLICT_ORDER = "reverse-policy-conflict-order"
NO_CLUSTER_TRUST_BUNDLES = "no-cluster-trust-bundles"
CLUSTER_TRUST_BUNDLE_FAIL_OPEN = "cluster-trust-bundle-fail-open"
CLUSTER_TRUST_BUNDLE_SIGNER_WIDE = "cluster-trust-bundle-signer-wide"
IGNORE_CLUSTER_TRUST_BUNDLE_ROTATION = "ignore-cluster-trust-bundle-rotation"
INVALID_CA_THROWAWAY_CERTIFICATE = "invalid-ca-throwaway-certificate"
KEEP_LAST_BACKEND_CLIENT_CERT = "keep-last-backend-client-cert"
FAIL_TLS_BACKENDS = "fail-tls-backends"
ACCEPT_ANY_ON_TLS12 = "accept-any-on-tls12"
ACCEPT_ANY_ON_TLS13 = "accept-any-on-tls13"
TLS13_ONLY_ACCEPT_ANY = "tls13-only-accept-any"
INTERNAL_ERROR_FOR_BAD_CLIENT_CERT = "internal-error-for-bad-client-cert"
ACCEPT_NON_CA_INTERMEDIATE = "accept-non-ca-intermediate"
IGNORE_PATH_LENGTH = "ignore-path-length"
IGNORE_CA_KEY_USAGE = "ignore-ca-key-usage"
IGNORE_NAME_CONSTRAINTS = "ignore-name-constraints"
IGNORE_UNKNOWN_CRITICAL_EXTENSIONS = "ignore-unknown-critical-extensions"
ACCEPT_BAD_CERTIFICATE_SIGNATURE = "accept-bad-certificate-signature"
CHECK_LEAF_VALIDITY_ONLY = "check-leaf-validity-only"
CLIENT_SECURITY_LEVEL_1 = "client-security-level-1"
CLIENT_SECURITY_LEVEL_0 = "client-security-level-0"
REFUSE_AFTER_PROXYING = "refuse-after-proxying"
SESSIONS_ACROSS_LISTENERS = "sessions-across-listeners"
SESSIONS_SURVIVE_CA_CHANGE = "sessions-survive-ca-change"
RESUMPTION_CHECKS_LEAF_EXPIRY_ONLY = "resumption-checks-leaf-expiry-only"
INVALID_CA_TAKES_DOWN_GATEWAY = "invalid-ca-takes-down-gateway"
DROPS_FOREIGN_POLICY_STATUS = "drops-foreign-policy-status"

FAULTS: dict[str, str] = {
    ACCEPT_ANY_CLIENT_CERT: "AllowValidOnly accepts any presented client certificate (no certificate is still rejected)",
    ACCEPT_NO_CLIENT_CERT: "AllowValidOnly accepts connections that present no client certificate",
    ACCEPT_EXPIRED_CLIENT_CERT: "client certificate verification ignores the validity window",
    IGNORE_PER_PORT: "spec.tls.frontend.perPort is ignored; the default applies to every HTTPS port",
    REJECT_INSECURE_FALLBACK: "AllowInsecureFallback behaves like AllowValidOnly in the data plane",
    FALLBACK_WITHOUT_CERT_REQUEST: "AllowInsecureFallback does not request a client certificate at all",
    KEEP_CLIENT_IDENTITY_HEADERS: "client-sent x-refgateway-* headers are passed to the backend unchanged",
    REPORT_FALLBACK_AS_VERIFIED: "in AllowInsecureFallback the backend is told SUCCESS even when verification failed",
    NO_INSECURE_CONDITION: "the Gateway condition InsecureFrontendValidationMode is never set",
    STALE_INSECURE_CONDITION: "InsecureFrontendValidationMode is never removed once it was set",
    FAIL_OPEN_INVALID_CA: "when every CA reference is invalid the port is served without client verification and status reports it valid",
    IGNORE_CA_ROTATION: "each Gateway keeps using the first CA bundle loaded for it",
    IGNORE_PINNING: "the verify-subject-alt-names / verify-certificate-hash listener options are ignored",
    STALE_OBSERVED_GENERATION: "every observedGeneration is reported as 1",
    DISTRUST_CLIENT_CA: "the CA bundles of a frontend validation are not loaded: no client certificate verifies",
    VALIDATE_HTTP_LISTENERS: "frontend validation is also applied to HTTP listeners, which then refuse every request",
    REPORT_VALID_CA_UNRESOLVED: "listeners report ResolvedRefs=False/InvalidCACertificateRef although their CA refs are valid",
    HIDE_PARTIALLY_INVALID_CA_REFS: "when at least one CA ref of a validation is valid, the invalid ones are not reported (listener ResolvedRefs=True)",
    IGNORE_CHAIN_DEPTH: "client certificate chains are verified to any depth (no verify-depth limit)",
    IGNORE_CERTIFICATE_ROTATION: "each Gateway listener keeps serving the first server certificate loaded for it",
    IGNORE_MISDIRECTED_REQUESTS: "on HTTPS ports the Host header picks the listener; no 421 when it differs from the SNI listener",
    MISDIRECTED_ON_ANY_HOST_MISMATCH: "421 whenever the Host header differs from the SNI, even where both select the same listener",
    UNMATCHED_HOST_TO_FIRST_ROUTE: "a request whose Host matches no route of its listener goes to the listener's first route instead of 404",
    ROUTE_HOST_WITH_PORT: "the Host header is matched against route hostnames with its port (Host example.com:8080 finds no route)",
    NO_SNI_SKIPS_CLIENT_VALIDATION: "a TLS connection without SNI is served without requesting a client certificate",
    FIRST_LISTENER_CERTIFICATE_PER_PORT: "every HTTPS listener on a port serves the certificate of the port's first listener",
    MISDIRECTED_ONLY_WITH_CLIENT_VALIDATION: "421 only on HTTPS ports that verify client certificates; elsewhere the Host header picks the listener",
    BACKEND_SKIP_HOSTNAME_VERIFICATION: "the backend certificate's chain is verified but not its identity (neither the policy hostname nor its subjectAltNames)",
    BACKEND_IGNORE_SUBJECT_ALT_NAMES: "BackendTLSPolicy subjectAltNames are ignored; the backend certificate is verified against the hostname instead",
    BACKEND_SKIP_CHAIN_VERIFICATION: "the backend certificate's chain is not verified (any issuer, any validity window); its identity still is",
    BACKEND_TRUST_SYSTEM_ROOTS: "BackendTLSPolicy caCertificateRefs are not used: backends are verified against the system roots instead",
    BACKEND_PLAINTEXT_FALLBACK: "a BackendTLSPolicy that cannot be honoured is ignored: its backends get the request in plain HTTP instead of 5xx",
    BACKEND_FAIL_OPEN: "a BackendTLSPolicy without usable trust anchors is reported Accepted and its backends are reached over TLS without verification",
    BACKEND_SNI_FROM_HOST: "the SNI sent to a TLS backend is the client's Host instead of the policy hostname (verification still uses the hostname)",
    OMIT_BACKEND_CLIENT_CERT: "the Gateway's spec.tls.backend.clientCertificateRef is resolved and reported but never presented to backends",
    REPORT_CLIENT_CERTIFICATE_REF_RESOLVED: "an invalid spec.tls.backend.clientCertificateRef is not reported: the Gateway says ResolvedRefs=True",
    IGNORE_BACKEND_TLS_POLICY_DELETION: "a deleted BackendTLSPolicy stays in force (its backends still get TLS with its settings) until one replaces it",
    CERTIFICATE_REFS_DENY_CROSS_NAMESPACE: "a listener certificateRef to another namespace is refused even when a ReferenceGrant permits it",
    CERTIFICATE_REFS_IGNORE_REFERENCE_GRANT: "a listener certificateRef to another namespace is served without a ReferenceGrant (status still says RefNotPermitted)",
    IGNORE_SECTION_NAME: "BackendTLSPolicy targetRefs sectionName is ignored: a policy for one Service port applies to every port",
    REVERSE_POLICY_CONFLICT_ORDER: "when BackendTLSPolicies conflict, the newest wins (then the last by namespace/name)",
    NO_CLUSTER_TRUST_BUNDLES: "caCertificateRefs to ClusterTrustBundles are an unsupported kind, although the feature is advertised",
    CLUSTER_TRUST_BUNDLE_FAIL_OPEN: "a caCertificateRef to a ClusterTrustBundle that does not exist is reported resolved and verifies nothing (clients and backends get through unverified)",
    CLUSTER_TRUST_BUNDLE_SIGNER_WIDE: "a ClusterTrustBundle ref trusts every bundle with the same spec.signerName, not only the one it names",
    IGNORE_CLUSTER_TRUST_BUNDLE_ROTATION: "each ClusterTrustBundle keeps the first trustBundle seen for its name, also after it is changed or deleted",
    INVALID_CA_THROWAWAY_CERTIFICATE: "when every CA reference of a listener is invalid, status says so, but the port is served with a throwaway self-signed certificate and lets every client in",
    KEEP_LAST_BACKEND_CLIENT_CERT: "TLS to a backend is cached per backend and policy, not per client certificate: a Gateway whose clientCertificateRef is invalid presents the last valid one used for that backend",
    FAIL_TLS_BACKENDS: "the trust anchors of BackendTLSPolicies are never loaded: every TLS backend fails verification and the client gets 502",
    ACCEPT_ANY_ON_TLS12: "on TLS 1.2 connections, listeners with AllowValidOnly validation do not request a client certificate (everyone is let in); TLS 1.3 is correct",
    ACCEPT_ANY_ON_TLS13: "on TLS 1.3 connections, listeners with AllowValidOnly validation do not request a client certificate (everyone is let in); TLS 1.2 is correct",
    TLS13_ONLY_ACCEPT_ANY: "listeners with AllowValidOnly validation refuse TLS 1.2 with a protocol_version alert and let every TLS 1.3 client in",
    INTERNAL_ERROR_FOR_BAD_CLIENT_CERT: "a refused client certificate ends the handshake with an internal_error alert, not a certificate alert",
    ACCEPT_NON_CA_INTERMEDIATE: "client chains may pass through an intermediate that is not a CA (basicConstraints cA=FALSE or absent): the verify callback overrules OpenSSL's invalid-CA verdict",
    IGNORE_PATH_LENGTH: "the pathLenConstraint of client-chain CAs is not enforced (the verify callback overrules path-length-exceeded)",
    IGNORE_CA_KEY_USAGE: "a client-chain CA is a CA by basicConstraints alone: an intermediate whose keyUsage lacks keyCertSign may sign",
    IGNORE_NAME_CONSTRAINTS: "name constraints of client-chain CAs are not enforced (permitted and excluded subtrees)",
    IGNORE_UNKNOWN_CRITICAL_EXTENSIONS: "client certificates with an unrecognised critical extension verify (leaf and intermediates)",
    ACCEPT_BAD_CERTIFICATE_SIGNATURE: "a client-chain certificate whose signature does not verify with its issuer's key is accepted",
    CHECK_LEAF_VALIDITY_ONLY: "only the client leaf's validity window is checked: expired and not-yet-valid intermediates verify",
    CLIENT_SECURITY_LEVEL_1: "listeners run at OpenSSL's default security level 1: RSA-1024 client keys verify (SHA-1 signatures still do not)",
    CLIENT_SECURITY_LEVEL_0: "listeners run at OpenSSL security level 0 (the usual workaround for 'ca md too weak'): SHA-1-signed client certificates and RSA-1024 keys verify",
    REFUSE_AFTER_PROXYING: "AllowValidOnly is enforced only once the backend has answered: the handshake lets any client certificate (or none) in, the request is forwarded, and a client that failed verification then gets the connection closed instead of the answer",
    SESSIONS_ACROSS_LISTENERS: "one session cache and ticket key for every listener and port: a session resumes wherever it is offered, whatever validation made it (nginx CVE-2014-3616, CVE-2025-23419)",
    SESSIONS_SURVIVE_CA_CHANGE: "a listener's sessions keep the scope of its first validation: sessions made before a CA bundle change still resume after it (Go CVE-2025-68121, golang/go#77113)",
    RESUMPTION_CHECKS_LEAF_EXPIRY_ONLY: "a resumed session is refused when the client's leaf has expired, but not when another certificate of its verified chain has (Go CVE-2025-68121, golang/go#77217)",
    INVALID_CA_TAKES_DOWN_GATEWAY: "a CA ConfigMap or Secret without a PEM certificate under ca.crt (another key, or not PEM) is reported resolved, and the data plane then refuses the Gateway's whole TLS configuration: no HTTPS listener of that Gateway completes a handshake while status says Programmed (Envoy Gateway v1.9.1 with a ca.crt that is not PEM)",
    DROPS_FOREIGN_POLICY_STATUS: "a BackendTLSPolicy status write replaces the whole status.ancestors list: entries of other controllers are removed (Envoy Gateway v1.9.1, upstream BackendTLSPolicyPreserveForeignStatus)",
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
