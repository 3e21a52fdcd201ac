"""Frontend mTLS: rotating the client CA bundle and the listener certificate, and generations.

Guide: kgateway "mTLS (FrontendTLS)" (shared/guides/kgateway-frontend-mtls.txt) has the
CA in a ConfigMap and the listener certificate in a Secret that operators replace when
certificates are renewed; the Gateway API contract for status (``metav1.Condition``):

    observedGeneration represents the .metadata.generation that the condition was set
    based upon. For instance, if .metadata.generation is currently 12, but the
    .status.conditions[x].observedGeneration is 9, the condition is out of date with
    respect to the current state of the instance.

A replaced ConfigMap or Secret changes no Gateway generation, yet it must take effect
for new connections without restarting anything: clients of the old CA are then
refused, clients of the new one accepted, and the new listener certificate is served.
(That ``InsecureFrontendValidationMode`` goes away when the mode returns to
AllowValidOnly is checked in test_frontend_insecure_fallback.py.)
"""

from __future__ import annotations

import ssl

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.target import conditions_of

from mtls_conformance.fixtures.guide import HOSTNAME, wait_ready

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation")

PORT = 8443


@pytest.fixture(scope="module")
def backend(mtls_namespace, mtls_backend):
    return mtls_backend(mtls_namespace, "httpbin", port=8000)


def gateway(name, ns, gateway_class, *, ca="rotating-ca", certificate="https-cert", per_port=None,
            mode="AllowValidOnly"):
    return m.gateway(name, ns, gateway_class=gateway_class,
                     frontend=m.frontend_tls(default=m.validation(m.object_ref(ca), mode=mode),
                                             per_port=per_port),
                     listeners=[m.https_listener("https", PORT, certificate=certificate),
                                m.https_listener("https-2", PORT + 1, certificate=certificate)])


def route(name, ns, backend):
    return m.http_route(f"{name}-route", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(name)],
                        rules=[m.rule(m.backend_ref(backend.service, backend.port))])


def _ca_rotation(mtls_namespace, mtls_gateway_class, mtls_pki, backend, deploy_gateway, guide_tls_objects):
    """A Gateway of its own, checked, then its CA ConfigMap replaced (ahead with the module: configure_ahead)."""
    ns, name = mtls_namespace, "mtls-ca-rotation"
    old_ca, new_ca = mtls_pki.authority("rotation-old-ca"), mtls_pki.authority("rotation-new-ca")
    old_client = old_ca.issue_client("old-ca-client", dns_names=[HOSTNAME])
    new_client = new_ca.issue_client("new-ca-client", dns_names=[HOSTNAME])
    routes = [route(name, ns, backend)]
    gw = deploy_gateway(gateway(name, ns, mtls_gateway_class), *guide_tls_objects,
                        m.ca_configmap("rotating-ca", ns, old_ca.cert_pem), routes=routes, ready=False)
    yield  # configured; the checks and the change run once every module is configured
    wait_ready(gw, routes)
    gw.expect_pair(PORT, sni=HOSTNAME, accepted=old_client, refused=new_client,
                   what="before rotation, a client of the new CA is refused")

    gw.target.apply(m.ca_configmap("rotating-ca", ns, new_ca.cert_pem))
    return gw, old_client, new_client


@pytest.mark.features("FrontendCertificateRotation")
@pytest.mark.configure_ahead(setup=_ca_rotation)
def test_replacing_the_ca_bundle_takes_effect(mtls_configured):
    gw, old_client, new_client = mtls_configured
    gw.expect_pair(PORT, sni=HOSTNAME, accepted=new_client, refused=old_client,
                   accepted_what="after the CA ConfigMap was replaced, a client of the new CA must be let in",
                   what="after the CA ConfigMap was replaced, a client of the old CA is refused")


def _der(pem: bytes | str) -> bytes:
    text = pem.decode() if isinstance(pem, bytes) else pem
    return ssl.PEM_cert_to_DER_cert(text[: text.index("-----END CERTIFICATE-----") + 25])


def serving(credential):
    def check(response):
        seen = response.tls.server_certificate_pem if response.tls else None
        if seen is None or _der(seen) != _der(credential.cert_pem):
            return f"the listener served another certificate than {credential.name!r}"
        return None
    return check


