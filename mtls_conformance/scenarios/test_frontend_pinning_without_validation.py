"""Frontend mTLS: certificate pins on a listener whose port has no client validation.

Pinning options narrow what the CA allows (test_frontend_pinning.py); a listener that
carries them while its port has no ``spec.tls.frontend`` validation has nothing to narrow.
Whatever an implementation does with such a listener (refuse it, or ask for a client
certificate and enforce the pins), it must not silently drop the pins and serve every
client: the operator asked for a pinned listener and would get an open one. The pinned
port must refuse a client without a certificate and one whose SAN is not pinned, or not
be served at all; a listener without pins on the same Gateway still serves.

Found by the mutation check (benchmarks/mutants-survivors.md): refgateway could drop
its refusal of such a listener and no scenario noticed.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m

from mtls_conformance.fixtures.guide import HOSTNAME

pytestmark = pytest.mark.features("FrontendClientCertificatePinning")

GATEWAY = "mtls-pinning-no-validation"
PINNED_PORT, PLAIN_PORT = 8443, 8444


def san_pin_key(profile) -> str:
    key = profile.pinning.subject_alt_names if profile.pinning else None
    if key is None:
        pytest.skip(f"the implementation profile {profile.key!r} names no listener option for "
                    "subject-alt-name pinning (Profile.pinning)")
    return key


@pytest.fixture(scope="module")
def unpinned_client(client_ca):
    return client_ca.issue_client("unpinned-client", common_name="client.example.org",
                                  dns_names=["client.example.org"])


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_backend, mtls_profile, deploy_gateway, guide_tls_objects):
    san_key = san_pin_key(mtls_profile)
    ns = mtls_namespace
    backend = mtls_backend(ns, "httpbin", port=8000)
    gateway = m.gateway(
        GATEWAY, ns, gateway_class=mtls_gateway_class,  # no spec.tls.frontend: no port validates clients
        listeners=[
            m.https_listener("https-pinned", PINNED_PORT, certificate="https-cert",
                             options={san_key: HOSTNAME}),
            m.https_listener("https-plain", PLAIN_PORT, certificate="https-cert"),
        ])
    route = m.http_route("httpbin-https", ns, parents=[m.parent_ref(GATEWAY)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    return deploy_gateway(gateway, *guide_tls_objects, routes=[route])


def test_pins_without_client_validation_do_not_open_the_listener(gw, unpinned_client):
    gw.expect_fail_closed(
        PINNED_PORT, sni=HOSTNAME, clients=[None, unpinned_client],
        serving_port=PLAIN_PORT, serving_client=None,
        what=f"a listener pinned to SAN {HOSTNAME} on a port without client validation must not "
             "serve a client without a certificate or with another SAN (pins silently dropped)")
