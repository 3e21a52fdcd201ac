"""Frontend mTLS: invalid CA references are reported, and a port without a usable CA fails closed.

Guide: Gateway API ``Listener`` status documentation (v1.5, standard), as the upstream
conformance tests GatewayInvalidFrontendClientCertificateValidation and
GatewayFrontendInvalidDefaultClientCertificateValidation read it:

    If a CA certificate reference is invalid [...] the Listener's ResolvedRefs
    condition MUST be set to False with a reason of InvalidCACertificateRef (the
    referenced object does not exist or has no ca.crt), InvalidCACertificateKind (the
    kind is not supported) or RefNotPermitted (another namespace, no ReferenceGrant).
    If all CA certificate references are invalid, the Listener MUST also be
    Accepted=False with reason NoValidCACertificate.

GEP-91: an implementation must never fall back to accepting clients without
verification; the upstream test sends a request to such a listener and requires it to
fail. With one valid and one invalid reference traffic is unspecified upstream; this
suite expects the valid CA to keep working while the condition still names the bad one.
Fixing the reference must clear the conditions and bring traffic back.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m

from mtls_conformance.fixtures.guide import HOSTNAME

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation")

GATEWAY = "mtls-invalid-ca"
VALID_PORT, MIXED_PORT = 443, 7450

# port -> (what is wrong, the caCertificateRef, expected listener ResolvedRefs reason)
INVALID = {
    7443: ("ConfigMap missing", m.object_ref("no-such-ca"), "InvalidCACertificateRef"),
    7444: ("key ca.crt missing", m.object_ref("ca-wrong-key"), "InvalidCACertificateRef"),
    7445: ("content not a certificate", m.object_ref("ca-not-pem"), "InvalidCACertificateRef"),
    7446: ("wrong kind", m.object_ref("ca-cert", kind="Service"), "InvalidCACertificateKind"),
    7447: ("cross-namespace ref without ReferenceGrant", None, "RefNotPermitted"),
}
CASES = [pytest.param(port, id=what.replace(" ", "-")) for port, (what, _, _) in INVALID.items()]


def listener_name(port: int) -> str:
    return f"https-{port}"


@pytest.fixture(scope="module")
def elsewhere(mtls_namespace, mtls_target, client_ca):
    """Another namespace with a valid CA ConfigMap, and no ReferenceGrant for it."""
    name = f"{mtls_namespace}-elsewhere"
    mtls_target.create_namespace(name)
    try:
        mtls_target.apply(m.ca_configmap("ca-cert", name, client_ca.cert_pem))
        yield name
    finally:
        mtls_target.delete_namespace(name)


@pytest.fixture(scope="module")
def gw(mtls_namespace, elsewhere, mtls_gateway_class, mtls_backend, deploy_gateway,
       guide_tls_objects, client_ca):
    ns = mtls_namespace
    backend = mtls_backend(ns, "httpbin", port=8000)
    per_port = {}
    for port, (_, ref, _) in INVALID.items():
        # The ConfigMap exists there: only the missing grant makes the ref invalid.
        ref = ref or m.object_ref("ca-cert", namespace=elsewhere)
        per_port[port] = m.validation(ref, mode="AllowValidOnly")
    per_port[MIXED_PORT] = m.validation(m.object_ref("no-such-ca"), m.object_ref("ca-cert"))
    ports = [VALID_PORT, *INVALID, MIXED_PORT]
    gateway = m.gateway(
        GATEWAY, ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(default=m.validation(m.object_ref("ca-cert")), per_port=per_port),
        listeners=[m.https_listener(listener_name(p), p, certificate="https-cert") for p in ports])
    route = m.http_route("httpbin-https", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(GATEWAY)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    objects = [*guide_tls_objects,
               m.ca_configmap("ca-wrong-key", ns, client_ca.cert_pem, key="tls.crt"),
               m.ca_configmap("ca-not-pem", ns, "this is not a PEM certificate\n")]
    # Some listeners must not become ready: wait for the route, not for the Gateway.
    client = deploy_gateway(gateway, *objects, routes=[route], ready=False)
    client.target.wait_for_condition(client.gateway, "Programmed", listener=listener_name(VALID_PORT),
                                     timeout=client.settings.timing.condition_timeout)
    return client


def expect_fails_closed(gw, port, valid_client, what):
    """The traffic a listener without a usable CA promises: nobody gets in on its port, while
    the listener of the same Gateway with a valid CA still serves."""
    gw.expect_fail_closed(port, sni=HOSTNAME, clients=[None, valid_client], what=what, serving_port=VALID_PORT,
                          serving_client=valid_client)


def wait_listener(gw, port, type_, status, reason=None):
    return gw.target.wait_for_condition(gw.gateway, type_, status, reason=reason,
                                        listener=listener_name(port),
                                        timeout=gw.settings.timing.condition_timeout)


def test_valid_reference_resolves(gw, valid_client):
    wait_listener(gw, VALID_PORT, "ResolvedRefs", "True")
    wait_listener(gw, VALID_PORT, "Accepted", "True")
    gw.expect_ok(VALID_PORT, sni=HOSTNAME, cert=valid_client)


@pytest.mark.parametrize("port", CASES)
def test_invalid_reference_is_reported(gw, port, valid_client):
    what, _, reason = INVALID[port]
    wait_listener(gw, VALID_PORT, "ResolvedRefs", "True")
    condition = wait_listener(gw, port, "ResolvedRefs", "False", reason)
    assert condition.get("message"), f"listener {listener_name(port)} ({what}): ResolvedRefs=False without a message"
    expect_fails_closed(gw, port, valid_client, f"ResolvedRefs=False/{reason} ({what}): the port must fail closed")


@pytest.mark.parametrize("port", CASES)
def test_listener_without_a_valid_ca_is_not_accepted(gw, port, valid_client):
    wait_listener(gw, port, "Accepted", "False", "NoValidCACertificate")
    wait_listener(gw, port, "Programmed", "False")
    expect_fails_closed(gw, port, valid_client, f"Accepted=False/NoValidCACertificate, Programmed=False "
                                                f"({INVALID[port][0]}): the port must fail closed")


@pytest.mark.parametrize("port", CASES)
def test_listener_without_a_valid_ca_fails_closed(gw, port, valid_client):
    """Probed without verifying the port's certificate: a port that fails open behind a
    throwaway certificate lets the client in (HTTP 200) and fails, rather than passing as
    the probe's own verification error."""
    what = INVALID[port][0]
    gw.expect_fail_closed(port, sni=HOSTNAME, clients=[None, valid_client], serving_port=VALID_PORT,
                          serving_client=valid_client,
                          what=f"every caCertificateRef invalid ({what}): the port fails closed")


