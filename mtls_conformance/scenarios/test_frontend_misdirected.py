"""Frontend mTLS: a request for another listener's hostname is misdirected (421), also over HTTP/2.

Guide: Gateway API ``Listener.hostname`` documentation (v1.5, standard) and GEP-91,
"Connection coalescing security issue":

    [...] once the connection is established (this applies to both HTTP and TLS
    traffic) it can be reused for requests to other hostnames [...] If the Host header
    [...] matches another Listener on the same port exactly or more specifically than
    the one selected by SNI, implementations SHOULD return a 421 Misdirected Request.

RFC 9113 9.1.1 lets an HTTP/2 client reuse a connection for every hostname its server
certificate covers. The listener certificate here covers ``*.example.com``, so a client
that passed the checks of ``open.example.com`` could send ``pinned.example.com``
requests over the same connection and skip that listener's stricter validation. Each
stream must be judged against the listener the handshake selected.

Upstream: HTTPRouteHTTPSListenerDetectMisdirectedRequests (SNI x Host over h2: 200/421).
The stricter validation here is certificate pinning (listener ``tls.options``, keys from
the implementation profile), because frontend CA validation is per port, not per listener.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.expect import eventually, judge_ok
from mtls_conformance.probe import Response

from mtls_conformance.fixtures.guide import HOSTNAME

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation",
                                  "GatewayHTTPSListenerDetectMisdirectedRequests")

GATEWAY = "mtls-misdirected"
PLAIN_PORT, PINNED_PORT = 443, 8443
A, B = f"a.{HOSTNAME}", f"b.{HOSTNAME}"
OPEN, PINNED = f"open.{HOSTNAME}", f"pinned.{HOSTNAME}"
ALICE = f"alice.{HOSTNAME}"
PROTOCOLS = [pytest.param(False, id="http1.1"), pytest.param(True, id="h2")]


@pytest.fixture(scope="module")
def alice(client_ca):
    return client_ca.issue_client("misdirected-alice", common_name=ALICE, dns_names=[ALICE])


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_backend, mtls_profile, deploy_gateway,
       guide_tls_objects):
    ns = mtls_namespace
    backend = mtls_backend(ns, "httpbin", port=8000)
    san_key = mtls_profile.pinning.subject_alt_names if mtls_profile.pinning else None
    listeners = [m.https_listener("a", PLAIN_PORT, hostname=A, certificate="https-cert"),
                 m.https_listener("b", PLAIN_PORT, hostname=B, certificate="https-cert")]
    if san_key and "FrontendClientCertificatePinning" in mtls_profile.supported_features:
        listeners += [m.https_listener("open", PINNED_PORT, hostname=OPEN, certificate="https-cert"),
                      m.https_listener("pinned", PINNED_PORT, hostname=PINNED, certificate="https-cert",
                                       options={san_key: ALICE})]
    gateway = m.gateway(
        GATEWAY, ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(default=m.validation(m.object_ref("ca-cert"), mode="AllowValidOnly")),
        listeners=listeners)
    route = m.http_route("httpbin-https", ns, hostnames=[A, B, OPEN, PINNED],
                         parents=[m.parent_ref(GATEWAY)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    return deploy_gateway(gateway, *guide_tls_objects, routes=[route])


def judge_status(status: int):
    def judge(outcome) -> str | None:
        if isinstance(outcome, Response) and outcome.status == status:
            return None
        return f"got {outcome.describe()}"
    return judge


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_host_of_another_listener_is_misdirected(gw, http2, valid_client):
    gw.expect_ok(PLAIN_PORT, sni=A, host=A, cert=valid_client, http2=http2,
                 what="SNI and Host name the same listener")
    try:
        eventually(lambda: gw.request(PLAIN_PORT, sni=A, host=B, cert=valid_client, http2=http2),
                   judge_status(421), timing=gw.settings.timing,
                   what=f"SNI {A}, Host {B}: 421 Misdirected Request", changed_at=gw.changed_at)
    except AssertionError as exc:
        raise AssertionError(
            f"listener port {PLAIN_PORT} (SNI {A}, Host {B}, {'h2' if http2 else 'HTTP/1.1'}): Host belongs "
            f"to listener 'b', the handshake chose listener 'a'; expected 421 Misdirected Request, {exc}"
        ) from None


def _judge_coalesced(expected: list[tuple[str, str]]):
    """``expected``: per request, ("ok", why) or ("421", why)."""
    def judge(outcomes) -> str | None:
        for outcome, (want, why) in zip(outcomes, expected):
            problem = judge_ok(outcome) if want == "ok" else judge_status(421)(outcome)
            if problem:
                return f"{why}: {problem}"
        return None
    return judge


@pytest.mark.features("FrontendClientCertificatePinning")
def test_coalesced_connection_cannot_reach_a_stricter_listener(gw, valid_client, alice):
    timing = gw.settings.timing
    gw.expect_pair(PINNED_PORT, sni=PINNED, accepted=alice, refused=valid_client, http2=True,
                   what=f"the pinned listener refuses a SAN it does not pin (only {ALICE} is)")
    try:
        eventually(
            lambda: gw.request_coalesced(PINNED_PORT, sni=OPEN, authorities=[OPEN, PINNED], cert=valid_client),
            _judge_coalesced([("ok", f"stream 1, :authority {OPEN}"),
                              ("421", f"stream 2, :authority {PINNED} on the connection made for {OPEN}")]),
            timing=timing, what="HTTP/2 connection coalescing", changed_at=gw.changed_at)
    except AssertionError as exc:
        raise AssertionError(
            f"listener port {PINNED_PORT}: one HTTP/2 connection (SNI {OPEN}, client certificate "
            f"{valid_client.name!r}, whose SANs {PINNED} does not pin) must not serve {PINNED}: {exc}"
        ) from None
