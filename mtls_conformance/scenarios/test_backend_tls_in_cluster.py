"""Backend TLS to an in-cluster service: BackendTLSPolicy with a CA reference and a hostname.

Guide: kgateway "Backend TLS", section "In-cluster service"
(shared/guides/kgateway-backend-tls.txt):

    Deploy an NGINX server in your cluster that is configured for TLS traffic. Then,
    instruct the gateway proxy to terminate TLS traffic at the gateway and originate a
    new TLS connection from the gateway proxy to the NGINX server. [...] an NGINX server
    with a self-signed TLS certificate. [...]

        validation:
          hostname: "example.com"
          caCertificateRefs:
          - group: ""
            kind: ConfigMap
            name: ca

    Send a request to the NGINX server and verify that you get back a 200 HTTP response.

The peer is Debian's nginx with a self-signed certificate for example.com, as in the
guide, and the echo backend (which reports the SNI it saw) with the same kind of
certificate. The Gateway API TLS documentation, "Upstream TLS", adds what the guide does
not check: the hostname is the SNI and must match the backend certificate, the CA
reference is the only trust, and (BackendTLSPolicy v1) subjectAltNames replace the
hostname for authentication. The specification leaves the error for a backend that fails
verification to the implementation; this suite expects a 5xx from the gateway and no
request at the backend.

Upstream: BackendTLSPolicy, BackendTLSPolicySANValidation (backendtlspolicy.go,
backendtlspolicy-san.go, backendtlspolicy-conflict-resolution.go "with and without a
section name").
"""

from __future__ import annotations

import datetime

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.client import Sibling
from mtls_conformance.expect import backend_saw_plaintext, backend_saw_tls, eventually
from mtls_conformance.target import ObjectRef

from mtls_conformance.fixtures.guide import BACKEND_HOSTNAME, BACKEND_OTHER_HOSTNAME, BACKEND_SPIFFE_ID, HOSTNAME

pytestmark = pytest.mark.features("BackendTLSPolicy")

GATEWAY = "http"  # the guide's Gateway: an HTTP listener on 8080
HTTP_PORT, HTTPS_PORT = 8080, 443
REENCRYPT_HOST = f"www.{HOSTNAME}"


def route(name, namespace, *paths_to_services, hostnames=(HOSTNAME,), section=None):
    """An HTTPRoute sending each Exact path to ``(service, port)``."""
    return m.http_route(name, namespace, hostnames=hostnames,
                        parents=[m.parent_ref(GATEWAY, section_name=section)],
                        rules=[m.rule(m.backend_ref(svc, port), path=path, path_type="Exact")
                               for path, (svc, port) in paths_to_services])


def policy(name, namespace, service, *, hostname, ca, section=None, sans=()):
    return m.backend_tls_policy(name, namespace, targets=[m.policy_target(service, section_name=section)],
                                hostname=hostname, ca_refs=[m.object_ref(ca)], subject_alt_names=sans)


def wait_accepted(target, gw, *policies):
    for p in policies:
        for type_ in ("Accepted", "ResolvedRefs"):
            target.wait_for_policy_condition(ObjectRef.of(p), gw.gateway, type_, "True", reason=type_,
                                             timeout=gw.settings.timing.condition_timeout)


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, deploy_gateway, server_credential):
    gateway = m.gateway(GATEWAY, mtls_namespace, gateway_class=mtls_gateway_class,
                        listeners=[m.http_listener("http", HTTP_PORT),
                                   m.https_listener("https", HTTPS_PORT, certificate="https-cert")])
    return deploy_gateway(gateway, m.tls_secret("https-cert", mtls_namespace, cert_pem=server_credential.chain_pem,
                                                key_pem=server_credential.key_pem))


# -- the guide: a self-signed peer, nginx and echo ----------------------------------------
class Peer:
    """One TLS peer of the guide's kind and its three Services: trusted, wrong hostname, wrong CA."""

    def __init__(self, kind, backends, policies):
        self.kind, self.backends, self.policies = kind, backends, policies

    def path(self, case):
        return f"/{self.kind}" if case == "ok" else f"/{self.kind}/{case}"


#: The guide's peer, and the echo backend as a second one.
PEERS = ["nginx", "echo"]


