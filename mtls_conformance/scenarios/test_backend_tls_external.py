"""Backend TLS to an external service: wellKnownCACertificates System.

Guide: kgateway "Backend TLS", section "External service"
(shared/guides/kgateway-backend-tls.txt):

    Create a TLS policy that originates a TLS connection to the Backend [httpbin.org] [...]
    To originate the TLS connection, you use known trusted CA certificates.

        validation:
          hostname: httpbin.org
          wellKnownCACertificates: System

    Send a request to the httpbin-external.example domain. [...] you get back a 200.

The Gateway API TLS documentation ("Using System Certificates") leaves which system roots
are used to the implementation. The suite cannot reach the internet, so the external
host is simulated: a TLS server on this machine whose certificate comes from a CA that
the harness adds to the gateway's system roots (a local gateway's ``{system_ca_bundle}``,
docs/local-target.md). ``--external-backend-host`` runs the same checks against a real
public host through a Service of type ExternalName: an HTTPRoute for the host's own name
sends ``GET /`` to it, and only the host's own 2xx or 3xx counts (tests/integration/
test_external_host_standin.py runs these checks against a local stand-in host).

What the guide does not show is checked too: a self-signed external certificate is
refused, and a policy with caCertificateRefs trusts those CAs only, never the system roots.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.client import Sibling
from mtls_conformance.expect import backend_saw_tls, eventually, reached_backend
from mtls_conformance.probe import Response, curl_command
from mtls_conformance.target import ObjectRef

SIMULATED = pytest.mark.features("BackendTLSPolicy", "BackendTLSPolicySystemCACertificates")
#: Opt-in: only our extension feature, so that a run without --external-backend-host
#: leaves the upstream BackendTLSPolicy verdict (and the ConformanceReport) complete.
REAL_HOST = pytest.mark.features("BackendTLSPolicySystemCACertificates")

GATEWAY = "http"
HTTP_PORT = 8080
ROUTE_HOST = "httpbin-external.example"  # the guide's route hostname
SIMULATED_HOST = "httpbin.external.example"  # stands in for httpbin.org


def route(name, namespace, *paths_to_services):
    return m.http_route(name, namespace, hostnames=[ROUTE_HOST], parents=[m.parent_ref(GATEWAY)],
                        rules=[m.rule(m.backend_ref(svc, port), path=path)
                               for path, (svc, port) in paths_to_services])


def system_policy(name, namespace, service, *, hostname):
    return m.backend_tls_policy(name, namespace, targets=[m.policy_target(service)], hostname=hostname,
                                well_known="System")


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, deploy_gateway):
    return deploy_gateway(m.gateway(GATEWAY, mtls_namespace, gateway_class=mtls_gateway_class,
                                    listeners=[m.http_listener("http", HTTP_PORT)]))


@pytest.fixture(scope="module")
def simulated(gw, mtls_namespace, mtls_pki, mtls_target, system_trusted_ca, deploy_tls_backend):
    """Three "external" servers for the same name: a publicly trusted certificate, a
    self-signed one, and a publicly trusted one behind a policy that names a private CA."""
    ns = mtls_namespace
    public = system_trusted_ca.issue_server(SIMULATED_HOST, name="simulated-public-host")
    self_signed = mtls_pki.self_signed("simulated-self-signed-host", SIMULATED_HOST)
    private_ca = mtls_pki.authority("private-ca-for-external")
    backends = {"public": deploy_tls_backend("echo", ns, "httpbin-org", port=443, credential=public),
                "self-signed": deploy_tls_backend("echo", ns, "self-signed-host", port=443, credential=self_signed),
                "ca-ref": deploy_tls_backend("echo", ns, "ca-ref-host", port=443, credential=public)}
    policies = {"public": system_policy("httpbin-org", ns, "httpbin-org", hostname=SIMULATED_HOST),
                "self-signed": system_policy("self-signed-host", ns, "self-signed-host", hostname=SIMULATED_HOST),
                "ca-ref": m.backend_tls_policy("ca-ref-host", ns, targets=[m.policy_target("ca-ref-host")],
                                               hostname=SIMULATED_HOST, ca_refs=[m.object_ref("private-ca")])}
    mtls_target.apply(m.ca_configmap("private-ca", ns, private_ca.cert_pem), *policies.values(),
                      route("httpbin-org", ns, *[(f"/{case}", (b.service, b.port)) for case, b in backends.items()]))
    for p in policies.values():
        mtls_target.wait_for_policy_condition(ObjectRef.of(p), gw.gateway, "Accepted", "True", reason="Accepted",
                                              timeout=gw.settings.timing.condition_timeout)
    return backends


@SIMULATED
def test_system_roots_trust_a_publicly_issued_certificate(gw, simulated):
    gw.expect_ok(HTTP_PORT, sni=None, host=ROUTE_HOST, plaintext=True, path="/public",
                 check=backend_saw_tls(sni=SIMULATED_HOST),
                 what=f"wellKnownCACertificates System to {SIMULATED_HOST} (certificate from a system root)")


#: The correctly configured "external" server next to the refused ones (same Gateway).
PUBLIC_SIBLING = Sibling(service="httpbin-org", backend_sni=SIMULATED_HOST, path="/public")


@SIMULATED
def test_self_signed_external_certificate_is_refused(gw, simulated):
    gw.expect_backend_refused(HTTP_PORT, sni=None, host=ROUTE_HOST, plaintext=True, path="/self-signed",
                              backend=simulated["self-signed"], sibling=PUBLIC_SIBLING,
                              what=f"wellKnownCACertificates System, {SIMULATED_HOST} presents a self-signed certificate")


@SIMULATED
def test_ca_refs_do_not_fall_back_to_system_roots(gw, simulated):
    """A certificate every system trusts is still refused when the policy names its own CA."""
    gw.expect_backend_refused(HTTP_PORT, sni=None, host=ROUTE_HOST, plaintext=True, path="/ca-ref",
                              backend=simulated["ca-ref"], sibling=PUBLIC_SIBLING,
                              what="caCertificateRefs name a private CA; the backend's certificate chains to a "
                                   "system root only")


# -- a real public host (opt-in) --------------------------------------------------------
#: A Host the gateway has no route for: what the gateway answers it is its own answer.
UNROUTED_HOST = f"no-route.{ROUTE_HOST}"


def _authority(host: str, port: int) -> str:
    return host if port == 443 else f"{host}:{port}"


@pytest.fixture(scope="module")
def real_host(gw, mtls_namespace, mtls_target, mtls_pki, mtls_external_backend_host):
    """The real host behind two ExternalName Services; returns (host, port).

    The System route matches the real host's own name and sends "/" on to it: the gateway
    forwards the path and the Host header as they are (the route asks for no rewrite), so
    the real host gets a request for its own root under its own name, whatever its paths
    and virtual hosts are. A gateway that sets Host to the ExternalName sends the same.
    """
    host, port = mtls_external_backend_host
    ns = mtls_namespace
    policies = {"public": system_policy("real-host", ns, "real-host", hostname=host),
                "ca-ref": m.backend_tls_policy("real-host-ca-ref", ns, targets=[m.policy_target("real-host-ca-ref")],
                                               hostname=host, ca_refs=[m.object_ref("real-host-private-ca")])}
    mtls_target.apply(
        m.external_name_service("real-host", ns, host=host, port=port),
        m.external_name_service("real-host-ca-ref", ns, host=host, port=port),
        m.ca_configmap("real-host-private-ca", ns, mtls_pki.authority("private-ca-for-real-host").cert_pem),
        *policies.values(),
        m.http_route("real-host", ns, hostnames=[host], parents=[m.parent_ref(GATEWAY)],
                     rules=[m.rule(m.backend_ref("real-host", port), path="/")]),
        route("real-host-ca-ref", ns, ("/real-ca-ref/", ("real-host-ca-ref", port))))
    return host, port


def _shown(outcome) -> str:
    """An outcome with the start of its body: a gateway's own answers say who made them."""
    text = outcome.describe()
    body = getattr(outcome, "body", b"")
    return f"{text}, body {body[:80]!r}{'...' if len(body) > 80 else ''}" if body else text


