"""Backend mTLS: the Gateway presents spec.tls.backend.clientCertificateRef to its backends.

Guide: Gateway API TLS documentation, "Gateway's Certificate Selection (Backend mTLS)"
(shared/guides/gateway-api-tls-configuration.txt):

    Mutual TLS (mTLS) for upstream connections requires the Gateway to present a client
    certificate to the backend, in addition to verifying the backend's certificate. [...]
    use the tls.backend.clientCertificateRef field in the Gateway resource. This
    configuration applies to the Gateway as a client for all upstream connections managed
    by that Gateway.

        tls:
          backend:
            clientCertificateRef:
              kind: Secret
              group: ""
              name: foo-example-cert

The specification (GatewayBackendTLS) makes an invalid reference (missing Secret, wrong
group or kind, no tls.crt/tls.key) ``ResolvedRefs=False/InvalidClientCertificateRef`` on
the Gateway, and a reference to another namespace without a ReferenceGrant
``RefNotPermitted``; the Gateway stays Accepted. A backend that requires a client
certificate then refuses the Gateway, so its requests fail: never a 2xx.

Upstream: GatewayTLSBackendClientCertificate (the backend sees the Gateway's certificate
in ``tls.peerCertificates``), GatewayInvalidTLSBackendConfiguration.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes

from mtls_conformance import manifests as m
from mtls_conformance.client import Sibling
from mtls_conformance.expect import backend_saw_tls, echo_tls, eventually
from mtls_conformance.target import ObjectRef, TargetCannot

from mtls_conformance.fixtures.guide import BACKEND_HOSTNAME

pytestmark = pytest.mark.features("BackendTLSPolicy", "GatewayBackendClientCertificate")

HTTP_PORT = 80
HOST = BACKEND_HOSTNAME


@pytest.fixture(scope="module")
def gateway_client_ca(mtls_pki):
    """The CA the backends trust for the Gateway's client certificate."""
    return mtls_pki.authority("gateway-client-ca")


@pytest.fixture(scope="module")
def gateway_client_cert(gateway_client_ca):
    """Upstream's ``tls-checks-client-certificate``."""
    return gateway_client_ca.issue_client("tls-checks-client-certificate", common_name="gateway.example.com")


@pytest.fixture(scope="module")
def other_namespace(mtls_namespace, mtls_target):
    name = f"{mtls_namespace}-other"[:63]
    mtls_target.create_namespace(name)
    yield name
    mtls_target.delete_namespace(name)


def gateway(name, namespace, gateway_class, client_cert_ref):
    return m.gateway(name, namespace, gateway_class=gateway_class, listeners=[m.http_listener("http", HTTP_PORT)],
                     backend_client_certificate=client_cert_ref)


@pytest.fixture(scope="module")
def backends(mtls_namespace, mtls_target, backend_ca, backend_credential, gateway_client_ca, deploy_tls_backend):
    """Backends that require a client certificate from the Gateway's CA: echo and nginx,
    one Service each, behind one BackendTLSPolicy each."""
    ns = mtls_namespace
    deployed = {}
    for kind in ("echo", "nginx"):
        service = f"tls-backend-with-client-cert-validation-{kind}"
        try:
            deployed[kind] = deploy_tls_backend(kind, ns, service, port=443, credential=backend_credential,
                                                client_ca=gateway_client_ca, require_client_cert=True)
        except pytest.skip.Exception as exc:
            deployed[kind] = exc  # where this peer cannot run; its test skips with this reason
            continue
        except TargetCannot as exc:  # e.g. a backend image that cannot demand a client certificate
            deployed[kind] = pytest.skip.Exception(str(exc))
            continue
        mtls_target.apply(m.backend_tls_policy(
            service, ns, targets=[m.policy_target(service)], hostname=BACKEND_HOSTNAME,
            ca_refs=[m.object_ref("tls-checks-ca-certificate")]))
    mtls_target.apply(m.ca_configmap("tls-checks-ca-certificate", ns, backend_ca.cert_pem))
    return deployed


def running(backends):
    return {kind: b for kind, b in backends.items() if not isinstance(b, pytest.skip.Exception)}


