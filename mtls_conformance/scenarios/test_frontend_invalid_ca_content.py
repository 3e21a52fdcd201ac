"""Frontend mTLS: a CA reference whose object exists but holds no usable CA fails its own
port closed, is reported, and leaves the other listeners of the Gateway serving.

Guide: Gateway API v1.7.0, ``apis/v1/gateway_types.go`` lines 849-853 (FrontendTLSValidation
.CACertificateRefs):

    A CACertificateRef is invalid if:
    * It refers to a resource that cannot be resolved (e.g., the referenced resource does
      not exist) or is misconfigured (e.g., a ConfigMap does not contain a key named
      `ca.crt`). In this case, the Reason on all matching HTTPS listeners must be set to
      `InvalidCACertificateRef` and the Message of the Condition must indicate which
      reference is invalid and why.

and lines 878-883:

    In all cases, the implementation MUST ensure that the `ResolvedRefs` condition is set
    to `status: False` on all targeted listeners (i.e., listeners serving HTTPS on a
    matching port). [...] If ALL CACertificateRefs are invalid, the implementation MUST
    also ensure the `Accepted` condition on the listener is set to `status: False`, with
    the Reason `NoValidCACertificate`.

"All matching HTTPS listeners", "all targeted listeners": the rule is per port, so a
listener whose validation is valid is not touched by another port's bad reference. The refs
name "objects that contain a PEM-encoded TLS CA certificate bundle" (lines 844-845; Core
support, lines 888-889: "a Kubernetes ConfigMap, with the CA certificate in a key named
`ca.crt`"): text that is not PEM under ``ca.crt`` is no usable CA either. Its reason is not
pinned: an implementation that checks the format sets "an implementation-specific Reason"
(lines 874-876), still with ResolvedRefs=False and, the ref being the only one,
Accepted=False/NoValidCACertificate.

Envoy Gateway v1.9.1 taught this module (docs/implementations/envoy-gateway.md, deviation
1): it reported both kinds resolved. Without ``ca.crt`` it took the CA under another key and
let that CA's clients in on the port; the text that is not PEM went to Envoy, which refused
the Gateway's whole TLS configuration, so the valid listener of the same Gateway closed every
handshake while its status said Programmed. test_frontend_invalid_ca.py puts every invalid
reference on one Gateway, where the two could not be told apart; here each kind of bad
content is alone on a Gateway of its own, beside a listener with a valid CA, so a failure
names the rule it breaks.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m

from mtls_conformance.fixtures.guide import HOSTNAME

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation")

VALID_PORT, INVALID_PORT = 443, 8443

# id -> (what is wrong, the ConfigMap's name, the key of the CA (None: ca.crt, not PEM), ResolvedRefs reason)
CONTENT = {
    "no-ca.crt-key": ("the CA is under key tls.crt, no ca.crt", "ca-under-tls-crt", "tls.crt",
                      "InvalidCACertificateRef"),
    "ca.crt-not-PEM": ("ca.crt is text, not a PEM certificate", "ca-crt-not-pem", None, None),
}
CASES = list(CONTENT)


def listener_name(port: int) -> str:
    return f"https-{port}"


@pytest.fixture(scope="module")
def gateways(mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway, guide_tls_objects, client_ca):
    """One Gateway per kind of bad content: the default validation (the valid CA) on
    VALID_PORT, a perPort validation whose only ref is the bad ConfigMap on INVALID_PORT."""
    ns = mtls_namespace
    backend = mtls_backend(ns, "httpbin", port=8000)
    clients = {}
    for case, (_, configmap, key, _) in CONTENT.items():
        name = f"mtls-ca-content-{case.lower().replace('.', '-')}"
        bad = (m.ca_configmap(configmap, ns, client_ca.cert_pem, key=key) if key
               else m.ca_configmap(configmap, ns, "this is not a PEM certificate\n"))
        gateway = m.gateway(
            name, ns, gateway_class=mtls_gateway_class,
            frontend=m.frontend_tls(default=m.validation(m.object_ref("ca-cert")),
                                    per_port={INVALID_PORT: m.validation(m.object_ref(configmap),
                                                                         mode="AllowValidOnly")}),
            listeners=[m.https_listener(listener_name(p), p, certificate="https-cert")
                       for p in (VALID_PORT, INVALID_PORT)])
        route = m.http_route(f"httpbin-{name}", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(name)],
                             rules=[m.rule(m.backend_ref(backend.service, backend.port))])
        # The invalid listener must not become ready: wait for the route, not for the Gateway.
        clients[case] = deploy_gateway(gateway, *guide_tls_objects, bad, routes=[route], ready=False)
    return clients


def wait_listener(gw, port, type_, status, reason=None):
    return gw.target.wait_for_condition(gw.gateway, type_, status, reason=reason, listener=listener_name(port),
                                        timeout=gw.settings.timing.condition_timeout)


@pytest.mark.parametrize("case", CASES)
def test_listener_with_a_valid_ca_keeps_serving(gateways, case, valid_client, untrusted_client):
    gw, what = gateways[case], CONTENT[case][0]
    for type_ in ("Accepted", "ResolvedRefs", "Programmed"):
        wait_listener(gw, VALID_PORT, type_, "True")
    gw.expect_pair(VALID_PORT, sni=HOSTNAME, accepted=valid_client, refused=(untrusted_client, None),
                   accepted_what=f"the other port's caCertificateRef is invalid ({what}): this listener's valid "
                                 f"CA must still let its clients in",
                   what=f"the other port's caCertificateRef is invalid ({what}): this listener must still refuse "
                        f"untrusted and certificate-less clients")


@pytest.mark.parametrize("case", CASES)
def test_invalid_content_is_reported(gateways, case, valid_client):
    gw, (what, _, _, reason) = gateways[case], CONTENT[case]
    condition = wait_listener(gw, INVALID_PORT, "ResolvedRefs", "False", reason)
    assert condition.get("message"), (f"listener {listener_name(INVALID_PORT)} ({what}): ResolvedRefs=False "
                                      f"without a message naming the reference")
    wait_listener(gw, INVALID_PORT, "Accepted", "False", "NoValidCACertificate")
    wait_listener(gw, INVALID_PORT, "Programmed", "False")
    # What the conditions promise (docs/status-and-traffic.md): nobody in on this port, while
    # the Gateway's other listener serves.
    gw.expect_fail_closed(INVALID_PORT, sni=HOSTNAME, clients=[None, valid_client], serving_port=VALID_PORT,
                          serving_client=valid_client,
                          what=f"ResolvedRefs=False, Accepted=False/NoValidCACertificate ({what}): the port fails "
                               f"closed")


@pytest.mark.parametrize("case", CASES)
def test_listener_with_invalid_content_fails_closed(gateways, case, valid_client):
    """Traffic alone, whatever the status says: probed without verifying the port's
    certificate (see expect_fail_closed)."""
    gw, what = gateways[case], CONTENT[case][0]
    gw.expect_fail_closed(INVALID_PORT, sni=HOSTNAME, clients=[None, valid_client], serving_port=VALID_PORT,
                          serving_client=valid_client,
                          what=f"the only caCertificateRef is invalid ({what}): the port fails closed")
