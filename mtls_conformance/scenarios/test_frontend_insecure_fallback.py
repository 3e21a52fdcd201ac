"""Frontend mTLS: AllowInsecureFallback lets unverified clients in, on its port only.

Guide: kgateway "mTLS (FrontendTLS)", section "Per port configuration"
(shared/guides/kgateway-frontend-mtls.txt):

    In this example, you override the default certificate validation for port 8444. This
    configuration allows requests, even if an invalid certificate was presented during the
    TLS handshake. Port 8443 continues to only allow connections if a valid certificate is
    presented.

Gateway API (GEP-91, v1.5 standard): in AllowInsecureFallback the Gateway still requests a
client certificate, accepts the connection whatever the verification result, and reports
``InsecureFrontendValidationMode=True`` (reason ConfigurationChanged) on the Gateway while
any validation uses that mode; the condition goes away when no validation does.

Upstream: GatewayFrontendClientCertificateValidationInsecureFallback. How the backend is
told what was verified is not a Gateway API requirement: the implementation's profile
says how (FrontendClientIdentityForwarding), and implementations without one skip it.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.expect import echo_header

from mtls_conformance.fixtures.guide import HOSTNAME, wait_ready

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation",
                                  "GatewayFrontendClientCertificateValidationInsecureFallback")

GATEWAY = "mtls"
STRICT_PORT, FALLBACK_PORT = 8443, 8444


def mtls_gateway(name, namespace, gateway_class, *, fallback_mode="AllowInsecureFallback"):
    return m.gateway(
        name, namespace, gateway_class=gateway_class,
        frontend=m.frontend_tls(
            default=m.validation(m.object_ref("ca-cert"), mode="AllowValidOnly"),
            per_port={FALLBACK_PORT: m.validation(m.object_ref("ca-cert"), mode=fallback_mode)}),
        listeners=[m.https_listener("https-8443", STRICT_PORT, certificate="https-cert"),
                   m.https_listener("https-8444", FALLBACK_PORT, certificate="https-cert")])


def route_to(name, namespace, gateway, backend):
    return m.http_route(name, namespace, hostnames=[HOSTNAME], parents=[m.parent_ref(gateway)],
                        rules=[m.rule(m.backend_ref(backend.service, backend.port))])


@pytest.fixture(scope="module")
def backend(mtls_namespace, mtls_backend):
    return mtls_backend(mtls_namespace, "httpbin", port=8000)


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, backend, deploy_gateway, guide_tls_objects):
    return deploy_gateway(mtls_gateway(GATEWAY, mtls_namespace, mtls_gateway_class),
                          *guide_tls_objects,
                          routes=[route_to("httpbin-https", mtls_namespace, GATEWAY, backend)])


def clients(request):
    return {"no certificate": None,
            "untrusted certificate": request.getfixturevalue("untrusted_client"),
            "expired certificate": request.getfixturevalue("expired_client"),
            "valid certificate": request.getfixturevalue("valid_client")}


CLIENTS = ["no certificate", "untrusted certificate", "expired certificate", "valid certificate"]


def test_gateway_reports_insecure_frontend_validation_mode(gw, mtls_target, valid_client):
    mtls_target.wait_for_condition(gw.gateway, "InsecureFrontendValidationMode", "True",
                                   reason="ConfigurationChanged")
    # What the condition warns of, and where: the fallback port lets a client without a
    # certificate in, the AllowValidOnly port still does not.
    gw.expect_ok(FALLBACK_PORT, sni=HOSTNAME, cert=None,
                 what="InsecureFrontendValidationMode=True: port 8444 is in AllowInsecureFallback")
    gw.expect_pair(STRICT_PORT, sni=HOSTNAME, accepted=valid_client, refused=None,
                what="InsecureFrontendValidationMode=True concerns port 8444 only; 8443 is AllowValidOnly")


@pytest.mark.parametrize("client", CLIENTS)
def test_fallback_port_lets_every_client_in(gw, client, request):
    cert = clients(request)[client]
    what = f"AllowInsecureFallback lets a client with {client} in"
    response = gw.expect_ok(FALLBACK_PORT, sni=HOSTNAME, cert=cert, what=what)
    gw.require_certificate_requested(response, True, port=FALLBACK_PORT,
                                     what=f"{what}, and still requests a client certificate")


@pytest.mark.parametrize("client", ["no certificate", "untrusted certificate"])
def test_default_port_still_rejects_unverified_clients(gw, client, request, valid_client):
    gw.expect_pair(STRICT_PORT, sni=HOSTNAME, accepted=valid_client, refused=clients(request)[client],
                   what=f"AllowValidOnly on the default port refuses a client with {client}")


@pytest.mark.features("FrontendClientIdentityForwarding")
@pytest.mark.parametrize("client", CLIENTS)
def test_backend_is_told_what_was_verified(gw, client, request, mtls_profile):
    identity = mtls_profile.identity
    response = gw.expect_ok(FALLBACK_PORT, sni=HOSTNAME, cert=clients(request)[client])
    seen = gw.identity(response)
    if client == "valid certificate":
        expected, ok = identity.verified, seen == identity.verified
    elif client == "no certificate":
        expected, ok = identity.absent, seen == identity.absent
    else:
        expected = f"{identity.failed_prefix}..."
        ok = seen is not None and seen.startswith(identity.failed_prefix)
    assert ok, (f"AllowInsecureFallback with {client}: the backend saw "
                f"{identity.verify_header}: {seen!r}; expected {expected!r}")


@pytest.mark.features("FrontendClientIdentityForwarding")
@pytest.mark.parametrize("client", ["no certificate", "untrusted certificate"])
def test_client_cannot_forge_the_verification_result(gw, client, request, mtls_profile):
    identity = mtls_profile.identity
    forged = [(identity.verify_header, identity.verified)]
    if identity.sha256_header:
        forged.append((identity.sha256_header, "ab" * 32))
    response = gw.expect_ok(FALLBACK_PORT, sni=HOSTNAME, cert=clients(request)[client],
                            headers=forged)
    seen = gw.identity(response)
    assert seen != identity.verified, (
        f"a client with {client} sent {identity.verify_header}: {identity.verified} and the backend "
        f"received it as such; the gateway must replace client-sent identity headers")
    if identity.sha256_header:
        assert echo_header(response, identity.sha256_header) != "ab" * 32, (
            f"a client-sent {identity.sha256_header} reached the backend unchanged")


def _reverted(mtls_namespace, mtls_gateway_class, mtls_target, backend, deploy_gateway, guide_tls_objects):
    """A Gateway of its own, so that reverting it cannot affect the other tests: the mode
    in force, checked, then reverted to AllowValidOnly, ahead with the module (configure_ahead)."""
    name = "mtls-revert"
    route = route_to("revert", mtls_namespace, name, backend)
    gw = deploy_gateway(mtls_gateway(name, mtls_namespace, mtls_gateway_class),
                        *guide_tls_objects, routes=[route], ready=False)
    yield  # configured; the checks and the change run once every module is configured
    wait_ready(gw, [route])
    mtls_target.wait_for_condition(gw.gateway, "InsecureFrontendValidationMode", "True",
                                   reason="ConfigurationChanged")
    gw.expect_ok(FALLBACK_PORT, sni=HOSTNAME, cert=None)

    reverted = mtls_gateway(name, mtls_namespace, mtls_gateway_class, fallback_mode="AllowValidOnly")
    deploy_gateway(reverted, ready=False)  # the test waits for it, as deploy_gateway does
    return gw


@pytest.mark.configure_ahead(setup=_reverted)
def test_condition_is_removed_when_the_mode_is_reverted(mtls_target, valid_client, mtls_configured):
    gw = mtls_configured
    timeout = gw.settings.timing.condition_timeout
    wait_ready(gw)  # deploy_gateway's own wait, at the reverted generation
    mtls_target.wait_for_no_condition(gw.gateway, "InsecureFrontendValidationMode", timeout=timeout)
    gw.expect_pair(FALLBACK_PORT, sni=HOSTNAME, accepted=valid_client, refused=None,
                   what="after the mode went back to AllowValidOnly, a client without a certificate is refused")
