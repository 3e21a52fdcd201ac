"""Frontend mTLS: the guides' steps that no other module checks.

Guides (shared/guides/):

- kgateway-frontend-mtls.txt: the per-port example is reached by editing the Gateway of
  the default-only example in place, adding ``perPort: [{port: 8444, tls: {validation:
  {mode: AllowInsecureFallback}}}]``, then curling both ports (8443 still refuses a client
  without a certificate, 8444 lets it in); pinning options are changed on a listener that
  is already serving; every curl check speaks HTTP/2 (``ALPN: server accepted h2``).
- nginx-gateway-fabric-frontend-mtls.txt: CA bundles in Secrets (``ca.crt``) for the
  default and for a perPort validation; the listener reports Accepted, Programmed and
  ResolvedRefs True and Conflicted False, the HTTPRoute Accepted and ResolvedRefs True;
  a listener without a hostname handles clients that send no SNI ("Some frontend load
  balancers strip out SNI information"), the Host header then picks the route; the SNI
  and the Host need not be the same as long as both match the listener (no 421).

Each status check here comes with the traffic the status promises (docs/status-and-traffic.md).
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.target import ObjectRef

from mtls_conformance.fixtures.guide import HOSTNAME, wait_ready

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation")

PROTOCOLS = [pytest.param(False, id="http1.1"), pytest.param(True, id="h2")]
ALICE, BOB = f"alice.{HOSTNAME}", f"bob.{HOSTNAME}"
CAFE = f"cafe.{HOSTNAME}"


def protocol(http2: bool) -> str:
    return "h2" if http2 else "HTTP/1.1"


def timeout_of(gw) -> float:
    return gw.settings.timing.condition_timeout


# -- kgateway: default-only, changed in place to a perPort AllowInsecureFallback ----------------
def kgateway_gateway(name, ns, gateway_class, *, fallback_on_8444: bool):
    per_port = {8444: m.validation(m.object_ref("ca-cert"), mode="AllowInsecureFallback")} if fallback_on_8444 else None
    return m.gateway(name, ns, gateway_class=gateway_class,
                     frontend=m.frontend_tls(default=m.validation(m.object_ref("ca-cert"), mode="AllowValidOnly"),
                                             per_port=per_port),
                     listeners=[m.https_listener("https-8443", 8443, certificate="https-cert"),
                                m.https_listener("https-8444", 8444, certificate="https-cert")])


def _changed_in_place(mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway, guide_tls_objects,
                      valid_client):
    """The default-only Gateway, checked, then changed in place (ahead with the module: configure_ahead)."""
    ns, name = mtls_namespace, "mtls-in-place"
    backend = mtls_backend(ns, "in-place-httpbin", port=8000)
    route = m.http_route("in-place-https", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(name)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    gw = deploy_gateway(kgateway_gateway(name, ns, mtls_gateway_class, fallback_on_8444=False), *guide_tls_objects,
                        routes=[route], ready=False)
    yield  # configured; the checks and the change run once every module is configured
    wait_ready(gw, [route])
    for port in (8443, 8444):
        gw.expect_pair(port, sni=HOSTNAME, accepted=valid_client, refused=None, http2=True,
                    what=f"the default-only AllowValidOnly Gateway, port {port}, before the change")

    deploy_gateway(kgateway_gateway(name, ns, mtls_gateway_class, fallback_on_8444=True), ready=False)
    return gw, backend


@pytest.mark.features("GatewayFrontendClientCertificateValidationInsecureFallback")
@pytest.mark.configure_ahead(setup=_changed_in_place)
def test_default_only_changed_in_place_to_a_per_port_fallback(mtls_target, valid_client, untrusted_client,
                                                              mtls_configured):
    gw, backend = mtls_configured
    wait_ready(gw)
    mtls_target.wait_for_condition(gw.gateway, "InsecureFrontendValidationMode", "True", reason="ConfigurationChanged",
                                   timeout=timeout_of(gw))
    for client in (None, untrusted_client, valid_client):
        gw.expect_ok(8444, sni=HOSTNAME, cert=client, http2=True, service=backend.service,
                     what="port 8444 after the in-place change to perPort AllowInsecureFallback")
    gw.expect_pair(8443, sni=HOSTNAME, accepted=valid_client, refused=(None, untrusted_client), http2=True,
                what="port 8443 keeps the default AllowValidOnly after 8444 got a perPort AllowInsecureFallback")


# -- one Gateway for the guides' checks over HTTP/1.1 and HTTP/2 ------------------------------
VALID_PORT, FALLBACK_PORT, PINNED_PORT = 8443, 8444, 8445


@pytest.fixture(scope="module")
def alice(client_ca):
    return client_ca.issue_client("guide-steps-alice", common_name=ALICE, dns_names=[ALICE])


@pytest.fixture(scope="module")
def bob(client_ca):
    return client_ca.issue_client("guide-steps-bob", common_name=BOB, dns_names=[BOB])


def san_key(profile) -> str | None:
    if "FrontendClientCertificatePinning" not in profile.supported_features or profile.pinning is None:
        return None
    return profile.pinning.subject_alt_names


def require_san_key(profile) -> str:
    key = san_key(profile)
    if key is None:
        pytest.skip(f"the implementation profile {profile.key!r} names no listener option for subject-alt-name "
                    f"pinning (Profile.pinning)")
    return key


def steps_gateway(ns, gateway_class, *, pin: str | None, key: str | None):
    listeners = [m.https_listener("valid-only", VALID_PORT, certificate="https-cert"),
                 m.https_listener("fallback", FALLBACK_PORT, certificate="https-cert")]
    if key is not None:
        listeners.append(m.https_listener("pinned", PINNED_PORT, certificate="https-cert", options={key: pin}))
    return m.gateway("mtls-guide-steps", ns, gateway_class=gateway_class, listeners=listeners,
                     frontend=m.frontend_tls(
                         default=m.validation(m.object_ref("ca-cert"), mode="AllowValidOnly"),
                         per_port={FALLBACK_PORT: m.validation(m.object_ref("ca-cert"), mode="AllowInsecureFallback")}))


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_backend, mtls_profile, deploy_gateway, guide_tls_objects):
    ns = mtls_namespace
    backend = mtls_backend(ns, "guide-steps-httpbin", port=8000)
    route = m.http_route("guide-steps", ns, hostnames=[HOSTNAME], parents=[m.parent_ref("mtls-guide-steps")],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    return deploy_gateway(steps_gateway(ns, mtls_gateway_class, pin=ALICE, key=san_key(mtls_profile)),
                          *guide_tls_objects, routes=[route])


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_allow_valid_only(gw, http2, valid_client, untrusted_client, expired_client):
    gw.expect_pair(VALID_PORT, sni=HOSTNAME, accepted=valid_client, refused=(None, untrusted_client, expired_client),
                http2=http2, what=f"AllowValidOnly over {protocol(http2)}")


@pytest.mark.features("GatewayFrontendClientCertificateValidationInsecureFallback")
@pytest.mark.parametrize("http2", PROTOCOLS)
def test_insecure_fallback(gw, http2, valid_client, untrusted_client, expired_client):
    for client in (valid_client, None, untrusted_client, expired_client):
        gw.expect_ok(FALLBACK_PORT, sni=HOSTNAME, cert=client, http2=http2,
                     what=f"AllowInsecureFallback over {protocol(http2)} lets every client in")


@pytest.mark.features("FrontendClientCertificatePinning")
@pytest.mark.parametrize("http2", PROTOCOLS)
def test_pinning(gw, http2, mtls_profile, alice, bob):
    require_san_key(mtls_profile)
    gw.expect_pair(PINNED_PORT, sni=HOSTNAME, accepted=alice, refused=bob, http2=http2,
                what=f"a listener pinned to SAN {ALICE}, over {protocol(http2)}")


def _pin_changed(mtls_namespace, mtls_gateway_class, mtls_backend, mtls_profile, deploy_gateway, guide_tls_objects,
                 alice, bob):
    """A pinned listener of its own, checked, then its pin changed (ahead with the module: configure_ahead)."""
    key = require_san_key(mtls_profile)
    ns = mtls_namespace
    backend = mtls_backend(ns, "live-pin-httpbin", port=8000)
    gateway = m.gateway("mtls-live-pin", ns, gateway_class=mtls_gateway_class,
                        frontend=m.frontend_tls(default=m.validation(m.object_ref("ca-cert"), mode="AllowValidOnly")),
                        listeners=[m.https_listener("pinned", PINNED_PORT, certificate="https-cert",
                                                    options={key: ALICE})])
    route = m.http_route("live-pin", ns, hostnames=[HOSTNAME], parents=[m.parent_ref("mtls-live-pin")],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    gw = deploy_gateway(gateway, *guide_tls_objects, routes=[route], ready=False)
    yield  # configured; the checks and the change run once every module is configured
    wait_ready(gw, [route])
    gw.expect_pair(PINNED_PORT, sni=HOSTNAME, accepted=alice, refused=bob,
                what=f"the listener pinned to {ALICE}, before the change")
    gateway["spec"]["listeners"][0]["tls"]["options"] = {key: BOB}
    deploy_gateway(gateway, ready=False)
    return gw


@pytest.mark.features("FrontendClientCertificatePinning")
@pytest.mark.configure_ahead(setup=_pin_changed)
def test_pin_changed_on_a_live_listener(mtls_target, alice, bob, mtls_configured):
    gw = mtls_configured
    wait_ready(gw)
    mtls_target.wait_for_condition(gw.gateway, "Programmed", listener="pinned", timeout=timeout_of(gw))
    gw.expect_pair(PINNED_PORT, sni=HOSTNAME, accepted=bob, refused=alice,
                what=f"the pin of the live listener changed from {ALICE} to {BOB}: {ALICE} must now be refused")


# -- NGINX Gateway Fabric: CA bundles in Secrets, conditions, no SNI, SNI != Host ------------
DEFAULT_PORT, PER_PORT, NO_SNI_PORT = 8443, 443, 9443


@pytest.fixture(scope="module")
def per_port_ca(mtls_pki):
    return mtls_pki.authority("guide-steps-per-port-ca")


@pytest.fixture(scope="module")
def per_port_client(per_port_ca):
    return per_port_ca.issue_client("guide-steps-per-port-client", common_name=CAFE, dns_names=[CAFE])


@pytest.fixture(scope="module")
def ngf(mtls_namespace, mtls_gateway_class, mtls_backend, mtls_profile, deploy_gateway, server_credential,
        client_ca, per_port_ca):
    """The NGF guide's Gateway: listeners on 443 (perPort) and 8443 (default) for *.example.com,
    CA bundles in Secrets when the profile takes them, else in ConfigMaps; a listener without a
    hostname on 9443 for clients that send no SNI."""
    ns = mtls_namespace
    backend = mtls_backend(ns, "ngf-coffee", port=80)
    in_secret = mtls_profile.ca_in_secret
    make = m.ca_secret if in_secret else m.ca_configmap
    kind = "Secret" if in_secret else "ConfigMap"
    gateway = m.gateway(
        "ngf-gateway", ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(
            default=m.validation(m.object_ref("default-validation-ca-secret", kind=kind), mode="AllowValidOnly"),
            per_port={PER_PORT: m.validation(m.object_ref("per-port-validation-ca-secret", kind=kind),
                                             mode="AllowValidOnly")}),
        listeners=[m.https_listener("https", PER_PORT, hostname=f"*.{HOSTNAME}", certificate="cafe-secret"),
                   m.https_listener("https-default", DEFAULT_PORT, hostname=f"*.{HOSTNAME}", certificate="cafe-secret"),
                   # Another listener on the port, so that selecting one by SNI is not trivial.
                   m.https_listener("https-tea", DEFAULT_PORT, hostname=f"tea.{HOSTNAME}", certificate="cafe-secret"),
                   m.https_listener("https-no-hostname", NO_SNI_PORT, certificate="cafe-secret")])
    route = m.http_route("coffee", ns, hostnames=[CAFE], parents=[m.parent_ref("ngf-gateway")],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    client = deploy_gateway(gateway, m.tls_secret("cafe-secret", ns, cert_pem=server_credential.chain_pem,
                                                  key_pem=server_credential.key_pem),
                            make("default-validation-ca-secret", ns, client_ca.cert_pem),
                            make("per-port-validation-ca-secret", ns, per_port_ca.cert_pem), routes=[route])
    client.route = route
    client.in_secret = in_secret
    return client


@pytest.mark.features("FrontendCACertificateInSecret")
def test_ca_bundles_in_secrets_for_default_and_per_port(ngf, mtls_profile, valid_client, per_port_client):
    if not ngf.in_secret:
        pytest.skip(f"the implementation profile {mtls_profile.key!r} does not take CA bundles from Secrets "
                    f"(Profile.ca_in_secret)")
    ngf.expect_pair(PER_PORT, sni=CAFE, accepted=per_port_client, refused=valid_client,
                what="perPort validation of 443 with its CA bundle in a Secret: the default CA is not trusted there")
    ngf.expect_pair(DEFAULT_PORT, sni=CAFE, accepted=valid_client, refused=per_port_client,
                what="default validation with its CA bundle in a Secret: the perPort CA is not trusted on 8443")


@pytest.mark.features("Gateway", "HTTPRoute")
@pytest.mark.parametrize("listener,port", [("https", PER_PORT), ("https-default", DEFAULT_PORT)])
def test_listener_and_route_conditions_match_traffic(ngf, listener, port, valid_client, per_port_client):
    target, timeout = ngf.target, timeout_of(ngf)
    for type_, status in (("Accepted", "True"), ("Programmed", "True"), ("ResolvedRefs", "True")):
        target.wait_for_condition(ngf.gateway, type_, status, listener=listener, timeout=timeout)

    def not_conflicted(obj: dict | None) -> str | None:
        # "If this condition is not set, it is assumed that there are no conflicts"
        # (gateway_types.go v1.7.0, ListenerConditionConflicted): absent counts as False.
        for status in ((obj or {}).get("status") or {}).get("listeners") or []:
            if status.get("name") == listener:
                found = [c for c in status.get("conditions") or [] if c.get("type") == "Conflicted"]
                return None if not found or found[0].get("status") == "False" else \
                    f"Conflicted={found[0].get('status')} ({found[0].get('reason')})"
        return f"no status for listener {listener!r}"

    target.wait_for(ngf.gateway, not_conflicted, what=f"listener {listener!r} not Conflicted", timeout=timeout)
    for type_ in ("Accepted", "ResolvedRefs"):
        target.wait_for_route_condition(ObjectRef.of(ngf.route), ngf.gateway, type_, timeout=timeout)
    # What those conditions promise: the listener serves the route, with the validation of its port.
    client = per_port_client if port == PER_PORT else valid_client
    ngf.expect_ok(port, sni=CAFE, cert=client, service="ngf-coffee",
                  what=f"listener {listener!r}: Accepted, Programmed, ResolvedRefs True, not Conflicted; "
                       f"HTTPRoute Accepted and ResolvedRefs True")


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_client_without_sni(ngf, http2, valid_client, untrusted_client):
    ngf.expect_pair(NO_SNI_PORT, sni=None, host=CAFE, accepted=valid_client, refused=(None, untrusted_client),
                http2=http2, what=f"a client that sends no SNI ({protocol(http2)}), served by the listener without a "
                                  f"hostname, Host {CAFE}")


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_sni_and_host_that_select_the_same_listener(ngf, http2, valid_client):
    sni = f"other.{HOSTNAME}"
    ngf.expect_ok(DEFAULT_PORT, sni=sni, host=CAFE, cert=valid_client, http2=http2, service="ngf-coffee",
                  what=f"SNI {sni} and Host {CAFE} both match listener 'https-default' (*.{HOSTNAME}): "
                       f"not misdirected, no 421")