@pytest.fixture(scope="module")
def peers(gw, mtls_namespace, mtls_pki, mtls_target, deploy_tls_backend):
    """Both peers at once, not a module fixture with params: pytest would make each
    param's only when it gets there, and its window would start then (issue 21)."""
    return {kind: _peer(kind, mtls_namespace, mtls_pki, mtls_target, deploy_tls_backend) for kind in PEERS}


@pytest.fixture(params=PEERS)
def peer(request, peers):
    return peers[request.param]


def _peer(kind, ns, mtls_pki, mtls_target, deploy_tls_backend):
    # The guide's names for nginx; the echo peer's are derived from its kind.
    ca_name, policy_name = ("ca", "nginx-tls-policy") if kind == "nginx" else (f"{kind}-ca", f"{kind}-tls-policy")
    cert = mtls_pki.self_signed(f"{kind}-self-signed", HOSTNAME)
    impostor = mtls_pki.self_signed(f"{kind}-impostor", HOSTNAME)  # same name, another key
    backends = {"ok": deploy_tls_backend(kind, ns, kind, credential=cert),
                "wrong-hostname": deploy_tls_backend(kind, ns, f"{kind}-wrong-hostname", credential=cert),
                "wrong-ca": deploy_tls_backend(kind, ns, f"{kind}-wrong-ca", credential=impostor)}
    policies = {"ok": policy(policy_name, ns, kind, hostname=HOSTNAME, ca=ca_name),
                "wrong-hostname": policy(f"{kind}-wrong-hostname", ns, f"{kind}-wrong-hostname",
                                         hostname=f"mismatch.{HOSTNAME}", ca=ca_name),
                "wrong-ca": policy(f"{kind}-wrong-ca", ns, f"{kind}-wrong-ca", hostname=HOSTNAME, ca=ca_name)}
    p = Peer(kind, backends, policies)
    mtls_target.apply(m.ca_configmap(ca_name, ns, cert.cert_pem), *policies.values(),
                      route(f"{kind}-route", ns, *[(p.path(c), (b.service, b.port)) for c, b in backends.items()]))
    return p


def test_tls_to_the_backend_with_ca_ref_and_hostname(gw, peer, mtls_target):
    """The guide's check, plus what it cannot see: TLS was used and the SNI was the hostname."""
    wait_accepted(mtls_target, gw, peer.policies["ok"])
    response = gw.expect_ok(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path=peer.path("ok"),
                            service=peer.kind, check=backend_saw_tls(sni=HOSTNAME),
                            what=f"HTTP to the Gateway, TLS from it to {peer.kind} (CA ref + hostname)")
    # A backend's log may trail its answer (a pod's log passes through the node): wait for it.
    eventually(lambda: peer.backends["ok"].requests, lambda seen: None if seen else "it logged no request",
               timing=gw.settings.timing, consecutive=1,
               what=f"{peer.kind} answered {response.describe()}; its request log shows the request")


def test_hostname_not_in_the_backend_certificate_is_refused(gw, peer, mtls_target):
    wait_accepted(mtls_target, gw, peer.policies["wrong-hostname"])  # valid policy, unverifiable peer
    gw.expect_backend_refused(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path=peer.path("wrong-hostname"),
                              backend=peer.backends["wrong-hostname"],
                              sibling=Sibling(service=peer.kind, backend_sni=HOSTNAME, path=peer.path("ok")),
                              what=f"policy hostname mismatch.{HOSTNAME}, {peer.kind} certificate for {HOSTNAME}")


def test_certificate_from_another_ca_is_refused(gw, peer, mtls_target):
    wait_accepted(mtls_target, gw, peer.policies["wrong-ca"])
    gw.expect_backend_refused(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path=peer.path("wrong-ca"),
                              backend=peer.backends["wrong-ca"],
                              sibling=Sibling(service=peer.kind, backend_sni=HOSTNAME, path=peer.path("ok")),
                              what=f"{peer.kind} presents a certificate for {HOSTNAME} that the CA ref does not sign")


