"""Listener certificates: one per hostname on a port, wildcard versus specific, across namespaces.

Guide: Gateway API TLS documentation, "Listeners and TLS" and "Cross namespace certificate
references" (shared/guides/gateway-api-tls-configuration.txt):

    [...] the Gateway is configured to reference a certificate in a different namespace.
    This is allowed by the ReferenceGrant created in the target namespace. Without that
    ReferenceGrant, the cross-namespace reference would be invalid.

and the Listener.hostname rule that the most specific listener wins (exact before
wildcard). Frontend mTLS depends on the handshake choosing the right listener: every
check here looks at the certificate the gateway served (the probe's copy of it), not only
at the status code, and at the backend that answered.

Upstream: HTTPRouteHTTPSListener (one certificate), GatewaySecretReferenceGrantSpecific /
GatewaySecretMissingReferenceGrant (status only); the traffic halves are ours.
"""

from __future__ import annotations

import pytest
from cryptography import x509

from mtls_conformance import manifests as m
from mtls_conformance.expect import eventually, reached_backend
from mtls_conformance.probe import Response

from mtls_conformance.fixtures.guide import HOSTNAME

pytestmark = pytest.mark.features("Gateway", "HTTPRoute")

GATEWAY = "listener-certificates"
PORT = 443
A, B = f"a.{HOSTNAME}", f"b.{HOSTNAME}"
WILD, SPECIFIC, OTHER = f"*.{HOSTNAME}", f"specific.{HOSTNAME}", f"other.{HOSTNAME}"


def served_certificate(expected) -> callable:
    """A check for expect_ok: the handshake served ``expected`` (a mtls_conformance.fixtures.pki Credential)."""
    want = x509.load_pem_x509_certificate(expected.cert_pem)

    def check(response: Response) -> str | None:
        pem = response.tls.server_certificate_pem if response.tls else None
        if pem is None:
            return "the probe could not see the certificate the gateway served"
        got = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
        if got != want:
            names = got.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName)
            return f"the gateway served the certificate for {names}, expected {expected.name!r}"
        return None

    return check


@pytest.fixture(scope="module")
def certs(server_authority):
    return {name: server_authority.issue_server(host, name=f"listener-cert-{name}")
            for name, host in (("a", A), ("b", B), ("wild", WILD), ("specific", SPECIFIC))}


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway, certs, guide_tls_objects):
    ns = mtls_namespace
    hosts = {"a": A, "b": B, "wild": WILD, "specific": SPECIFIC}
    # First, a listener without a hostname whose certificate (the guides' https-cert) also
    # covers every name here: a gateway that serves one certificate per port passes the
    # probe's hostname check with it, and only the certificate comparison catches that.
    listeners = [m.https_listener("catch-all", PORT, certificate="https-cert")]
    routes, objects = [], list(guide_tls_objects)
    for name, host in hosts.items():
        cert = certs[name]
        objects.append(m.tls_secret(f"cert-{name}", ns, cert_pem=cert.chain_pem, key_pem=cert.key_pem))
        listeners.append(m.https_listener(name, PORT, hostname=host, certificate=f"cert-{name}"))
        backend = mtls_backend(ns, f"svc-{name}", port=8080)
        routes.append(m.http_route(f"route-{name}", ns, parents=[m.parent_ref(GATEWAY, section_name=name)],
                                   rules=[m.rule(m.backend_ref(backend.service, backend.port))]))
    gateway = m.gateway(GATEWAY, ns, gateway_class=mtls_gateway_class, listeners=listeners)
    return deploy_gateway(gateway, *objects, routes=routes)


@pytest.mark.parametrize("listener,sni", [("a", A), ("b", B)])
def test_each_hostname_gets_its_own_certificate(gw, certs, listener, sni):
    gw.expect_ok(PORT, sni=sni, service=f"svc-{listener}", check=served_certificate(certs[listener]),
                 what=f"listeners {A} and {B} share port {PORT} with a certificate each")


@pytest.mark.parametrize("listener,sni", [("specific", SPECIFIC), ("wild", OTHER)],
                         ids=["specific-name", "other-name"])
def test_specific_listener_wins_over_the_wildcard(gw, certs, listener, sni):
    gw.expect_ok(PORT, sni=sni, service=f"svc-{listener}", check=served_certificate(certs[listener]),
                 what=f"listener {SPECIFIC} beside listener {WILD} on one port: the most specific one serves {sni}")


# -- cross-namespace certificateRefs ------------------------------------------------------
@pytest.fixture(scope="module")
def cert_namespace(mtls_namespace, mtls_target):
    """The namespace that holds the listener certificates referred to across namespaces."""
    name = f"{mtls_namespace}-certs"
    mtls_target.create_namespace(name)
    try:
        yield name
    finally:
        mtls_target.delete_namespace(name)


