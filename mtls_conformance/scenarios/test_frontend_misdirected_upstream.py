"""Misdirected requests as upstream checks them: no client certificates, wildcard listeners.

Guide: Gateway API ``Listener.hostname`` documentation and GEP-91 (quoted in
test_frontend_misdirected.py): if the Host of a request matches another listener on the
same port exactly or more specifically than the listener the SNI selected, the
implementation SHOULD answer 421 Misdirected Request; when neither that listener nor
another one matches the Host, 404.

Upstream: HTTPRouteHTTPSListenerDetectMisdirectedRequests (conformance/tests on main after
v1.6.1, manifest httproute-https-listener-detect-misdirected-requests.yaml on the base
Gateway ``same-namespace-with-https-listener``): four HTTPS listeners on 443 (no hostname,
``second-example.org``, ``*.wildcard.org``, ``fourth-example.wildcard.org``), one route
per listener (sectionName), and the same 15 SNI/Host pairs over HTTP/2, with the expected
status and backend. No listener here validates client certificates: a gateway that
answers 421 only where it verifies clients (nginx's own rule for ``ssl_verify_client``)
passes the mTLS cases of test_frontend_misdirected.py and fails these. Each pair also
runs over HTTP/1.1, where a Host header can be just as misdirected.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.expect import eventually, reached_backend
from mtls_conformance.probe import Response
from mtls_conformance.target import ObjectRef

pytestmark = pytest.mark.features("Gateway", "HTTPRoute", "GatewayHTTPSListenerDetectMisdirectedRequests")

GATEWAY = "same-namespace-with-https-listener"
PORT = 443
PATH = "/detect-misdirected-requests"
V1, V2, V3 = "infra-backend-v1", "infra-backend-v2", "infra-backend-v3"

#: Upstream's cases, in its order: (SNI, Host, status, backend that must answer a 200).
CASES = [
    ("example.org", "example.org", 200, V1),
    ("example.org", "second-example.org", 421, None),
    ("example.org", "unknown-example.org", 404, None),
    ("second-example.org", "second-example.org", 200, V2),
    ("second-example.org", "example.org", 421, None),
    ("second-example.org", "unknown-example.org", 421, None),
    ("third-example.wildcard.org", "third-example.wildcard.org", 200, V3),
    ("third-example.wildcard.org", "fith-example.wildcard.org", 200, V3),
    ("third-example.wildcard.org", "fourth-example.wildcard.org", 421, None),
    ("third-example.wildcard.org", "second-example.org", 421, None),
    ("third-example.wildcard.org", "unknown-example.org", 421, None),
    ("fourth-example.wildcard.org", "fourth-example.wildcard.org", 200, V1),
    ("fourth-example.wildcard.org", "fith-example.wildcard.org", 421, None),
    ("unknown-example.org", "example.org", 200, V1),
    ("unknown-example.org", "unknown-example.org", 404, None),
]
PROTOCOLS = [pytest.param(True, id="h2"), pytest.param(False, id="http1.1")]


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_backend, mtls_target, deploy_gateway, server_authority):
    ns = mtls_namespace
    # Upstream's tls-validity-checks-certificate covers "*", "*.org" and "*.wildcard.org";
    # the probe checks the name against the SNI, so this one names every SNI used.
    cert = server_authority.issue_server("example.org", "second-example.org", "unknown-example.org",
                                         "*.wildcard.org", name="tls-validity-checks-certificate")
    for service in (V1, V2, V3):
        mtls_backend(ns, service, port=8080)
    listeners = [m.https_listener("https", PORT, certificate="tls-validity-checks-certificate"),
                 m.https_listener("https-with-hostname", PORT, hostname="second-example.org",
                                  certificate="tls-validity-checks-certificate"),
                 m.https_listener("https-with-wildcard-hostname", PORT, hostname="*.wildcard.org",
                                  certificate="tls-validity-checks-certificate"),
                 m.https_listener("https-with-hostname-matching-wildcard", PORT,
                                  hostname="fourth-example.wildcard.org",
                                  certificate="tls-validity-checks-certificate")]
    gateway = m.gateway(GATEWAY, ns, gateway_class=mtls_gateway_class, listeners=listeners)

    def route(n, section, service, hostnames=()):
        return m.http_route(f"https-listener-detect-misdirected-requests-test-{n}", ns, hostnames=hostnames,
                            parents=[m.parent_ref(GATEWAY, section_name=section)],
                            rules=[m.rule(m.backend_ref(service, 8080), path=PATH)])

    routes = [route(1, "https", V1, ["example.org"]), route(2, "https-with-hostname", V2),
              route(3, "https-with-wildcard-hostname", V3), route(4, "https-with-hostname-matching-wildcard", V1)]
    client = deploy_gateway(gateway, m.tls_secret("tls-validity-checks-certificate", ns, cert_pem=cert.chain_pem,
                                                  key_pem=cert.key_pem), routes=routes)
    for r in routes:  # as upstream: HTTPRouteMustHaveResolvedRefsConditionsTrue
        mtls_target.wait_for_route_condition(ObjectRef.of(r), client.gateway, "ResolvedRefs",
                                             timeout=client.settings.timing.condition_timeout)
    return client


def judge_gateway_status(status: int):
    def judge(outcome) -> str | None:
        if not isinstance(outcome, Response):
            return f"got {outcome.describe()}"
        if reached_backend(outcome):
            return f"got {outcome.describe()} from backend {(outcome.json or {}).get('service')!r}"
        if outcome.status != status:
            return f"got {outcome.describe()}"
        return None
    return judge


SNIS = list(dict.fromkeys(sni for sni, _, _, _ in CASES))


@pytest.mark.parametrize("http2", PROTOCOLS)
@pytest.mark.parametrize("sni", SNIS)
def test_hosts_on_a_connection_for_sni(gw, sni, http2):
    """Upstream's cases for one SNI, in its order: the 200s first (the Host of the SNI's own
    listener), so that a 421 or 404 is judged on a listener shown to serve."""
    protocol = "h2" if http2 else "HTTP/1.1"
    for case_sni, host, status, backend in CASES:
        if case_sni != sni:
            continue
        if status == 200:
            gw.expect_ok(PORT, sni=sni, host=host, path=PATH, http2=http2, service=backend,
                         what=f"SNI {sni}, Host {host} over {protocol}: the SNI's listener serves this Host")
            continue
        why = {421: "Host belongs to another listener of the port at least as specifically as the one the "
                    "SNI selected: 421 Misdirected Request",
               404: "neither the SNI's listener nor another one matches Host: 404"}[status]
        try:
            eventually(lambda: gw.request(PORT, sni=sni, host=host, path=PATH, http2=http2),
                       judge_gateway_status(status), timing=gw.settings.timing,
                       what=f"SNI {sni}, Host {host}: {status}", changed_at=gw.changed_at)
        except AssertionError as exc:
            raise AssertionError(f"listener port {PORT} (SNI {sni}, Host {host}, {protocol}, no client "
                                 f"certificate, no client validation on the port): {why}; {exc}") from None
