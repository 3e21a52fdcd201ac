"""``openssl s_client`` sees the same rejection as the probe, for each bad client certificate.

And ``openssl verify`` refuses each RFC 5280 rule breaker of mtls_conformance/fixtures/chains.py and accepts
its valid sibling, with the one verification error that the refgateway fault of that rule
overrules: neither half of a scenario's pair is wrong by construction.

The probe classifies how a listener refused a client (phase and TLS alert) from inside
Python. If that classification were wrong, every scenario's rejection evidence would
be wrong with it. So the same clients are sent, with the same certificate, SNI and TLS
version, by the real ``openssl`` binary against the real refgateway, and both must
report the same alert in the same phase (handshake or the first read after it).
"""

from __future__ import annotations

import datetime
import re
import shlex
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_conformance import manifests as m
from mtls_conformance import _outcomes, probe
from mtls_conformance.local import LocalTarget
from mtls_conformance.target import ObjectRef
from mtls_conformance.fixtures.pki import PKI
from mtls_conformance.fixtures.chains import CASES, ChainFactory

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")

NS = "openssl-agrees"
HOST = "example.com"
NOW = datetime.datetime.now(datetime.timezone.utc)
CLIENTS = ["no certificate", "untrusted CA", "expired", "not yet valid", "server-auth-only EKU"]
VERSIONS = ["TLSv1.2", "TLSv1.3"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("openssl-pki"))


@pytest.fixture(scope="module")
def clients(pki):
    ca = pki.authority("client-ca")
    past, future = NOW - datetime.timedelta(days=30), NOW + datetime.timedelta(days=30)
    return {
        "valid": ca.issue_client("valid", dns_names=[HOST]),
        "no certificate": None,
        "untrusted CA": pki.authority("untrusted-ca").issue_client("untrusted", dns_names=[HOST]),
        "expired": ca.issue_client("expired", dns_names=[HOST], not_before=past,
                                   not_after=NOW - datetime.timedelta(days=1)),
        "not yet valid": ca.issue_client("not-yet-valid", dns_names=[HOST],
                                         not_before=NOW + datetime.timedelta(days=1), not_after=future),
        "server-auth-only EKU": ca.issue_client("server-auth-only", dns_names=[HOST], server_auth_only=True),
    }


@pytest.fixture(scope="module")
def listener(pki, clients, tmp_path_factory):
    """(address, server CA) of an AllowValidOnly listener of the real refgateway."""
    server_ca = pki.authority("server-ca")
    server = server_ca.issue_server(HOST, name="server")
    target = LocalTarget(gateway_class="openssl-agrees", parent=tmp_path_factory.mktemp("target"))
    try:
        target.create_namespace(NS)
        gateway = m.gateway("gw", NS, gateway_class="openssl-agrees",
                            frontend=m.frontend_tls(default=m.validation(m.object_ref("ca"))),
                            listeners=[m.https_listener("https", 443, certificate="cert")])
        target.apply(m.tls_secret("cert", NS, cert_pem=server.chain_pem, key_pem=server.key_pem),
                     m.ca_configmap("ca", NS, pki.authority("client-ca").cert_pem), gateway)
        target.wait_for_condition(ObjectRef.of(gateway), "Programmed", timeout=30)
        yield target.listener_address(ObjectRef.of(gateway), 443), server_ca
    finally:
        target.close()


REQUEST = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
# "...:tlsv13 alert certificate required:...:SSL alert number 116"
_ALERT = re.compile(r"SSL alert number (\d+)")


def s_client(address, server_ca, cert, tls_version) -> tuple[str, str | None, str]:
    """Run openssl s_client; return (phase, alert name or None, its output)."""
    argv = shlex.split(probe.openssl_command(address, sni=HOST, client_cert=cert,
                                             trust_file=server_ca.cert_file, tls_version=tls_version))
    # -ign_eof: keep reading after stdin ends, so a TLS 1.3 alert after the handshake is seen.
    # -state: one line per handshake message, to tell where the alert arrived.
    proc = subprocess.run([*argv, "-ign_eof", "-state"], input=REQUEST, capture_output=True, text=True,
                          timeout=30)
    output = proc.stdout + proc.stderr
    numbers = _ALERT.findall(output)
    alert = _outcomes._ALERT_NAMES.get(int(numbers[0])) if numbers else None
    # The handshake is over for the client once it has both read the server's Finished
    # and written its own (TLS 1.3: read, then write; TLS 1.2: write, then read). s_client
    # prints its session summary either way, so that cannot tell the phases apart.
    done = all(f"SSL_connect:SSLv3/TLS {step} finished" in output for step in ("read", "write"))
    phase = "first-read" if done else "handshake"
    return phase, alert, output