def judge_answered_by_host(host: str):
    """The answer to GET / came from the real host: a 2xx or 3xx that no echo backend of ours sent.

    A gateway answers by itself with 4xx and 5xx (no route, backend refused or unreachable)
    and, without a RequestRedirect filter, never with a 2xx or 3xx; that it does not for
    this listener is checked separately (judge_answered_by_gateway).
    """

    def judge(outcome) -> str | None:
        if not isinstance(outcome, Response):
            return f"got {outcome.describe()}, no HTTP answer"
        if not 200 <= outcome.status <= 399:
            return (f"got {_shown(outcome)}: a gateway answers 4xx and 5xx by itself (no route, backend refused "
                    f"or unreachable), so this is no evidence that {host} answered")
        if reached_backend(outcome):
            return f"got {outcome.describe()} from one of the suite's echo backends, not from {host}"
        return None

    return judge


def judge_answered_by_gateway(outcome) -> str | None:
    """A request the gateway has no route for: its own answer must not pass for a backend's."""
    if isinstance(outcome, Response) and 200 <= outcome.status <= 399:
        return (f"the gateway answers {_shown(outcome)} for Host {UNROUTED_HOST}, for which it has no route "
                f"(expected 404): a 2xx or 3xx through the real host's route proves nothing")
    return None


@REAL_HOST
def test_real_external_host_with_system_roots(gw, real_host):
    """The guide's check against the real host: its own answer to GET /, not the gateway's.

    The guide expects a 200. What a public host answers at its root is up to it, so a
    redirect counts too; a 4xx or 5xx does not, as a gateway answers with those by itself.
    """
    host, port = real_host
    authority = _authority(host, port)
    timing = gw.settings.timing
    try:
        eventually(lambda: gw.request(HTTP_PORT, sni=None, host=authority, plaintext=True, path="/"),
                   judge_answered_by_host(host), timing=timing,
                   what=f"an answer from {host} through wellKnownCACertificates System", changed_at=gw.changed_at)
        # Once the real host's answers came through: what the gateway answers on its own.
        eventually(lambda: gw.request(HTTP_PORT, sni=None, host=UNROUTED_HOST, plaintext=True, path="/"),
                   judge_answered_by_gateway, timing=timing, what=f"the gateway's own answer to {UNROUTED_HOST}",
                   changed_at=gw.changed_at)
    except AssertionError as exc:
        raise AssertionError(
            f"listener port {HTTP_PORT} (plain HTTP, Host {authority}, path /): an HTTPRoute for {host} to an "
            f"ExternalName Service {host}:{port} with a BackendTLSPolicy wellKnownCACertificates System; "
            f"expected {host}'s own 2xx or 3xx through TLS verified against the system roots, {exc}\n"
            f"reproduce: {curl_command(gw.address(HTTP_PORT), sni=None, host=authority, plaintext=True)}"
        ) from None


@REAL_HOST
def test_real_external_host_is_refused_with_a_private_ca_ref(gw, real_host):
    """No sibling here: the only server is the real host, which reports nothing about the
    request; test_real_external_host_with_system_roots is its positive."""
    host, _ = real_host
    gw.expect_backend_refused(HTTP_PORT, sni=None, host=ROUTE_HOST, plaintext=True, path="/real-ca-ref/",
                              what=f"{host} behind a policy whose only CA is a private one")

