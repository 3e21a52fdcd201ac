"""Frontend mTLS: pin client certificates by Subject Alt Name and by hash, beyond the CA.

Guide: kgateway "mTLS (FrontendTLS)", section "Verify the SAN and certificate hash"
(shared/guides/kgateway-frontend-mtls.txt):

    Update port 8443 on the Gateway to allow connections only if the client certificate
    includes a specific hash and Subject Alt Name. [...]
        options:
          kgateway.dev/verify-subject-alt-names: "example.com"
          kgateway.dev/verify-certificate-hash: "46:DB:0D:C2:E1:4F:..."
    [...] kgateway.dev/verify-certificate-hash: A comma-delimited list of the certificate
    hash (fingerprint) that must be present in the peer certificate [...]
    kgateway.dev/verify-subject-alt-names: A comma-delimited list of the Subject
    Alternative Names that must be present in the peer certificate [...]

    Change the annotation values in the Gateway to a value that does not exist in the
    client certificate. [...] Verify that the request now fails.

Pinning is not part of the Gateway API: listener ``tls.options`` keys are vendor-specific
(domain-prefixed). The keys come from the implementation profile (``Profile.pinning``), so
this module runs against any implementation that pins with the same semantics; one whose
profile names no key skips with the reason. Pins narrow what the CA already allows: every
client here is signed by a trusted CA, and only the pins decide.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m

from mtls_conformance.fixtures.guide import HOSTNAME

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation",
                                  "FrontendClientCertificatePinning")

GATEWAY = "mtls-pinning"
SAN_PORT, SANS_PORT, HASH_PORT, BOTH_PORT, PER_PORT = 8443, 8444, 8445, 8446, 9443
ALICE, BOB = f"alice.{HOSTNAME}", f"bob.{HOSTNAME}"


def pin_keys(profile) -> tuple[str, str]:
    pinning = profile.pinning
    san = pinning.subject_alt_names if pinning else None
    digest = pinning.certificate_hash if pinning else None
    missing = [what for what, key in (("subject-alt-name", san), ("certificate-hash", digest))
               if key is None]
    if missing:
        pytest.skip(f"the implementation profile {profile.key!r} names no listener option for "
                    f"{' or '.join(missing)} pinning (Profile.pinning)")
    return san, digest


@pytest.fixture(scope="module")
def other_san_client(client_ca):
    """Trusted CA, but a SAN that no pin on this Gateway allows."""
    return client_ca.issue_client("other-san-client", common_name="client.example.org",
                                  dns_names=["client.example.org"])


@pytest.fixture(scope="module")
def twin_client(client_ca):
    """Same names as valid_client, another key: only a hash pin tells them apart."""
    return client_ca.issue_client("twin-client", common_name=f"client.{HOSTNAME}",
                                  dns_names=[HOSTNAME, f"*.{HOSTNAME}"])


@pytest.fixture(scope="module")
def alice(client_ca):
    return client_ca.issue_client("alice", common_name=ALICE, dns_names=[ALICE])


@pytest.fixture(scope="module")
def bob(client_ca):
    return client_ca.issue_client("bob", common_name=BOB, dns_names=[BOB])


@pytest.fixture(scope="module")
def per_port_ca(mtls_pki):
    return mtls_pki.authority("pinning-per-port-ca")


@pytest.fixture(scope="module")
def per_port_alice(per_port_ca):
    return per_port_ca.issue_client("per-port-alice", common_name=ALICE, dns_names=[ALICE])


@pytest.fixture(scope="module")
def per_port_bob(per_port_ca):
    return per_port_ca.issue_client("per-port-bob", common_name=BOB, dns_names=[BOB])


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_backend, mtls_profile, deploy_gateway,
       guide_tls_objects, valid_client, per_port_ca):
    san_key, hash_key = pin_keys(mtls_profile)
    ns = mtls_namespace
    backend = mtls_backend(ns, "httpbin", port=8000)
    gateway = m.gateway(
        GATEWAY, ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(
            default=m.validation(m.object_ref("ca-cert"), mode="AllowValidOnly"),
            per_port={PER_PORT: m.validation(m.object_ref("pinning-per-port-ca"),
                                             mode="AllowValidOnly")}),
        listeners=[
            # As in the guide: one SAN.
            m.https_listener("https-san", SAN_PORT, certificate="https-cert",
                             options={san_key: HOSTNAME}),
            m.https_listener("https-sans", SANS_PORT, certificate="https-cert",
                             options={san_key: f"{ALICE}, {BOB}"}),
            # The guide's form: upper-case hex pairs joined by colons (openssl -fingerprint).
            m.https_listener("https-hash", HASH_PORT, certificate="https-cert",
                             options={hash_key: valid_client.sha256_colons}),
            m.https_listener("https-both", BOTH_PORT, certificate="https-cert",
                             options={san_key: HOSTNAME, hash_key: valid_client.sha256_colons}),
            m.https_listener("https-per-port", PER_PORT, certificate="https-cert",
                             options={san_key: ALICE}),
        ])
    route = m.http_route("httpbin-https", ns, parents=[m.parent_ref(GATEWAY)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    return deploy_gateway(gateway, *guide_tls_objects,
                          m.ca_configmap("pinning-per-port-ca", ns, per_port_ca.cert_pem),
                          routes=[route])


def test_matching_san_is_accepted(gw, valid_client):
    gw.expect_ok(SAN_PORT, sni=HOSTNAME, cert=valid_client,
                 what=f"a client certificate with the pinned SAN {HOSTNAME}")


@pytest.mark.parametrize("tls_version", ["TLSv1.2", "TLSv1.3"])
def test_other_san_from_the_trusted_ca_is_rejected(gw, tls_version, valid_client, other_san_client):
    gw.expect_pair(SAN_PORT, sni=HOSTNAME, accepted=valid_client, refused=other_san_client, tls_version=tls_version,
                   what="a certificate from the trusted CA whose SAN is not pinned is refused")


@pytest.mark.parametrize("client", ["alice", "bob"])
def test_each_of_several_allowed_sans_is_accepted(gw, client, request):
    gw.expect_ok(SANS_PORT, sni=HOSTNAME, cert=request.getfixturevalue(client),
                 what=f"one of the pinned SANs ({ALICE}, {BOB})")


def test_san_outside_several_allowed_is_rejected(gw, alice, valid_client):
    gw.expect_pair(SANS_PORT, sni=HOSTNAME, accepted=alice, refused=valid_client,
                   what=f"SAN {HOSTNAME}, not one of the pinned {ALICE}, {BOB}, is refused")


def test_matching_certificate_hash_is_accepted(gw, valid_client):
    gw.expect_ok(HASH_PORT, sni=HOSTNAME, cert=valid_client,
                 what="the client certificate whose SHA-256 is pinned")


def test_other_certificate_hash_is_rejected(gw, valid_client, twin_client):
    gw.expect_pair(HASH_PORT, sni=HOSTNAME, accepted=valid_client, refused=twin_client,
                   what="same CA and SANs as the pinned certificate, another hash, is refused")


@pytest.mark.parametrize("client", ["twin_client", "other_san_client"])
def test_san_and_hash_pins_must_both_match(gw, client, request, valid_client):
    gw.expect_pair(BOTH_PORT, sni=HOSTNAME, accepted=valid_client, refused=request.getfixturevalue(client),
                   accepted_what="the guide's listener: a client matching both the SAN and the hash must be let in",
                   what="a client matching only one of the two pins is refused")


def test_pinning_with_per_port_validation(gw, per_port_alice, per_port_bob, alice):
    """The pin and the perPort CA both apply: neither one alone lets a client in."""
    gw.expect_pair(PER_PORT, sni=HOSTNAME, accepted=per_port_alice, refused=per_port_bob,
                   accepted_what="perPort CA and pinned SAN must be let in",
                   what="perPort CA, but not the pinned SAN, is refused")
    gw.expect_pair(PER_PORT, sni=HOSTNAME, accepted=per_port_alice, refused=alice,
                   what="pinned SAN, but from the default CA, not the perPort one, is refused")