def route_to_backends(name, namespace, gateways, backends):
    return m.http_route(name, namespace, hostnames=[HOST], parents=[m.parent_ref(g) for g in gateways],
                        rules=[m.rule(m.backend_ref(b.service, b.port), path=f"/{kind}")
                               for kind, b in backends.items()])


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_target, deploy_gateway, backends, gateway_client_cert):
    ns = mtls_namespace
    name = "gateway-tls-backend-client-certificate"
    gw = deploy_gateway(gateway(name, ns, mtls_gateway_class, m.secret_ref("tls-checks-client-certificate")),
                        m.tls_secret("tls-checks-client-certificate", ns, cert_pem=gateway_client_cert.chain_pem,
                                     key_pem=gateway_client_cert.key_pem),
                        routes=[route_to_backends("client-certificate", ns, [name], running(backends))])
    for b in running(backends).values():
        mtls_target.wait_for_policy_condition(ObjectRef("BackendTLSPolicy", b.service, ns), gw.gateway, "Accepted",
                                              "True", reason="Accepted", timeout=gw.settings.timing.condition_timeout)
    return gw


def presented_certificate(kind, cert):
    """A check for expect_ok: the backend saw ``cert`` as the client certificate."""

    def check(response):
        tls = echo_tls(response) or {}
        if kind == "nginx":
            seen = (tls.get("clientVerify"), (tls.get("clientFingerprint") or "").lower())
            expected = ("SUCCESS", cert.certificate.fingerprint(hashes.SHA1()).hex())
            return None if seen == expected else (
                f"nginx saw client verify {seen[0]!r}, fingerprint {seen[1]!r}; expected SUCCESS and the "
                f"Gateway certificate's {expected[1]}")
        peers = tls.get("peerCertificates") or []
        if not peers:
            return "the backend saw no client certificate; expected the Gateway's clientCertificateRef"
        if peers[0].strip() != cert.cert_pem.decode().strip():
            return "the backend saw a client certificate other than the Gateway's clientCertificateRef"
        return None

    return check


@pytest.mark.parametrize("kind", ["echo", "nginx"])
def test_backend_sees_the_gateway_client_certificate(gw, kind, backends, mtls_target, gateway_client_cert):
    if isinstance(backends[kind], pytest.skip.Exception):
        pytest.skip(backends[kind].msg)
    mtls_target.wait_for_condition(gw.gateway, "ResolvedRefs", "True", reason="ResolvedRefs",
                                   timeout=gw.settings.timing.condition_timeout)
    gw.expect_ok(HTTP_PORT, sni=None, host=HOST, plaintext=True, path=f"/{kind}",
                 check=presented_certificate(kind, gateway_client_cert),
                 what=f"{kind} requires a client certificate from the Gateway's CA")


INVALID_REFS = {
    # case: (clientCertificateRef, expected ResolvedRefs reason)
    "nonexistent-secret": (m.secret_ref("nonexistent-certificate"), "InvalidClientCertificateRef"),
    "unsupported-group": ({"group": "wrong.group.company.io", "kind": "Secret", "name": "tls-checks-client-certificate"},
                          "InvalidClientCertificateRef"),
    "unsupported-kind": ({"group": "", "kind": "WrongKind", "name": "tls-checks-client-certificate"},
                         "InvalidClientCertificateRef"),
    "malformed-secret": (m.secret_ref("malformed-client-certificate"), "InvalidClientCertificateRef"),
    "missing-reference-grant": (None, "RefNotPermitted"),  # filled in with the other namespace
}


#: A TLS backend that asks for no client certificate, behind a valid policy: on a Gateway
#: whose clientCertificateRef is invalid it must still answer over TLS (the sibling of the
#: backends that require the certificate).
OPEN_SERVICE = "tls-backend-without-client-cert-validation"
OPEN_SIBLING = Sibling(service=OPEN_SERVICE, backend_sni=BACKEND_HOSTNAME, path="/open")