@pytest.mark.parametrize("tls_version", VERSIONS)
@pytest.mark.parametrize("client", CLIENTS)
def test_openssl_sees_the_rejection_the_probe_records(listener, clients, client, tls_version):
    address, server_ca = listener
    cert = clients[client]
    outcome = probe.probe(address, sni=HOST, client_cert=cert, trust_pem=server_ca.cert_pem,
                          tls_version=tls_version)
    assert isinstance(outcome, probe.Rejection), f"{client} ({tls_version}): the probe got {outcome.describe()}"
    phase, alert, output = s_client(address, server_ca, cert, tls_version)
    assert "HTTP/1.1 200" not in output, f"{client} ({tls_version}): openssl got a response:\n{output}"
    assert (phase, alert) == (outcome.phase, outcome.alert), (
        f"{client} ({tls_version}): the probe recorded {outcome.describe()} "
        f"(phase {outcome.phase}, alert {outcome.alert!r}); openssl s_client saw phase {phase}, "
        f"alert {alert!r}:\n{output[-2000:]}")


@pytest.mark.parametrize("tls_version", VERSIONS)
def test_openssl_and_the_probe_both_get_through_with_a_valid_certificate(listener, clients, tls_version):
    """Without this, agreement on the rejections could mean both always fail."""
    address, server_ca = listener
    outcome = probe.probe(address, sni=HOST, client_cert=clients["valid"], trust_pem=server_ca.cert_pem,
                          tls_version=tls_version)
    # No backend behind the listener: the gateway itself answers, after the handshake.
    assert isinstance(outcome, probe.Response), outcome.describe()
    phase, alert, output = s_client(address, server_ca, clients["valid"], tls_version)
    assert alert is None and re.search(r"HTTP/1\.1 \d{3}", output), output[-2000:]


# case id -> the X509_V_ERR_* lines `openssl verify -purpose sslclient` prints for the negative
# (number, depth): exactly what each rule's refgateway fault overrules (refgateway/_tls.py).
VERIFY_ERRORS = {
    "intermediate-ca-without-ca-bit": ["error 79 at 1", "error 26 at 1"],  # invalid CA, purpose
    "intermediate-ca-missing-basic-constraints": ["error 79 at 1"],
    "intermediate-violates-pathlen-0": ["error 25 at 2"],
    "ica-ku-keycertsign": ["error 79 at 1", "error 26 at 1", "error 32 at 1"],
    "permitted-dns-mismatch": ["error 47 at 0"],
    "excluded-dns-match": ["error 48 at 0"],
    "unknown-critical-extension-ee": ["error 34 at 0"],
    "unknown-critical-extension-intermediate": ["error 34 at 1"],
    "leaf-signature-mismatch": ["error 7 at 0"],
    "expired-intermediate": ["error 10 at 1"],
    "not-yet-valid-intermediate": ["error 9 at 1"],
    "sha1-signed-leaf": ["error 68 at 0"],  # at security level 2 (and 1)
    "forbidden-weak-rsa-in-leaf": ["error 66 at 0"],  # at security level 2 only
}


def openssl_verify(chain, root, tmp_path, *, auth_level: int | None) -> tuple[int, list[str], str]:
    """(exit status, "error N at D" lines, output) of openssl verify -purpose sslclient."""
    leaf, *intermediates = chain.certificates
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    (tmp_path / "untrusted.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in intermediates))
    level = [] if auth_level is None else ["-auth_level", str(auth_level)]
    proc = subprocess.run(["openssl", "verify", "-purpose", "sslclient", *level, "-CAfile", str(root.cert_file),
                           "-untrusted", str(tmp_path / "untrusted.pem"), str(tmp_path / "leaf.pem")],
                          capture_output=True, text=True, timeout=30)
    output = proc.stdout + proc.stderr
    return proc.returncode, re.findall(r"error \d+ at \d+", output), output


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_openssl_verify_refuses_each_chain_rule_negative_and_accepts_its_sibling(pki, case, tmp_path):
    root = pki.authority("chain-rules-root", path_length=None)
    sibling, negative = case.build(ChainFactory(root, tmp_path / "chains"))
    # The weak-crypto policy is OpenSSL's security level 2 (refgateway's); RFC 5280 needs none.
    level = 2 if case.policy else None
    status, errors, output = openssl_verify(sibling, root, tmp_path, auth_level=level)
    assert status == 0 and not errors, f"{case.id}: the valid sibling {sibling.name} does not verify:\n{output}"
    status, errors, output = openssl_verify(negative, root, tmp_path, auth_level=level)
    assert status != 0, f"{case.id}: openssl verify accepts the negative {negative.name}:\n{output}"
    assert errors == VERIFY_ERRORS[case.id], f"{case.id}: {output}"
    assert set(VERIFY_ERRORS) == {c.id for c in CASES}
