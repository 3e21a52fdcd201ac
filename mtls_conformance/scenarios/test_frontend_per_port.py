"""Frontend mTLS: a perPort validation overrides the default on one port.

Guide: NGINX Gateway Fabric "Securing frontend client traffic using mutual TLS"
(shared/guides/nginx-gateway-fabric-frontend-mtls.txt):

    tls.frontend.default [...] applies to all HTTPS listeners unless overridden by a
    perPort configuration. [...] In this example, port 443 uses AllowValidOnly mode with
    the per-port-validation-ca-secret CA.

    [A certificate signed by the default CA on 443:] Because the cert and key were signed
    by the CA in default-validation-ca-secret, the request should fail.

The guide keeps its CAs in Secrets (an implementation-specific CA source); this module
uses ConfigMaps with key ``ca.crt``, the Core form, so that it runs everywhere. The Gateway
API documentation adds that only HTTPS listeners are affected: an HTTP listener on the
same Gateway keeps serving clients without certificates.

Upstream: GatewayFrontendClientCertificateValidation (":443 default CA, :8443 perPort,
each with the other CA's certificate refused").
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m

from mtls_conformance.fixtures.guide import HOSTNAME

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation")

GATEWAY = "gateway"
HOST = f"cafe.{HOSTNAME}"


@pytest.fixture(scope="module")
def per_port_ca(mtls_pki):
    return mtls_pki.authority("per-port-validation-ca")


@pytest.fixture(scope="module")
def default_client(client_ca):
    return client_ca.issue_client("default-ca-client", common_name=HOST, dns_names=[HOST])


@pytest.fixture(scope="module")
def per_port_client(per_port_ca):
    return per_port_ca.issue_client("per-port-ca-client", common_name=HOST, dns_names=[HOST])


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway, guide_tls_objects,
       per_port_ca):
    ns = mtls_namespace
    tea = mtls_backend(ns, "tea", port=80)
    coffee = mtls_backend(ns, "coffee", port=80)
    gateway = m.gateway(
        GATEWAY, ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(
            default=m.validation(m.object_ref("ca-cert", namespace=ns)),
            per_port={443: m.validation(m.object_ref("per-port-validation-ca", namespace=ns),
                                        mode="AllowValidOnly")}),
        listeners=[m.https_listener("https", 443, certificate="https-cert"),
                   m.https_listener("https-2", 8443, certificate="https-cert"),
                   m.http_listener("http", 80)])
    routes = [
        m.http_route("tea", ns, hostnames=[HOST], parents=[m.parent_ref(GATEWAY, section_name="https")],
                     rules=[m.rule(m.backend_ref(tea.service, tea.port), path="/tea")]),
        m.http_route("coffee", ns, hostnames=[HOST],
                     parents=[m.parent_ref(GATEWAY, section_name="https-2")],
                     rules=[m.rule(m.backend_ref(coffee.service, coffee.port), path="/coffee")]),
        m.http_route("plain", ns, hostnames=[HOST], parents=[m.parent_ref(GATEWAY, section_name="http")],
                     rules=[m.rule(m.backend_ref(coffee.service, coffee.port))]),
    ]
    return deploy_gateway(gateway, *guide_tls_objects,
                          m.ca_configmap("per-port-validation-ca", ns, per_port_ca.cert_pem),
                          routes=routes)


def test_default_ca_client_is_accepted_on_the_default_port(gw, default_client):
    gw.expect_ok(8443, sni=HOST, cert=default_client, path="/coffee", service="coffee")


def test_default_ca_client_is_rejected_on_the_per_port_port(gw, default_client, per_port_client):
    gw.expect_pair(443, sni=HOST, accepted=per_port_client, refused=default_client, path="/tea", service="tea",
                   what="the perPort validation of 443 does not trust the default CA")


def test_per_port_ca_client_is_accepted_on_the_per_port_port(gw, per_port_client):
    gw.expect_ok(443, sni=HOST, cert=per_port_client, path="/tea", service="tea")


def test_per_port_ca_client_is_rejected_on_the_default_port(gw, default_client, per_port_client):
    gw.expect_pair(8443, sni=HOST, accepted=default_client, refused=per_port_client, path="/coffee",
                   service="coffee", what="the default validation of 8443 does not trust the perPort CA")


@pytest.mark.parametrize("port", [443, 8443])
def test_no_client_certificate_is_rejected_on_both_ports(gw, port, default_client, per_port_client):
    gw.expect_pair(port, sni=HOST, accepted=per_port_client if port == 443 else default_client, refused=None,
                   path="/tea" if port == 443 else "/coffee", service="tea" if port == 443 else "coffee",
                   what="a client without a certificate is refused")


@pytest.mark.features("Gateway", "HTTPRoute")
def test_http_listener_is_not_affected_by_frontend_validation(gw):
    """Frontend validation applies only to HTTPS listeners (Gateway API TLS documentation)."""
    gw.expect_ok(80, sni=None, host=HOST, plaintext=True, service="coffee",
                 what="plain HTTP on the Gateway's HTTP listener")
