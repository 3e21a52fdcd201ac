"""ClusterTrustBundles as caCertificateRefs, for frontend validation and BackendTLSPolicy.

Gateway API v1.7.0, GEP-5075 (experimental, feature ``ClusterTrustBundle``; no upstream
conformance test yet). The reference names a cluster-scoped bundle by name, with no
namespace and no ReferenceGrant, and nothing else selects it (no signerName selection):

    caCertificateRefs:
    - group: certificates.k8s.io
      kind: ClusterTrustBundle
      name: example.com:internal-signer:v1

and what an implementation that supports it MUST do:

    1. Read ``ClusterTrustBundle.spec.trustBundle`` from the object named in
       ``caCertificateRefs`` [...] and use its PEM-encoded certificates as trust anchors
       for the relevant backend or frontend TLS validation.
    2. Treat a nonexistent bundle [...] as an invalid CA certificate reference.
    3. Set ``ResolvedRefs=False`` with reason ``InvalidCACertificateRef`` [...]
    4. Additionally set ``Accepted=False`` with reason ``NoValidCACertificate`` when no
       valid trust source remains [...]
    5. Fail the data plane for an invalid trust configuration [...]: for
       ``BackendTLSPolicy`` the connection to the backend MUST fail and the client MUST
       receive an HTTP 5xx error response; for Gateway frontend TLS the client connection
       MUST be rejected during the TLS handshake.
    6. Reconcile updates to the referenced ``ClusterTrustBundle``, including changes to
       ``spec.trustBundle``, deletion of the referenced object, and replacement or
       recreation of an object with the same name. During the interval between deletion
       and recreation, the implementation MUST treat the reference as invalid and MUST
       NOT use any previously cached trust anchors.

The bundle a reference names and a second bundle share a ``signerName``, so that a
gateway that trusts what the signer publishes instead of the named bundle is caught.
Bundles are cluster-scoped: their names carry the test namespace, so that parallel runs
on one cluster do not share them.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.expect import backend_saw_tls
from mtls_conformance.target import ObjectRef

from mtls_conformance.fixtures.guide import BACKEND_HOSTNAME, HOSTNAME, wait_ready

pytestmark = pytest.mark.features("ClusterTrustBundle")

CLIENT_SIGNER = "mtls-conformance.dev/gateway-clients"
BACKEND_SIGNER = "mtls-conformance.dev/gateway-backends"

# Frontend: one Gateway, a listener per bundle; the rotation's, one of its own.
FRONTEND, ROTATION = "ctb-frontend", "ctb-rotation"
NAMED_PORT, MISSING_PORT, OTHER_PORT, ROTATING_PORT = 443, 7443, 7444, 7445

# Backends: one Gateway with an HTTP listener, a Service and a BackendTLSPolicy per bundle.
BACKEND = "ctb-backend"
HTTP_PORT = 8080


def listener(port: int) -> str:
    return "https" if port == NAMED_PORT else f"https-{port}"


class Bundles:
    """The names of this module's ClusterTrustBundles (cluster-scoped: unique per namespace)."""

    def __init__(self, ns: str):
        def signed(signer: str, what: str) -> str:
            # The API server wants a signer's bundles named "<signer, / as :>:<anything>".
            return f"{signer.replace('/', ':')}:{ns}-{what}"

        self.client = signed(CLIENT_SIGNER, "trusted")
        self.client_other = signed(CLIENT_SIGNER, "other")  # same signer, another CA
        self.client_rotating = f"{ns}-client-rotating"
        self.backend = signed(BACKEND_SIGNER, "trusted")
        self.backend_other = signed(BACKEND_SIGNER, "other")
        self.backend_rotating = f"{ns}-backend-rotating"
        self.missing = f"{ns}-does-not-exist"  # never created

    def all(self) -> list[str]:
        return [self.client, self.client_other, self.client_rotating,
                self.backend, self.backend_other, self.backend_rotating]


def bundle_ref(name: str) -> ObjectRef:
    return ObjectRef("ClusterTrustBundle", name, api_version="certificates.k8s.io/v1")


@pytest.fixture(scope="module")
def bundles(mtls_namespace, mtls_target):
    names = Bundles(mtls_namespace)
    yield names
    mtls_target.delete(*[bundle_ref(n) for n in names.all()])


@pytest.fixture(scope="module")
def other_client_ca(mtls_pki):
    """A client CA in a bundle of the same signer as the trusted one, named by no listener
    that should trust it."""
    return mtls_pki.authority("ctb-other-client-ca")


@pytest.fixture(scope="module")
def other_client(other_client_ca):
    return other_client_ca.issue_client("ctb-other-client", common_name=f"client.{HOSTNAME}",
                                        dns_names=[HOSTNAME])