def test_valid_ca_still_works_next_to_an_invalid_one(gw, valid_client, untrusted_client):
    gw.expect_pair(MIXED_PORT, sni=HOSTNAME, accepted=valid_client, refused=(untrusted_client, None),
                   accepted_what="one valid and one missing caCertificateRef: a client of the valid CA must be let in",
                   what="one valid and one missing caCertificateRef: untrusted and certificate-less clients are refused")


def test_invalid_reference_is_reported_next_to_a_valid_one(gw, valid_client, untrusted_client):
    wait_listener(gw, VALID_PORT, "ResolvedRefs", "True")
    wait_listener(gw, MIXED_PORT, "ResolvedRefs", "False", "InvalidCACertificateRef")
    # ResolvedRefs=False for one ref, still Accepted: the valid ref is used and enforced.
    wait_listener(gw, MIXED_PORT, "Accepted", "True")
    gw.expect_pair(MIXED_PORT, sni=HOSTNAME, accepted=valid_client, refused=(None, untrusted_client),
                what="ResolvedRefs=False/InvalidCACertificateRef next to a valid ref, listener Accepted: the valid "
                     "ref is enforced")


def _late_ca(mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway, guide_tls_objects, client_ca,
             valid_client):
    """A Gateway of its own whose default CA ConfigMap appears later; its second listener
    has a perPort validation with a CA that exists, and must serve throughout. Checked
    before the ConfigMap exists, then the ConfigMap created (ahead with the module: configure_ahead)."""
    ns, name = mtls_namespace, "mtls-late-ca"
    backend = mtls_backend(ns, "httpbin-late", port=8000)
    gateway = m.gateway(name, ns, gateway_class=mtls_gateway_class,
                        frontend=m.frontend_tls(default=m.validation(m.object_ref("late-ca")),
                                                per_port={8444: m.validation(m.object_ref("ca-cert"))}),
                        listeners=[m.https_listener("https", 8443, certificate="https-cert"),
                                   m.https_listener("https-serving", 8444, certificate="https-cert")])
    route = m.http_route("late", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(name)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    gw = deploy_gateway(gateway, *guide_tls_objects, routes=[route], ready=False)
    yield  # configured; the checks and the change run once every module is configured
    timeout = gw.settings.timing.condition_timeout
    target = gw.target
    target.wait_for_condition(gw.gateway, "ResolvedRefs", "False", reason="InvalidCACertificateRef",
                              listener="https", timeout=timeout)
    target.wait_for_condition(gw.gateway, "Accepted", "False", reason="NoValidCACertificate",
                              listener="https", timeout=timeout)
    gw.expect_fail_closed(8443, sni=HOSTNAME, clients=[None, valid_client], serving_port=8444,
                          serving_client=valid_client, what="before the CA ConfigMap exists, the port fails closed")

    target.apply(m.ca_configmap("late-ca", ns, client_ca.cert_pem))
    return gw


@pytest.mark.configure_ahead(setup=_late_ca)
def test_fixing_the_reference_clears_the_conditions_and_restores_traffic(valid_client, mtls_configured):
    gw = mtls_configured
    timeout = gw.settings.timing.condition_timeout
    for type_ in ("ResolvedRefs", "Accepted", "Programmed"):
        gw.target.wait_for_condition(gw.gateway, type_, "True", listener="https", timeout=timeout)
    gw.expect_pair(8443, sni=HOSTNAME, accepted=valid_client, refused=None,
                   accepted_what="after the CA ConfigMap was created, a client of that CA must be let in",
                   what="after the CA ConfigMap was created, a client without a certificate is refused")