def _certificate_rotation(mtls_namespace, mtls_gateway_class, backend, deploy_gateway, server_authority, client_ca,
                          valid_client):
    """A Gateway of its own, checked, then its listener's Secret replaced (ahead with the
    module: configure_ahead)."""
    ns, name = mtls_namespace, "mtls-cert-rotation"
    first = server_authority.issue_server(HOSTNAME, f"*.{HOSTNAME}", name="rotation-first")
    second = server_authority.issue_server(HOSTNAME, f"*.{HOSTNAME}", name="rotation-second")

    def secret(credential):
        return m.tls_secret("rotating-cert", ns, cert_pem=credential.chain_pem, key_pem=credential.key_pem)

    routes = [route(name, ns, backend)]
    gw = deploy_gateway(gateway(name, ns, mtls_gateway_class, ca="client-ca-rotation",
                                certificate="rotating-cert"),
                        secret(first), m.ca_configmap("client-ca-rotation", ns, client_ca.cert_pem),
                        routes=routes, ready=False)
    yield  # configured; the checks and the change run once every module is configured
    wait_ready(gw, routes)
    gw.expect_ok(PORT, sni=HOSTNAME, cert=valid_client, check=serving(first),
                 what="before rotation")
    gw.target.apply(secret(second))
    return gw, second


@pytest.mark.features("FrontendCertificateRotation")
@pytest.mark.configure_ahead(setup=_certificate_rotation)
def test_replacing_the_listener_certificate_takes_effect(valid_client, mtls_configured):
    gw, second = mtls_configured
    gw.expect_pair(PORT, sni=HOSTNAME, accepted=valid_client, refused=None, check=serving(second),
                   accepted_what="after the listener's Secret was replaced, it must serve the new certificate",
                   what="after the listener's Secret was replaced, client validation still applies")


def _generations(mtls_namespace, mtls_gateway_class, backend, deploy_gateway, guide_tls_objects, client_ca):
    """A Gateway of its own and the first of its spec changes (ahead with the module:
    configure_ahead); the test makes the others, each after the previous one was checked."""
    ns, name = mtls_namespace, "mtls-generations"
    changes = [
        gateway(name, ns, mtls_gateway_class, ca="ca-cert"),
        gateway(name, ns, mtls_gateway_class, ca="ca-cert",
                per_port={PORT + 1: m.validation(m.object_ref("ca-cert"), mode="AllowInsecureFallback")}),
        gateway(name, ns, mtls_gateway_class, ca="ca-cert-copy"),
        gateway(name, ns, mtls_gateway_class, ca="ca-cert"),
    ]
    routes = [route(name, ns, backend)]
    gw = deploy_gateway(changes[0], *guide_tls_objects,
                        m.ca_configmap("ca-cert-copy", ns, client_ca.cert_pem), routes=routes, ready=False)
    yield  # configured; the first change is made once every module is configured
    wait_ready(gw, routes)
    deploy_gateway(changes[1], ready=False)  # the test waits for it, as deploy_gateway does
    return gw, changes


@pytest.mark.configure_ahead(setup=_generations)
def test_observed_generation_follows_every_spec_change(mtls_target, deploy_gateway, valid_client, mtls_configured):
    gw, changes = mtls_configured
    for step, spec in enumerate(changes[1:], start=2):
        if step == 2:  # applied ahead: deploy_gateway's own wait for Accepted and Programmed
            wait_ready(gw)
        else:
            deploy_gateway(spec)  # waits for Accepted and Programmed at the new generation
        obj = mtls_target.get(gw.gateway)
        generation = obj["metadata"]["generation"]
        assert generation >= step, f"metadata.generation {generation} after {step} spec versions"
        for listener in ("https", "https-2"):
            stale = [f"{c['type']}={c.get('observedGeneration')}"
                     for c in conditions_of(obj, listener=listener)
                     if c.get("observedGeneration") != generation]
            assert not stale, (f"after spec change {step} (generation {generation}) listener "
                               f"{listener!r} has stale conditions: {', '.join(stale)}")
        gw.expect_ok(PORT, sni=HOSTNAME, cert=valid_client, what=f"after spec change {step}")
