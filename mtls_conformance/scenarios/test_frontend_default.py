"""Frontend mTLS: one default validation for every HTTPS listener of a Gateway.

Guide: kgateway "mTLS (FrontendTLS)", section "Default configuration for all listeners"
(shared/guides/kgateway-frontend-mtls.txt), and the Gateway API TLS documentation,
"Client Certificate Validation (Frontend mTLS)":

    Create a Gateway with a default frontend TLS configuration that applies to all
    listeners that handle HTTPS traffic. [...] two HTTPS listeners [...] The validation
    mode is set to AllowValidOnly to allow connection only if a valid certificate is
    presented during the TLS handshake.

    Send a request [...] without a client certificate on both 8443 and 8444 ports.
    Verify that the TLS handshake fails [...] Repeat the request. This time, you include
    the client certificate [...]

Upstream: GatewayFrontendClientCertificateValidation (each request that should pass is
paired with one on the same listener that should fail).
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.expect import echo_header
from mtls_conformance.target import conditions_of, find_condition

from mtls_conformance.fixtures.guide import HOSTNAME

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation")

GATEWAY = "mtls"
PORTS = [pytest.param(8443, id="https-8443"), pytest.param(8444, id="https-8444")]


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway, guide_tls_objects):
    backend = mtls_backend(mtls_namespace, "httpbin", port=8000)
    gateway = m.gateway(
        GATEWAY, mtls_namespace, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(default=m.validation(m.object_ref("ca-cert"), mode="AllowValidOnly")),
        listeners=[m.https_listener("https-8443", 8443, certificate="https-cert"),
                   m.https_listener("https-8444", 8444, certificate="https-cert")])
    route = m.http_route("httpbin-https", mtls_namespace, hostnames=[HOSTNAME],
                         parents=[m.parent_ref(GATEWAY)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    return deploy_gateway(gateway, *guide_tls_objects, routes=[route])


def test_listeners_resolve_the_ca_reference(gw, mtls_target, valid_client):
    obj = mtls_target.get(gw.gateway)
    for listener in ("https-8443", "https-8444"):
        mtls_target.wait_for_condition(gw.gateway, "ResolvedRefs", listener=listener)
        mtls_target.wait_for_condition(gw.gateway, "Programmed", listener=listener)
    assert find_condition(conditions_of(obj), "InsecureFrontendValidationMode") is None, (
        "AllowValidOnly everywhere, yet the Gateway reports InsecureFrontendValidationMode")
    # What those conditions promise: the CA is loaded and enforced on both ports.
    for port in (8443, 8444):
        gw.expect_pair(port, sni=HOSTNAME, accepted=valid_client, refused=None,
                    what=f"listener https-{port}: ResolvedRefs and Programmed True, no "
                         f"InsecureFrontendValidationMode")


@pytest.mark.parametrize("port", PORTS)
def test_valid_client_certificate_is_accepted(gw, port, valid_client):
    what = "a client certificate signed by the trusted CA"
    response = gw.expect_ok(port, sni=HOSTNAME, cert=valid_client, what=what)
    gw.require_certificate_requested(response, True, port=port, what=f"{what}: AllowValidOnly requests it")


@pytest.mark.parametrize("port", PORTS)
def test_no_client_certificate_is_rejected(gw, port, valid_client):
    gw.expect_pair(port, sni=HOSTNAME, accepted=valid_client, refused=None,
                   what="a client without a certificate is refused")


@pytest.mark.parametrize("tls_version", ["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("port", PORTS)
def test_untrusted_client_certificate_is_rejected(gw, port, tls_version, valid_client,
                                                  untrusted_client):
    # Both halves pinned to the same version: only the certificate may differ.
    gw.expect_pair(port, sni=HOSTNAME, accepted=valid_client, refused=untrusted_client, tls_version=tls_version,
                   what=f"a certificate from a CA the Gateway does not trust is refused ({tls_version})")


@pytest.mark.parametrize("port", PORTS)
def test_expired_client_certificate_is_rejected(gw, port, valid_client, expired_client):
    gw.expect_pair(port, sni=HOSTNAME, accepted=valid_client, refused=expired_client,
                   what="an expired certificate from the trusted CA is refused")


#: An order a backend must not act on unless the client was let in.
ORDER = b'{"order": "transfer", "amount": 100}'


def test_refused_post_with_a_body_never_reaches_the_backend(gw, valid_client, untrusted_client):
    # Every negative already checks that its refused requests reached no backend; a request
    # with a body is where that matters most: a gateway that forwards, then refuses the
    # client (a close, a 400), has let the backend act on it. Both halves send the same POST.
    gw.expect_pair(8443, sni=HOSTNAME, accepted=valid_client, refused=(None, untrusted_client),
                   method="POST", body=ORDER, headers=[("Content-Type", "application/json")],
                   what="a refused POST with a body is not forwarded to the backend")


@pytest.mark.features("FrontendClientIdentityForwarding")
def test_backend_is_told_the_verified_identity(gw, valid_client, mtls_profile):
    identity = mtls_profile.identity
    response = gw.expect_ok(8443, sni=HOSTNAME, cert=valid_client,
                            headers=[(identity.sha256_header, "0" * 64)] if identity.sha256_header else [])
    seen = gw.identity(response)
    assert seen == identity.verified, (
        f"the backend saw {identity.verify_header}: {seen!r} for a verified client certificate; "
        f"expected {identity.verified!r}")
    if identity.sha256_header:
        assert echo_header(response, identity.sha256_header) == valid_client.sha256, (
            f"the backend saw {identity.sha256_header}: "
            f"{echo_header(response, identity.sha256_header)!r}; expected the presented "
            f"certificate's {valid_client.sha256} (a client-sent value must be replaced)")