@pytest.fixture(scope="module")
def rotation(mtls_pki):
    old, new = mtls_pki.authority("ctb-rotation-old-ca"), mtls_pki.authority("ctb-rotation-new-ca")
    return (old, old.issue_client("ctb-old-ca-client", dns_names=[HOSTNAME]),
            new, new.issue_client("ctb-new-ca-client", dns_names=[HOSTNAME]))


# -- frontend validation ------------------------------------------------------------------
@pytest.fixture(scope="module")
def frontend(mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway, guide_tls_objects, bundles,
             client_ca, other_client_ca):
    ns = mtls_namespace
    backend = mtls_backend(ns, "httpbin", port=8000)
    per_port = {MISSING_PORT: m.validation(m.cluster_trust_bundle_ref(bundles.missing)),
                OTHER_PORT: m.validation(m.cluster_trust_bundle_ref(bundles.client_other))}
    gateway = m.gateway(
        FRONTEND, ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(default=m.validation(m.cluster_trust_bundle_ref(bundles.client)),
                                per_port=per_port),
        listeners=[m.https_listener(listener(p), p, certificate="https-cert")
                   for p in (NAMED_PORT, MISSING_PORT, OTHER_PORT)])
    route = m.http_route("ctb-frontend-route", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(FRONTEND)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    objects = [m.cluster_trust_bundle(bundles.client, client_ca.cert_pem, signer_name=CLIENT_SIGNER),
               m.cluster_trust_bundle(bundles.client_other, other_client_ca.cert_pem, signer_name=CLIENT_SIGNER),
               *guide_tls_objects]
    # Not waited for: the missing bundle's listener must not become ready, and each test
    # waits for the conditions of the listeners it checks. A wait here held the module's
    # other configuration back by a whole condition timeout against a gateway that never
    # programs the listener (no-cluster-trust-bundles: benchmarks/results-2026-12-06-turns.md).
    return deploy_gateway(gateway, *objects, routes=[route], ready=False)


def wait_listener(gw, port, type_, status="True", reason=None):
    return gw.target.wait_for_condition(gw.gateway, type_, status, reason=reason, listener=listener(port),
                                        timeout=gw.settings.timing.condition_timeout)


@pytest.mark.features("GatewayFrontendClientCertificateValidation")
def test_frontend_bundle_selected_by_name(frontend, valid_client, untrusted_client):
    for type_ in ("ResolvedRefs", "Accepted", "Programmed"):
        wait_listener(frontend, NAMED_PORT, type_)
    frontend.expect_pair(NAMED_PORT, sni=HOSTNAME, accepted=valid_client, refused=untrusted_client,
                         accepted_what="a client of the CA in the ClusterTrustBundle the listener names",
                         what="a client of a CA in no ClusterTrustBundle")


@pytest.mark.features("GatewayFrontendClientCertificateValidation")
def test_frontend_missing_bundle_is_reported(frontend):
    condition = wait_listener(frontend, MISSING_PORT, "ResolvedRefs", "False", "InvalidCACertificateRef")
    assert condition.get("message"), (f"listener {listener(MISSING_PORT)}: ResolvedRefs=False for a "
                                      "ClusterTrustBundle that does not exist, without a message")
    wait_listener(frontend, MISSING_PORT, "Accepted", "False", "NoValidCACertificate")
    wait_listener(frontend, MISSING_PORT, "Programmed", "False")
    wait_listener(frontend, NAMED_PORT, "ResolvedRefs")


@pytest.mark.features("GatewayFrontendClientCertificateValidation")
def test_frontend_missing_bundle_fails_closed(frontend, valid_client):
    frontend.expect_fail_closed(MISSING_PORT, sni=HOSTNAME, clients=[None, valid_client],
                                what="the only caCertificateRef names a ClusterTrustBundle that does not "
                                     "exist: the port must fail closed",
                                serving_port=NAMED_PORT, serving_client=valid_client)


@pytest.mark.features("GatewayFrontendClientCertificateValidation")
def test_frontend_bundle_that_does_not_sign_the_client_is_not_used(frontend, valid_client, other_client):
    """The listener names the other bundle of the same signer: the client CA's bundle is
    not trusted there, although the signer published it."""
    wait_listener(frontend, OTHER_PORT, "ResolvedRefs")
    frontend.expect_pair(OTHER_PORT, sni=HOSTNAME, accepted=other_client, refused=valid_client,
                         accepted_what="a client of the CA in the bundle the listener names",
                         what=f"a client of a CA in another bundle of signer {CLIENT_SIGNER}")


def _rotated_then_deleted(frontend, mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway,
                          guide_tls_objects, mtls_target, bundles, rotation):
    """A Gateway of its own: a listener naming the rotating bundle, and one naming the
    client CA's bundle, which must serve throughout. Checked, the bundle's trustBundle
    replaced and checked, then the bundle deleted (ahead with the module: configure_ahead);
    the test checks the deletion and creates the bundle again."""
    old_ca, old_client, new_ca, new_client = rotation
    ns = mtls_namespace
    backend = mtls_backend(ns, "ctb-rotation-httpbin", port=8000)
    gateway = m.gateway(
        ROTATION, ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(default=m.validation(m.cluster_trust_bundle_ref(bundles.client)),
                                per_port={ROTATING_PORT: m.validation(m.cluster_trust_bundle_ref(bundles.client_rotating))}),
        listeners=[m.https_listener(listener(p), p, certificate="https-cert") for p in (NAMED_PORT, ROTATING_PORT)])
    route = m.http_route("ctb-rotation-route", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(ROTATION)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    gw = deploy_gateway(gateway, m.cluster_trust_bundle(bundles.client_rotating, old_ca.cert_pem), *guide_tls_objects,
                        routes=[route], ready=False)
    yield  # configured; the checks and the changes run once every module is configured
    wait_ready(gw, [route])
    wait_listener(gw, ROTATING_PORT, "ResolvedRefs")  # what the test's last step waits for again
    gw.expect_pair(ROTATING_PORT, sni=HOSTNAME, accepted=old_client, refused=new_client,
                   what="before rotation, a client of the new CA")

    mtls_target.apply(m.cluster_trust_bundle(bundles.client_rotating, new_ca.cert_pem))
    gw.expect_pair(ROTATING_PORT, sni=HOSTNAME, accepted=new_client, refused=old_client,
                   accepted_what="after spec.trustBundle was replaced, a client of the new CA",
                   what="after spec.trustBundle was replaced, a client of the old CA")

    mtls_target.delete(bundle_ref(bundles.client_rotating))
    return gw


@pytest.mark.features("GatewayFrontendClientCertificateValidation")
@pytest.mark.configure_ahead(setup=_rotated_then_deleted)
def test_frontend_rotation_through_the_bundle(mtls_target, bundles, rotation, valid_client, mtls_configured):
    gw = mtls_configured
    old_ca, old_client, new_ca, new_client = rotation
    wait_listener(gw, ROTATING_PORT, "ResolvedRefs", "False", "InvalidCACertificateRef")
    wait_listener(gw, ROTATING_PORT, "Accepted", "False", "NoValidCACertificate")
    gw.expect_fail_closed(ROTATING_PORT, sni=HOSTNAME, clients=[new_client],
                          what="after the ClusterTrustBundle was deleted, no cached anchor may be used",
                          serving_port=NAMED_PORT, serving_client=valid_client)

    mtls_target.apply(m.cluster_trust_bundle(bundles.client_rotating, new_ca.cert_pem))
    for type_ in ("ResolvedRefs", "Accepted", "Programmed"):
        wait_listener(gw, ROTATING_PORT, type_)
    gw.expect_pair(ROTATING_PORT, sni=HOSTNAME, accepted=new_client, refused=old_client,
                   accepted_what="after the ClusterTrustBundle was created again",
                   what="after the ClusterTrustBundle was created again, a client of the old CA")


# -- BackendTLSPolicy ---------------------------------------------------------------------
class Backends:
    """A TLS backend per case, each with the same certificate, and its policy."""

    def __init__(self, backends, policies):
        self.backends, self.policies = backends, policies

    def policy(self, case):
        return ObjectRef.of(self.policies[case])


@pytest.fixture(scope="module")
def backend_gw(mtls_namespace, mtls_gateway_class, deploy_gateway):
    gateway = m.gateway(BACKEND, mtls_namespace, gateway_class=mtls_gateway_class,
                        listeners=[m.http_listener("http", HTTP_PORT)])
    return deploy_gateway(gateway)


@pytest.fixture(scope="module")
def other_backend_ca(mtls_pki):
    return mtls_pki.authority("ctb-other-backend-ca")


@pytest.fixture(scope="module")
def backends(backend_gw, mtls_namespace, mtls_target, bundles, backend_ca, backend_credential, other_backend_ca,
             deploy_tls_backend):
    ns = mtls_namespace
    cases = {"ok": bundles.backend, "missing": bundles.missing, "other": bundles.backend_other,
             "rotating": bundles.backend_rotating}
    running, policies = {}, {}
    for case, bundle in cases.items():
        running[case] = deploy_tls_backend("echo", ns, f"ctb-{case}", credential=backend_credential)
        policies[case] = m.backend_tls_policy(f"ctb-{case}", ns, targets=[m.policy_target(f"ctb-{case}")],
                                              hostname=BACKEND_HOSTNAME,
                                              ca_refs=[m.cluster_trust_bundle_ref(bundle)])
    route = m.http_route("ctb-backends", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(BACKEND)],
                         rules=[m.rule(m.backend_ref(b.service, b.port), path=f"/{case}", path_type="Exact")
                                for case, b in running.items()])
    mtls_target.apply(m.cluster_trust_bundle(bundles.backend, backend_ca.cert_pem, signer_name=BACKEND_SIGNER),
                      m.cluster_trust_bundle(bundles.backend_other, other_backend_ca.cert_pem,
                                             signer_name=BACKEND_SIGNER),
                      m.cluster_trust_bundle(bundles.backend_rotating, other_backend_ca.cert_pem),
                      *policies.values(), route)
    mtls_target.wait_for_route_condition(ObjectRef.of(route), backend_gw.gateway, "Accepted",
                                         timeout=backend_gw.settings.timing.condition_timeout)
    return Backends(running, policies)


def wait_policy(gw, backends, case, type_, status="True", reason=None):
    return gw.target.wait_for_policy_condition(backends.policy(case), gw.gateway, type_, status,
                                               reason=reason or (type_ if status == "True" else None),
                                               timeout=gw.settings.timing.condition_timeout)


def expect_sibling_ok(gw):
    """The correctly configured backend of the same Gateway answers over TLS: the Gateway
    can reach TLS backends, so a 5xx elsewhere is about that backend's policy."""
    return gw.expect_ok(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/ok", service="ctb-ok",
                        check=backend_saw_tls(sni=BACKEND_HOSTNAME),
                        what="the backend whose policy names the ClusterTrustBundle of its CA")


@pytest.mark.features("BackendTLSPolicy")
def test_backend_bundle_selected_by_name(backend_gw, backends):
    wait_policy(backend_gw, backends, "ok", "Accepted")
    wait_policy(backend_gw, backends, "ok", "ResolvedRefs")
    expect_sibling_ok(backend_gw)


@pytest.mark.features("BackendTLSPolicy")
def test_backend_missing_bundle_is_reported(backend_gw, backends):
    condition = wait_policy(backend_gw, backends, "missing", "ResolvedRefs", "False", "InvalidCACertificateRef")
    assert condition.get("message"), ("BackendTLSPolicy ctb-missing: ResolvedRefs=False for a ClusterTrustBundle "
                                      "that does not exist, without a message")
    wait_policy(backend_gw, backends, "missing", "Accepted", "False", "NoValidCACertificate")


@pytest.mark.features("BackendTLSPolicy")
def test_backend_missing_bundle_gets_5xx(backend_gw, backends):
    expect_sibling_ok(backend_gw)
    backend_gw.expect_backend_refused(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/missing",
                                      backend=backends.backends["missing"],
                                      what="the policy's only caCertificateRef names a ClusterTrustBundle "
                                           "that does not exist")


@pytest.mark.features("BackendTLSPolicy")
def test_backend_bundle_that_does_not_sign_the_backend_is_not_used(backend_gw, backends):
    wait_policy(backend_gw, backends, "other", "Accepted")
    expect_sibling_ok(backend_gw)
    backend_gw.expect_backend_refused(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/other",
                                      backend=backends.backends["other"],
                                      what=f"the policy names a bundle of signer {BACKEND_SIGNER} whose CA did "
                                           "not sign the backend's certificate; another bundle of the signer did")


def _backend_rotated_then_deleted(backend_gw, backends, bundles, mtls_target, backend_ca):
    """The rotating case's bundle (its policy's alone) checked, replaced with the backend's
    CA and checked, then deleted (ahead with the module: configure_ahead); the test checks
    the deletion."""
    yield  # configured by the backends fixture; the checks and changes run once every module is configured
    expect_sibling_ok(backend_gw)
    backend_gw.expect_backend_refused(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/rotating",
                                      backend=backends.backends["rotating"],
                                      what="before rotation the bundle holds another CA than the backend's")

    mtls_target.apply(m.cluster_trust_bundle(bundles.backend_rotating, backend_ca.cert_pem))
    backend_gw.expect_ok(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/rotating",
                         service="ctb-rotating", check=backend_saw_tls(sni=BACKEND_HOSTNAME),
                         what="after spec.trustBundle was replaced with the backend's CA")

    mtls_target.delete(bundle_ref(bundles.backend_rotating))


@pytest.mark.features("BackendTLSPolicy")
@pytest.mark.configure_ahead(setup=_backend_rotated_then_deleted)
def test_backend_rotation_through_the_bundle(backend_gw, backends, mtls_configured):
    wait_policy(backend_gw, backends, "rotating", "ResolvedRefs", "False", "InvalidCACertificateRef")
    wait_policy(backend_gw, backends, "rotating", "Accepted", "False", "NoValidCACertificate")
    expect_sibling_ok(backend_gw)
    backend_gw.expect_backend_refused(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/rotating",
                                      backend=backends.backends["rotating"],
                                      what="after the ClusterTrustBundle was deleted, no cached anchor may be used")