def _expiry(mtls_namespace, mtls_pki, mtls_target, deploy_tls_backend):
    ns = mtls_namespace
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = mtls_pki.self_signed("expired-backend", HOSTNAME, not_before=now - datetime.timedelta(days=30),
                                   not_after=now - datetime.timedelta(days=1))
    fresh = mtls_pki.self_signed("fresh-backend", HOSTNAME)
    backends = {name: deploy_tls_backend("echo", ns, name, credential=cred)
                for name, cred in (("expired", expired), ("fresh", fresh))}
    policies = [policy(f"{name}-tls", ns, name, hostname=HOSTNAME, ca=f"{name}-ca") for name in backends]
    mtls_target.apply(m.ca_configmap("expired-ca", ns, expired.cert_pem), m.ca_configmap("fresh-ca", ns, fresh.cert_pem),
                      *policies, route("expiry", ns, *[(f"/{n}", (b.service, b.port)) for n, b in backends.items()]))
    return backends


@pytest.mark.configure_ahead(setup=_expiry)
def test_expired_backend_certificate_is_refused(gw, mtls_configured):
    backends = mtls_configured
    gw.expect_backend_refused(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/expired",
                              backend=backends["expired"], what="the backend certificate expired yesterday",
                              sibling=Sibling(service="fresh", backend_sni=HOSTNAME, path="/fresh"))


def _reencrypt(mtls_namespace, mtls_target, backend_ca, backend_credential, deploy_tls_backend):
    ns = mtls_namespace
    backend = deploy_tls_backend("echo", ns, "reencrypt", credential=backend_credential)
    tls_policy = policy("reencrypt", ns, "reencrypt", hostname=BACKEND_HOSTNAME, ca="tls-checks-ca-certificate")
    mtls_target.apply(m.ca_configmap("tls-checks-ca-certificate", ns, backend_ca.cert_pem), tls_policy,
                      route("reencrypt", ns, ("/", (backend.service, backend.port)), hostnames=[REENCRYPT_HOST],
                            section="https"))
    return tls_policy


@pytest.mark.configure_ahead(setup=_reencrypt)
def test_https_listener_reencrypts_with_the_policy_hostname_as_sni(gw, mtls_target, mtls_configured):
    """Terminate and re-encrypt: the client's SNI and Host are the listener's, the
    backend's SNI is the policy's hostname (upstream: "Re-encrypt HTTPS request")."""
    wait_accepted(mtls_target, gw, mtls_configured)
    gw.expect_ok(HTTPS_PORT, sni=REENCRYPT_HOST, service="reencrypt", check=backend_saw_tls(sni=BACKEND_HOSTNAME),
                 what=f"HTTPS to the Gateway as {REENCRYPT_HOST}, re-encrypted to the backend")


# -- subjectAltNames --------------------------------------------------------------------
SAN_CASES = {
    # id: (hostname, subjectAltNames, accepted)
    "dns": (BACKEND_HOSTNAME, [m.san_hostname(BACKEND_HOSTNAME)], True),
    "dns-mismatch": (BACKEND_HOSTNAME, [m.san_hostname("dce.example.com")], False),
    "uri": (BACKEND_HOSTNAME, [m.san_uri(BACKEND_SPIFFE_ID)], True),
    "uri-mismatch": (BACKEND_HOSTNAME, [m.san_uri("spiffe://def.example.com/test-identity")], False),
    "multiple": (BACKEND_HOSTNAME, [m.san_uri(BACKEND_SPIFFE_ID), m.san_hostname(BACKEND_HOSTNAME)], True),
    "multiple-mismatch": (BACKEND_HOSTNAME, [m.san_uri("spiffe://def.example.com/test-identity"),
                                             m.san_hostname("def.example.com")], False),
    # With subjectAltNames the hostname is only the SNI: it "MUST NOT be used for authentication".
    "hostname-not-in-certificate": ("backend.internal.example", [m.san_uri(BACKEND_SPIFFE_ID)], True),
}


@pytest.fixture(scope="module")
def san_backends(gw, mtls_namespace, mtls_target, backend_ca, backend_credential, deploy_tls_backend):
    ns = mtls_namespace
    backends, policies = {}, {}
    for case, (hostname, sans, _) in SAN_CASES.items():
        backends[case] = deploy_tls_backend("echo", ns, f"san-{case}", credential=backend_credential)
        policies[case] = policy(f"san-{case}", ns, f"san-{case}", hostname=hostname,
                                ca="tls-checks-ca-certificate", sans=sans)
    mtls_target.apply(m.ca_configmap("tls-checks-ca-certificate", ns, backend_ca.cert_pem), *policies.values(),
                      route("san", ns, *[(f"/san/{c}", (b.service, b.port)) for c, b in backends.items()]))
    return backends, policies