@pytest.fixture
def cross_namespace_gateway(deploy_gateway, mtls_target):
    """Deploys a Gateway whose listener "https" (443) refers to ``secret`` in
    ``cert_namespace``; listener "local" (8443) to a Secret of its own namespace, and must
    serve either way.

    The Gateway and its route are deleted when the test ends. Both tests here route
    ``HOSTNAME`` on port 443 to the same backend, and an implementation may merge Gateways
    onto one address (gateway_types.go, Gateway.spec.listeners: "Implementations MAY merge
    separate Gateways onto a single set of Addresses"; Traefik gives every Gateway the same
    one): the granted test's Gateway, left in place, answered 200 for the ungranted one.
    """
    deployed = []

    def deploy(*, name, ns, gateway_class, cert_namespace, secret, backend, objects, ready):
        gateway = m.gateway(name, ns, gateway_class=gateway_class, listeners=[
            m.https_listener("https", PORT, certificate=secret, certificate_namespace=cert_namespace),
            m.https_listener("local", 8443, certificate="https-cert")])
        route = m.http_route(f"{name}-route", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(name)],
                             rules=[m.rule(m.backend_ref(backend.service, backend.port))])
        deployed.extend([route, gateway])
        return deploy_gateway(gateway, *objects, routes=[route], ready=ready)

    yield deploy
    mtls_target.delete(*deployed)


@pytest.fixture(scope="module")
def cross_backend(mtls_namespace, mtls_backend):
    return mtls_backend(mtls_namespace, "cross-ns-cert-backend", port=8080)


@pytest.mark.features("ReferenceGrant")
def test_cross_namespace_certificate_with_a_reference_grant_is_served(
        mtls_namespace, cert_namespace, mtls_gateway_class, cross_namespace_gateway, server_authority,
        server_credential, cross_backend):
    ns = mtls_namespace
    cert = server_authority.issue_server(HOSTNAME, name="cross-ns-granted")
    objects = [m.tls_secret("https-cert", ns, cert_pem=server_credential.chain_pem, key_pem=server_credential.key_pem),
               m.tls_secret("granted-cert", cert_namespace, cert_pem=cert.chain_pem, key_pem=cert.key_pem),
               m.reference_grant("gateways-may-use-granted-cert", cert_namespace, from_kind="Gateway",
                                 from_namespace=ns, to_kind="Secret", to_name="granted-cert")]
    gw = cross_namespace_gateway(name="cross-ns-cert-granted", ns=ns, gateway_class=mtls_gateway_class,
                                 cert_namespace=cert_namespace, secret="granted-cert", backend=cross_backend,
                                 objects=objects, ready=True)
    for type_ in ("ResolvedRefs", "Programmed"):
        gw.target.wait_for_condition(gw.gateway, type_, listener="https", timeout=gw.settings.timing.condition_timeout)
    gw.expect_ok(PORT, sni=HOSTNAME, service=cross_backend.service, check=served_certificate(cert),
                 what=f"listener certificate Secret {cert_namespace}/granted-cert, granted by a ReferenceGrant")


@pytest.mark.features("ReferenceGrant")
def test_cross_namespace_certificate_without_a_reference_grant_is_not_served(
        mtls_namespace, cert_namespace, mtls_gateway_class, cross_namespace_gateway, server_authority,
        server_credential, cross_backend):
    ns = mtls_namespace
    cert = server_authority.issue_server(HOSTNAME, name="cross-ns-not-granted")
    objects = [m.tls_secret("https-cert", ns, cert_pem=server_credential.chain_pem, key_pem=server_credential.key_pem),
               m.tls_secret("ungranted-cert", cert_namespace, cert_pem=cert.chain_pem, key_pem=cert.key_pem)]
    gw = cross_namespace_gateway(name="cross-ns-cert-ungranted", ns=ns,
                                 gateway_class=mtls_gateway_class, cert_namespace=cert_namespace,
                                 secret="ungranted-cert", backend=cross_backend, objects=objects, ready=False)
    timeout = gw.settings.timing.condition_timeout
    gw.target.wait_for_condition(gw.gateway, "ResolvedRefs", "False", reason="RefNotPermitted", listener="https",
                                 timeout=timeout)
    # The listener of the same Gateway with a certificate of its own namespace still serves.
    gw.expect_ok(8443, sni=HOSTNAME, service=cross_backend.service,
                 what="setup: the Gateway's other listener, whose certificate is in its own namespace")
    not_served = served_certificate(cert)

    def judge(outcome) -> str | None:
        if isinstance(outcome, Response) and outcome.tls is not None and not_served(outcome) is None:
            return (f"got {outcome.describe()}: the gateway served the certificate of Secret "
                    f"{cert_namespace}/ungranted-cert, which no ReferenceGrant permits")
        if reached_backend(outcome):
            return f"got {outcome.describe()} from the backend through listener 'https'"
        return None

    try:
        eventually(lambda: gw.request(PORT, sni=HOSTNAME), judge, timing=gw.settings.timing,
                   what="the listener without a permitted certificate", changed_at=gw.changed_at)
    except AssertionError as exc:
        raise AssertionError(f"listener port {PORT} (SNI {HOSTNAME}), certificateRef Secret "
                             f"{cert_namespace}/ungranted-cert without a ReferenceGrant (listener ResolvedRefs="
                             f"False/RefNotPermitted): it must not be served; {exc}") from None
