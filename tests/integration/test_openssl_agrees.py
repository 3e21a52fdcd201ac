"""``openssl s_client`` sees the same rejection as the probe, for each bad client certificate.

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

from mtls_conformance import manifests as m
from mtls_conformance import _outcomes, probe
from mtls_conformance.local import LocalTarget
from mtls_conformance.target import ObjectRef
from mtls_conformance.fixtures.pki import PKI

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