@pytest.mark.features("BackendTLSPolicySANValidation")
@pytest.mark.parametrize("case", [c for c, (_, _, ok) in SAN_CASES.items() if ok])
def test_subject_alt_name_match_is_accepted(gw, case, san_backends, mtls_target):
    backends, policies = san_backends
    hostname, sans, _ = SAN_CASES[case]
    wait_accepted(mtls_target, gw, policies[case])
    gw.expect_ok(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path=f"/san/{case}",
                 check=backend_saw_tls(sni=hostname),
                 what=f"subjectAltNames {[s.get('hostname') or s.get('uri') for s in sans]}, hostname {hostname}")


@pytest.mark.features("BackendTLSPolicySANValidation")
@pytest.mark.parametrize("case", [c for c, (_, _, ok) in SAN_CASES.items() if not ok])
def test_subject_alt_name_mismatch_is_refused(gw, case, san_backends, mtls_target):
    backends, policies = san_backends
    hostname, sans, _ = SAN_CASES[case]
    wait_accepted(mtls_target, gw, policies[case])
    gw.expect_backend_refused(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path=f"/san/{case}",
                              backend=backends[case],
                              sibling=Sibling(service="san-dns", backend_sni=SAN_CASES["dns"][0], path="/san/dns"),
                              what=f"subjectAltNames {[s.get('hostname') or s.get('uri') for s in sans]} are not "
                                   f"in the certificate (its hostname {hostname} is, but must not authenticate)")


# -- sectionName: one port of a multi-port Service --------------------------------------
@pytest.fixture(scope="module")
def multi_port(gw, mtls_namespace, mtls_target, mtls_backend, backend_ca, backend_credential):
    from mtls_conformance.fixtures.backends import BackendPort
    from mtls_conformance.fixtures.echo import ServerTLS

    ns = mtls_namespace
    tls = ServerTLS(cert_chain_pem=backend_credential.chain_pem, key_pem=backend_credential.key_pem)
    multi = mtls_backend.service(ns, "multi", [BackendPort("https", 443, tls), BackendPort("http", 8080)])
    mixed = mtls_backend.service(ns, "mixed", [BackendPort("https-1", 443, tls), BackendPort("https-2", 8443, tls)])
    policies = {
        "multi": policy("multi-https", ns, "multi", section="https", hostname=BACKEND_HOSTNAME,
                        ca="tls-checks-ca-certificate"),
        # A policy for one port and one for the whole Service coexist; the specific one governs its port.
        "mixed-1": policy("mixed-https-1", ns, "mixed", section="https-1", hostname=BACKEND_OTHER_HOSTNAME,
                          ca="tls-checks-ca-certificate"),
        "mixed": policy("mixed-whole-service", ns, "mixed", hostname=BACKEND_HOSTNAME, ca="tls-checks-ca-certificate"),
    }
    mtls_target.apply(
        m.ca_configmap("tls-checks-ca-certificate", ns, backend_ca.cert_pem), *policies.values(),
        route("sections", ns, ("/multi/https", ("multi", 443)), ("/multi/http", ("multi", 8080)),
              ("/mixed/https-1", ("mixed", 443)), ("/mixed/https-2", ("mixed", 8443))))
    return {**multi, **{f"mixed-{k}": v for k, v in mixed.items()}}, policies


def test_policy_with_section_name_applies_to_its_port_only(gw, multi_port, mtls_target):
    backends, policies = multi_port
    wait_accepted(mtls_target, gw, policies["multi"])
    gw.expect_ok(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/multi/https",
                 check=backend_saw_tls(sni=BACKEND_HOSTNAME), what="port https, named by the policy's sectionName")
    gw.expect_ok(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/multi/http", check=backend_saw_plaintext,
                 what="port http of the same Service, which no policy names")


def test_section_policy_and_whole_service_policy_coexist(gw, multi_port, mtls_target):
    backends, policies = multi_port
    wait_accepted(mtls_target, gw, policies["mixed-1"], policies["mixed"])
    gw.expect_ok(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/mixed/https-1",
                 check=backend_saw_tls(sni=BACKEND_OTHER_HOSTNAME),
                 what="port https-1: the sectionName policy governs it")
    gw.expect_ok(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path="/mixed/https-2",
                 check=backend_saw_tls(sni=BACKEND_HOSTNAME), what="port https-2: the whole-Service policy")
