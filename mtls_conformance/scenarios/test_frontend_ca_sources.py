"""Frontend mTLS: where the CA bundle may come from besides a ConfigMap in the Gateway's namespace.

Guide: NGINX Gateway Fabric "Securing frontend client traffic using mutual TLS"
(shared/guides/nginx-gateway-fabric-frontend-mtls.txt) keeps its CAs in Secrets:

    caCertificateRefs:
    - kind: Secret
      group: ""
      name: default-validation-ca-secret

and the Gateway API ``FrontendTLSValidation`` documentation (v1.5, standard):

    caCertificateRefs [...] Support: Core - A single reference to a Kubernetes ConfigMap,
    with the CA certificate in a key named ``ca.crt``. Support: Implementation-specific -
    More than one reference, other kinds of resources, or a single reference that
    includes multiple certificates. [...] References to a resource in a different
    namespace are invalid UNLESS there is a ReferenceGrant in the target namespace that
    allows the certificate to be attached.

A Secret as CA source is implementation-specific: the profile says whether it is
supported (``Profile.ca_in_secret``). The cross-namespace case follows the grant both
ways: allowed while it exists, RefNotPermitted and fail closed once it is deleted.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m

from mtls_conformance.fixtures.guide import HOSTNAME, wait_ready

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation")


#: A second listener whose perPort validation names the guide's ConfigMap ``ca-cert`` in the
#: Gateway's own namespace: it must keep serving when the listener under test fails closed.
SERVING_PORT = 8444


def deploy(deploy_gateway, *, name, ns, gateway_class, backend, ca_ref, objects, ready=True):
    gateway = m.gateway(name, ns, gateway_class=gateway_class,
                        frontend=m.frontend_tls(default=m.validation(ca_ref, mode="AllowValidOnly"),
                                                per_port={SERVING_PORT: m.validation(m.object_ref("ca-cert"))}),
                        listeners=[m.https_listener("https", 8443, certificate="https-cert"),
                                   m.https_listener("https-serving", SERVING_PORT, certificate="https-cert")])
    route = m.http_route(f"{name}-route", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(name)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    return deploy_gateway(gateway, *objects, routes=[route], ready=ready), route


@pytest.fixture(scope="module")
def backend(mtls_namespace, mtls_backend):
    return mtls_backend(mtls_namespace, "httpbin", port=8000)


@pytest.fixture(scope="module")
def ca_namespace(mtls_namespace, mtls_target):
    """The namespace that holds the CA ConfigMap referred to across namespaces."""
    name = f"{mtls_namespace}-ca"
    mtls_target.create_namespace(name)
    try:
        yield name
    finally:
        mtls_target.delete_namespace(name)


def _ca_in_a_secret(mtls_namespace, mtls_gateway_class, mtls_profile, backend, deploy_gateway, guide_tls_objects,
                    client_ca):
    """A Gateway of its own with its CA in a Secret (ahead with the module: configure_ahead)."""
    if not mtls_profile.ca_in_secret:
        pytest.skip(f"the implementation profile {mtls_profile.key!r} does not take CA bundles "
                    f"from Secrets (Profile.ca_in_secret)")
    ns = mtls_namespace
    gw, route = deploy(deploy_gateway, name="mtls-secret-ca", ns=ns, gateway_class=mtls_gateway_class,
                       backend=backend, ca_ref=m.object_ref("ca-secret", kind="Secret"),
                       objects=[*guide_tls_objects, m.ca_secret("ca-secret", ns, client_ca.cert_pem)], ready=False)
    yield  # configured; deploy_gateway's wait runs once every module is configured
    wait_ready(gw, [route])
    return gw


@pytest.mark.features("FrontendCACertificateInSecret")
@pytest.mark.configure_ahead(setup=_ca_in_a_secret)
def test_ca_in_a_secret(valid_client, untrusted_client, mtls_configured):
    gw = mtls_configured
    gw.target.wait_for_condition(gw.gateway, "ResolvedRefs", listener="https",
                                 timeout=gw.settings.timing.condition_timeout)
    gw.expect_pair(8443, sni=HOSTNAME, accepted=valid_client, refused=untrusted_client,
                   accepted_what="CA bundle in a Secret (key ca.crt): a client of that CA must be let in",
                   what="CA bundle in a Secret: a client of another CA is refused")


def _grant_deleted(mtls_namespace, ca_namespace, mtls_gateway_class, backend, deploy_gateway, guide_tls_objects,
                   client_ca, valid_client, untrusted_client):
    """A Gateway of its own whose CA ConfigMap is in another namespace, granted and
    checked, then the grant deleted (ahead with the module: configure_ahead)."""
    ns = mtls_namespace
    grant = m.reference_grant("gateways-may-use-ca", ca_namespace, from_kind="Gateway",
                              from_namespace=ns, to_kind="ConfigMap")
    gw, route = deploy(deploy_gateway, name="mtls-cross-ns-ca", ns=ns, gateway_class=mtls_gateway_class,
                       backend=backend, ca_ref=m.object_ref("shared-ca", namespace=ca_namespace),
                       objects=[*guide_tls_objects, m.ca_configmap("shared-ca", ca_namespace, client_ca.cert_pem),
                                grant], ready=False)
    yield  # configured; the checks and the change run once every module is configured
    wait_ready(gw, [route])
    target, timeout = gw.target, gw.settings.timing.condition_timeout
    target.wait_for_condition(gw.gateway, "ResolvedRefs", listener="https", timeout=timeout)
    gw.expect_pair(8443, sni=HOSTNAME, accepted=valid_client, refused=untrusted_client,
                   accepted_what="CA ConfigMap in another namespace, granted: a client of that CA must be let in",
                   what="CA ConfigMap in another namespace, granted: a client of another CA is refused")

    target.delete(grant)
    return gw


@pytest.mark.features("ReferenceGrant")
@pytest.mark.configure_ahead(setup=_grant_deleted)
def test_cross_namespace_ca_follows_the_reference_grant(valid_client, mtls_configured):
    gw = mtls_configured
    target, timeout = gw.target, gw.settings.timing.condition_timeout
    target.wait_for_condition(gw.gateway, "ResolvedRefs", "False", reason="RefNotPermitted",
                              listener="https", timeout=timeout)
    target.wait_for_condition(gw.gateway, "Accepted", "False", reason="NoValidCACertificate",
                              listener="https", timeout=timeout)
    gw.expect_fail_closed(8443, sni=HOSTNAME, clients=[None, valid_client], serving_port=SERVING_PORT,
                          serving_client=valid_client,
                          what="after the ReferenceGrant was deleted, the port fails closed")