@pytest.fixture(scope="module")
def invalid_gateways(gw, mtls_namespace, mtls_gateway_class, mtls_target, deploy_gateway, backends,
                     other_namespace, gateway_client_cert, backend_credential, deploy_tls_backend):
    ns = mtls_namespace
    open_backend = deploy_tls_backend("echo", ns, OPEN_SERVICE, port=443, credential=backend_credential)
    mtls_target.apply(m.backend_tls_policy(OPEN_SERVICE, ns, targets=[m.policy_target(OPEN_SERVICE)],
                                           hostname=BACKEND_HOSTNAME,
                                           ca_refs=[m.object_ref("tls-checks-ca-certificate")]))
    mtls_target.apply(
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {},
         "metadata": {"name": "malformed-client-certificate", "namespace": ns}},
        m.tls_secret("certificate", other_namespace, cert_pem=gateway_client_cert.chain_pem,
                     key_pem=gateway_client_cert.key_pem))
    clients = {}
    for case, (ref, _) in INVALID_REFS.items():
        ref = ref or m.secret_ref("certificate", namespace=other_namespace)
        clients[case] = deploy_gateway(gateway(f"gateway-client-certificate-{case}", ns, mtls_gateway_class, ref))
    mtls_target.apply(route_to_backends("invalid-client-certificates", ns,
                                        [g.gateway.name for g in clients.values()],
                                        {**running(backends), "open": open_backend}))
    return clients


@pytest.mark.parametrize("kind", ["echo", "nginx"])
@pytest.mark.parametrize("case", list(INVALID_REFS))
def test_invalid_client_certificate_ref_is_reported_and_not_presented(case, kind, invalid_gateways, backends,
                                                                      mtls_target, gw, gateway_client_cert):
    """The pair's positive half is the same request to the same backend through the
    Gateway whose clientCertificateRef is valid, made first: a data plane that reuses
    backend connections or TLS sessions across Gateways (keyed by backend, not by client
    certificate) would then present that certificate for the invalid one too."""
    client = invalid_gateways[case]
    reason = INVALID_REFS[case][1]
    timeout = client.settings.timing.condition_timeout
    mtls_target.wait_for_condition(client.gateway, "ResolvedRefs", "False", reason=reason, timeout=timeout)
    mtls_target.wait_for_condition(client.gateway, "Accepted", "True", reason="Accepted", timeout=timeout)
    backend = backends[kind]
    if isinstance(backend, pytest.skip.Exception):
        pytest.skip(backend.msg)
    mtls_target.wait_for_route_condition(ObjectRef("HTTPRoute", "invalid-client-certificates", backend.namespace),
                                         client.gateway, "Accepted", timeout=timeout)
    what = f"clientCertificateRef {case}: the Gateway has no certificate to present to {kind}, which requires one"
    gw.expect_ok(HTTP_PORT, sni=None, host=HOST, plaintext=True, path=f"/{kind}",
                 check=presented_certificate(kind, gateway_client_cert),
                 what=f"setup for the check {what!r} (not reached): the same backend through the Gateway "
                      f"whose clientCertificateRef is valid must see that certificate")
    if kind == "echo":  # demands the certificate in the handshake: the gateway cannot use it at all
        client.expect_backend_refused(HTTP_PORT, sni=None, host=HOST, plaintext=True, path=f"/{kind}",
                                      backend=backend, what=what, sibling=OPEN_SIBLING)
        return
    client.expect_ok(HTTP_PORT, sni=None, host=HOST, plaintext=True, path=OPEN_SIBLING.path,
                     service=OPEN_SIBLING.service, check=backend_saw_tls(sni=OPEN_SIBLING.backend_sni),
                     what=f"setup for the check {what!r} (not reached): the sibling backend {OPEN_SERVICE}, "
                          f"which asks for no client certificate, must answer over TLS")
    # nginx (ssl_verify_client on) completes the handshake and answers 400 itself, which the
    # gateway may pass on (the specification leaves the traffic to it): what must not happen
    # is a 2xx, or nginx verifying a certificate the Gateway should not have presented.
    before = len(backend.requests)
    eventually(lambda: client.request(HTTP_PORT, sni=None, host=HOST, plaintext=True, path=f"/{kind}"),
               lambda outcome: f"got {outcome.describe()}" if 200 <= (getattr(outcome, "status", 0) or 0) < 300
               else None, timing=client.settings.timing, what=what, changed_at=client.changed_at)
    verified = [r for r in backend.requests[before:] if (r.get("tls") or {}).get("clientVerify") == "SUCCESS"]
    assert not verified, f"{what}: nginx verified a client certificate from the Gateway: {verified[0]}"
