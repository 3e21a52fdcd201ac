"""Frontend mTLS: a resumed TLS session is served only under the validation that made it.

Resuming a session (a TLS 1.3 ticket, a TLS 1.2 session ID or ticket) skips the client's
Certificate message: the server relies on the verdict of the full handshake that made the
session. That verdict belongs to one validation configuration. Real gateways carried it
further: nginx CVE-2014-3616 (sessions shared across server blocks), nginx CVE-2025-23419
(TLS 1.3 resumption under another SNI skipped client-certificate verification), Go
CVE-2025-68121 (resumption after ClientCAs changed; only the leaf's expiry re-checked),
Envoy #21235 (route matching on resumed sessions). Sources: shared/reference/
implementations-and-attacks.md section 3.

Each check offers a session made under one configuration where another applies:

- (a) another listener on the same port, under its SNI, whose validation is narrower (a
  pinned SAN: on one port, listener options are what the Gateway API lets differ, since
  ``spec.tls.frontend`` is per port);
- (b) another port, with another perPort CA;
- (c) the same listener after a CA rotation removed the client's CA;
- (d) the same listener after an intermediate CA of the client's chain expired.

Judged by what the client sees: the gateway may refuse to resume (the full handshake with
the client's certificate is then judged like every rejection) or refuse the connection; it
must never serve the request on the resumed session. Each negative comes with a positive:
a client the configuration accepts resumes (or, where the gateway does not resume, gets a
full handshake) and is served. Every case runs for TLS 1.3 tickets, TLS 1.2 session IDs
(the client asks for no ticket) and TLS 1.2 tickets.

``test_the_gateway_resumes_on_the_same_listener`` shows whether the gateway resumes at all
where it legitimately may. A gateway that never resumes passes every check here, reported
as "resumption not offered" on the feature's verdict line: the resumed path was then not
exercised, and the report does not claim it was. Upstream's suite never resumes a session
(docs/upstream.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mtls_conformance import manifests as m
from mtls_conformance.client import RESUMPTION_PROPERTY, VERDICT_NOTE_PROPERTY, record
from mtls_conformance.probe import Resumption

from mtls_conformance.fixtures.guide import HOSTNAME, wait_ready
from .test_frontend_pinning import pin_keys

FEATURE = "FrontendResumptionScopedToValidation"
pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation", FEATURE)

PORT, OTHER_PORT = 8443, 9443
OPEN, PINNED = f"open.{HOSTNAME}", f"pinned.{HOSTNAME}"
ALICE, BOB = f"alice.{HOSTNAME}", f"bob.{HOSTNAME}"


@dataclasses.dataclass(frozen=True)
class Variant:
    tls_version: str
    tickets: bool
    label: str

    def client(self) -> Resumption:
        return Resumption(tickets=self.tickets)


VARIANTS = [Variant("TLSv1.3", True, "TLS 1.3 ticket"), Variant("TLSv1.2", False, "TLS 1.2 session ID"),
            Variant("TLSv1.2", True, "TLS 1.2 ticket")]
IDS = ["TLSv1.3-ticket", "TLSv1.2-session-id", "TLSv1.2-ticket"]


@pytest.fixture(params=VARIANTS, ids=IDS)
def variant(request) -> Variant:
    return request.param


# -- the Gateways -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_ca(mtls_pki):
    return mtls_pki.authority("resumption-other-port-ca")


@pytest.fixture(scope="module")
def other_port_client(other_ca):
    return other_ca.issue_client("resumption-other-port-client", dns_names=[HOSTNAME])


@pytest.fixture(scope="module")
def two_ports(mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway, guide_tls_objects, other_ca):
    """Port 8443 with the default CA, port 9443 with another CA (perPort)."""
    ns, name = mtls_namespace, "resumption-two-ports"
    backend = mtls_backend(ns, "resumption-two-ports", port=8000)
    gateway = m.gateway(
        name, ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(default=m.validation(m.object_ref("ca-cert")),
                                per_port={OTHER_PORT: m.validation(m.object_ref("resumption-other-ca"))}),
        listeners=[m.https_listener("https", PORT, certificate="https-cert"),
                   m.https_listener("https-other", OTHER_PORT, certificate="https-cert")])
    route = m.http_route(name, ns, hostnames=[HOSTNAME], parents=[m.parent_ref(name)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    return deploy_gateway(gateway, *guide_tls_objects, m.ca_configmap("resumption-other-ca", ns, other_ca.cert_pem),
                          routes=[route])


@pytest.fixture(scope="module")
def alice(client_ca):
    return client_ca.issue_client("resumption-alice", common_name=ALICE, dns_names=[ALICE])


@pytest.fixture(scope="module")
def bob(client_ca):
    return client_ca.issue_client("resumption-bob", common_name=BOB, dns_names=[BOB])


@pytest.fixture(scope="module")
def two_listeners(mtls_namespace, mtls_gateway_class, mtls_backend, mtls_profile, deploy_gateway,
                  guide_tls_objects):
    """One port, the default CA; listener ``pinned`` also pins the SAN alice.<domain>."""
    san_key, _ = pin_keys(mtls_profile)
    ns, name = mtls_namespace, "resumption-two-listeners"
    open_backend = mtls_backend(ns, "resumption-open", port=8000)
    pinned_backend = mtls_backend(ns, "resumption-pinned", port=8000)
    gateway = m.gateway(
        name, ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(default=m.validation(m.object_ref("ca-cert"))),
        listeners=[m.https_listener("open", PORT, hostname=OPEN, certificate="https-cert"),
                   m.https_listener("pinned", PORT, hostname=PINNED, certificate="https-cert",
                                    options={san_key: ALICE})])
    routes = [m.http_route(f"{name}-{section}", ns, hostnames=[host],
                           parents=[m.parent_ref(name, section_name=section)],
                           rules=[m.rule(m.backend_ref(b.service, b.port))])
              for section, host, b in (("open", OPEN, open_backend), ("pinned", PINNED, pinned_backend))]
    return deploy_gateway(gateway, *guide_tls_objects, routes=routes)


# -- the checks -----------------------------------------------------------------------------


def test_the_gateway_resumes_on_the_same_listener(two_ports, valid_client, variant):
    """Where resumption is legitimate (same listener, same configuration): does the gateway
    resume? Recorded, never required; every other check here reads differently without it."""
    client = variant.client()
    two_ports.take_session(PORT, sni=HOSTNAME, cert=valid_client, resumption=client,
                           tls_version=variant.tls_version, what="a session for a client the listener accepts")
    resumed = False
    if client.resumable:
        resumed = two_ports.take_session(PORT, sni=HOSTNAME, cert=valid_client, resumption=client,
                                         tls_version=variant.tls_version,
                                         what="the same client again, offering its session")
    seen = "resumed" if resumed else ("not resumed" if client.resumable else "no session given")
    record(RESUMPTION_PROPERTY, f"{variant.label} on listener port {PORT}, same listener and configuration: {seen}")
    record(VERDICT_NOTE_PROPERTY, f"{FEATURE}: {variant.label} " + (
        "resumed" if resumed else "resumption not offered (the resumed path was not exercised)"))


@pytest.mark.features("FrontendClientCertificatePinning")
def test_session_of_another_listener_is_not_served_under_its_sni(two_listeners, alice, bob, variant):
    """(a) bob's session from listener ``open`` offered under ``pinned``'s SNI and Host."""
    positive, negative = variant.client(), variant.client()
    two_listeners.take_session(PORT, sni=PINNED, cert=alice, resumption=positive, tls_version=variant.tls_version,
                               what="alice (the pinned SAN) on listener pinned")
    two_listeners.take_session(PORT, sni=PINNED, cert=alice, resumption=positive, tls_version=variant.tls_version,
                               what="alice's session offered again on listener pinned")
    two_listeners.take_session(PORT, sni=OPEN, cert=bob, resumption=negative, tls_version=variant.tls_version,
                               what="bob on listener open, which pins nothing")
    if negative.resumable:
        two_listeners.expect_resumed_session_not_served(
            PORT, sni=PINNED, cert=bob, resumption=negative, tls_version=variant.tls_version,
            what="bob's session from listener open, offered under listener pinned's SNI, is not served there")
    two_listeners.expect_rejected(PORT, sni=PINNED, cert=bob, tls_version=variant.tls_version,
                                  what="bob, not the pinned SAN, is refused by listener pinned")


def test_session_of_another_port_is_not_served(two_ports, valid_client, other_port_client, variant):
    """(b) a session of port 8443 (default CA) offered on port 9443 (another perPort CA)."""
    positive, negative = variant.client(), variant.client()
    for _ in range(2):
        two_ports.take_session(OTHER_PORT, sni=HOSTNAME, cert=other_port_client, resumption=positive,
                               tls_version=variant.tls_version,
                               what="a client of port 9443's perPort CA, with its session")
    two_ports.take_session(PORT, sni=HOSTNAME, cert=valid_client, resumption=negative,
                           tls_version=variant.tls_version, what="a client of the default CA on port 8443")
    if negative.resumable:
        two_ports.expect_resumed_session_not_served(
            OTHER_PORT, sni=HOSTNAME, cert=valid_client, resumption=negative, tls_version=variant.tls_version,
            what="a session of port 8443 (default CA) offered on port 9443 (perPort CA) is not served there")
    two_ports.expect_rejected(OTHER_PORT, sni=HOSTNAME, cert=valid_client, tls_version=variant.tls_version,
                              what="the default CA's client is refused on port 9443")


def _rotated(mtls_namespace, mtls_gateway_class, mtls_pki, mtls_backend, deploy_gateway, guide_tls_objects, variant):
    """A Gateway of its own whose bundle holds CA 1 and CA 2; each CA's client takes a
    session, then CA 1 is removed. Configured ahead with the module; the sessions and the
    rotation when the module starts (at_module_start: a session must not age while
    earlier modules run, or the gateway may have dropped it when the test offers it)."""
    # No dots: implementations name Services (DNS labels) after the Gateway.
    ns, name = mtls_namespace, f"resumption-rotation-{IDS[VARIANTS.index(variant)].lower().replace('.', '')}"
    kept, removed = mtls_pki.authority("resumption-kept-ca"), mtls_pki.authority("resumption-removed-ca")
    kept_client = kept.issue_client("resumption-kept-client", dns_names=[HOSTNAME])
    removed_client = removed.issue_client("resumption-removed-client", dns_names=[HOSTNAME])
    backend = mtls_backend(ns, "resumption-rotation", port=8000)
    gateway = m.gateway(name, ns, gateway_class=mtls_gateway_class,
                        frontend=m.frontend_tls(default=m.validation(m.object_ref(f"{name}-ca"))),
                        listeners=[m.https_listener("https", PORT, certificate="https-cert")])
    route = m.http_route(name, ns, hostnames=[HOSTNAME], parents=[m.parent_ref(name)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    gw = deploy_gateway(gateway, *guide_tls_objects,
                        m.ca_configmap(f"{name}-ca", ns, kept.cert_pem + removed.cert_pem), routes=[route],
                        ready=False)
    yield  # configured; the sessions and the rotation when the module starts
    wait_ready(gw, [route])
    positive, negative = variant.client(), variant.client()
    for client, cert in ((positive, kept_client), (negative, removed_client)):
        gw.take_session(PORT, sni=HOSTNAME, cert=cert, resumption=client, tls_version=variant.tls_version,
                        what=f"before the rotation, {cert.name} with its session")

    gw.target.apply(m.ca_configmap(f"{name}-ca", ns, kept.cert_pem))
    return gw, kept_client, removed_client, positive, negative


@pytest.mark.configure_ahead(setup=_rotated, at_module_start=True)
def test_session_from_before_a_ca_rotation_is_not_served(variant, mtls_configured):
    """(c) the bundle held CA 1 and CA 2; CA 1 is removed; CA 1's session must not be served."""
    gw, kept_client, removed_client, positive, negative = mtls_configured
    gw.expect_pair(PORT, sni=HOSTNAME, accepted=kept_client, refused=removed_client, tls_version=variant.tls_version,
                   what="after the rotation, a client of the removed CA is refused on a new connection")
    gw.take_session(PORT, sni=HOSTNAME, cert=kept_client, resumption=positive, tls_version=variant.tls_version,
                    what="after the rotation, the kept CA's client offering its session from before is served")
    if negative.resumable:
        gw.expect_resumed_session_not_served(
            PORT, sni=HOSTNAME, cert=removed_client, resumption=negative, tls_version=variant.tls_version,
            what="a session made before the rotation by a client of the removed CA is not served")


# -- (d) a chain whose intermediate expires during the test ----------------------------------


@dataclasses.dataclass(frozen=True)
class Client:
    """A client credential as the probe takes it."""

    name: str
    chain_file: Path
    key_file: Path
    cert_file: Path


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mtls-conformance test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class ExpiringChains:
    """A root of its own, and client chains root -> intermediate -> leaf whose intermediate's
    notAfter is chosen (the leaf stays valid): fixtures/pki uses trustme, whose CAs take no
    validity window."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.root = self._ca(_name("resumption expiry root"), self.key, self.key.public_key(), _name(
            "resumption expiry root"), self.now + datetime.timedelta(days=1), path_length=1)
        self.cert_pem = _pem(self.root)

    def _ca(self, subject, signer, public_key, issuer, not_after, path_length):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(self.now - datetime.timedelta(hours=1)).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                .sign(signer, hashes.SHA256()))

    def client(self, name: str, intermediate_not_after: datetime.datetime) -> Client:
        ikey, lkey = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        inter = self._ca(_name(f"{name} intermediate"), self.key, ikey.public_key(), self.root.subject,
                         intermediate_not_after, path_length=0)
        leaf = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(inter.subject)
                .public_key(lkey.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(self.now - datetime.timedelta(hours=1))
                .not_valid_after(self.now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOSTNAME)]), critical=False)
                .sign(ikey, hashes.SHA256()))
        stem = self.directory / name
        files = {".crt": _pem(leaf), ".chain.pem": _pem(leaf) + _pem(inter),
                 ".key": lkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())}
        for suffix, data in files.items():
            # The key 0600, as every key the PKI factory writes (tests/harness/test_secrets_hygiene.py).
            fd = os.open(f"{stem}{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if suffix == ".key" else 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        return Client(name, Path(f"{stem}.chain.pem"), Path(f"{stem}.key"), Path(f"{stem}.crt"))


#: The shortest life of the expiring intermediate: it must outlive making two sessions
#: (measured here: 0.05-0.2 s on the local target, about 1 s through a port-forward),
#: and every wait for it is this long at most, plus 3 times what making a session took.
MIN_INTERMEDIATE_LIFE = 5.0
#: After notAfter: certificate times are whole seconds, and the gateway's clock may lag ours.
CLOCK_MARGIN = 2.0


@pytest.fixture(scope="module")
def expiry(mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway, guide_tls_objects,
           tmp_path_factory):
    ns, name = mtls_namespace, "resumption-expiry"
    chains = ExpiringChains(tmp_path_factory.mktemp("resumption-expiry"))
    backend = mtls_backend(ns, "resumption-expiry", port=8000)
    gateway = m.gateway(name, ns, gateway_class=mtls_gateway_class,
                        frontend=m.frontend_tls(default=m.validation(m.object_ref(f"{name}-ca"))),
                        listeners=[m.https_listener("https", PORT, certificate="https-cert")])
    route = m.http_route(name, ns, hostnames=[HOSTNAME], parents=[m.parent_ref(name)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    gw = deploy_gateway(gateway, *guide_tls_objects, m.ca_configmap(f"{name}-ca", ns, chains.cert_pem),
                        routes=[route])
    return gw, chains


def test_session_from_before_the_chain_expired_is_not_served(expiry, variant, request):
    """(d) the client's intermediate expires after its session was made; the leaf does not."""
    gw, chains = expiry
    label = request.node.callspec.id.lower()
    lasting = chains.client(f"lasting-{label}", chains.now + datetime.timedelta(days=1))
    positive, negative = variant.client(), variant.client()
    started = time.monotonic()
    gw.take_session(PORT, sni=HOSTNAME, cert=lasting, resumption=positive, tls_version=variant.tls_version,
                    what="a client whose chain stays valid, with its session")
    life = MIN_INTERMEDIATE_LIFE + 3 * (time.monotonic() - started)
    not_after = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=life)).replace(
        microsecond=0)
    expiring = chains.client(f"expiring-{label}", not_after)
    gw.take_session(PORT, sni=HOSTNAME, cert=expiring, resumption=negative, tls_version=variant.tls_version,
                    what=f"a client whose intermediate expires at {not_after:%H:%M:%S}, with its session")
    remaining = (not_after - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    if remaining <= 0:
        pytest.fail(f"making the session took past the intermediate's notAfter ({life:.1f} s after it was "
                    f"issued); the check could not be made: the probe, not the gateway, was too slow")
    time.sleep(remaining + CLOCK_MARGIN)  # waits for the clock to pass notAfter, bounded by `life`

    gw.take_session(PORT, sni=HOSTNAME, cert=lasting, resumption=positive, tls_version=variant.tls_version,
                    what="the client whose chain stays valid, offering its session, is still served")
    if negative.resumable:
        gw.expect_resumed_session_not_served(
            PORT, sni=HOSTNAME, cert=expiring, resumption=negative, tls_version=variant.tls_version,
            what="a session made before the client's intermediate expired is not served after it did")
    gw.expect_rejected(PORT, sni=HOSTNAME, cert=expiring, tls_version=variant.tls_version,
                       what="the client whose intermediate expired is refused on a new connection")
