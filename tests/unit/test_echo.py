"""The echo backend answers like upstream echo-basic and enforces its TLS settings."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time

import pytest

from mtls_conformance.probe import Rejection, Response, probe
from mtls_conformance.fixtures.echo import EchoServer, ServerTLS
from mtls_conformance.fixtures.pki import PKI, Authority, Credential

HOST = "backend.example.org"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("echo-pki"))


@pytest.fixture(scope="module")
def ca(pki: PKI) -> Authority:
    return pki.authority("trusted")


@pytest.fixture(scope="module")
def server_cred(ca: Authority) -> Credential:
    return ca.issue_server(HOST)


@pytest.fixture(scope="module")
def client_cred(ca: Authority) -> Credential:
    # Through an intermediate, so "every certificate the client sent" has two entries.
    return ca.intermediate("issuing").issue_client("client")


def test_plain_http_json_fields(mtls_echo_server) -> None:
    server = mtls_echo_server(namespace="gateway-conformance-infra", service="infra-backend-v1", pod="infra-backend-v1-abc")
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    conn.putrequest("POST", "/some/path?x=1", skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", "app.example.org")
    conn.putheader("x-custom-header", "a")
    conn.putheader("X-CUSTOM-HEADER", "b")
    conn.putheader("Content-Length", "5")
    conn.endheaders(b"hello")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    body = json.loads(response.read())
    # Keep-alive: a second request rides on the same connection.
    conn.request("GET", "/again")
    again = conn.getresponse()
    assert again.status == 200 and json.loads(again.read())["path"] == "/again"
    conn.close()

    assert body == {
        "path": "/some/path?x=1",
        "host": "app.example.org",
        "method": "POST",
        "proto": "HTTP/1.1",
        "headers": {"X-Custom-Header": ["a", "b"], "Content-Length": ["5"]},
        "httpPort": str(server.port),
        "namespace": "gateway-conformance-infra",
        "ingress": "",
        "service": "infra-backend-v1",
        "pod": "infra-backend-v1-abc",
    }
    assert [r["path"] for r in server.requests] == ["/some/path?x=1", "/again"]


@pytest.mark.parametrize(
    ("version", "cipher_prefix"),
    [("TLSv1.3", "TLS_AES_"), ("TLSv1.2", "TLS_ECDHE_ECDSA_WITH_")],
)
def test_tls_fields_sni_and_peer_certificates(mtls_echo_server, ca, server_cred, client_cred, version, cipher_prefix) -> None:
    tls = ServerTLS(server_cred.chain_pem, server_cred.key_pem, client_ca_pem=ca.cert_pem)
    server = mtls_echo_server(namespace="ns", service="svc", pod="pod", tls=tls)
    outcome = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, client_cert=client_cred, tls_version=version)
    assert isinstance(outcome, Response), outcome.describe()
    answer = outcome.json
    assert answer is not None
    tls_state = answer["tls"]
    assert tls_state["version"] == version
    assert tls_state["serverName"] == HOST
    assert tls_state["negotiatedProtocol"] == "http/1.1"
    # Go's names (IANA), not OpenSSL's "ECDHE-ECDSA-AES256-GCM-SHA384".
    assert tls_state["cipherSuite"].startswith(cipher_prefix), tls_state["cipherSuite"]
    # Exactly what the client sent: leaf first, then the intermediate.
    assert "".join(tls_state["peerCertificates"]).encode() == client_cred.chain_pem
    assert server.requests == [answer]


def test_no_sni_and_no_client_cert(mtls_echo_server, ca, server_cred) -> None:
    tls = ServerTLS(server_cred.chain_pem, server_cred.key_pem, client_ca_pem=ca.cert_pem)
    server = mtls_echo_server(namespace="ns", service="svc", pod="pod", tls=tls)
    # Verify-if-given: no certificate is fine, and nothing is echoed for it.
    outcome = probe(server.address, sni=None, host=HOST, trust_pem=None)
    assert isinstance(outcome, Response), outcome.describe()
    assert outcome.json is not None
    assert outcome.json["tls"]["serverName"] == ""
    assert "peerCertificates" not in outcome.json["tls"]
    assert outcome.tls is not None and outcome.tls.certificate_requested is True


def test_server_without_client_ca_does_not_request_a_certificate(mtls_echo_server, server_cred, client_cred) -> None:
    server = mtls_echo_server(namespace="ns", service="svc", pod="pod", tls=ServerTLS(server_cred.chain_pem, server_cred.key_pem))
    outcome = probe(server.address, sni=HOST, client_cert=client_cred)
    assert isinstance(outcome, Response), outcome.describe()
    assert outcome.tls is not None and outcome.tls.certificate_requested is False
    assert outcome.json is not None and "peerCertificates" not in outcome.json["tls"]


@pytest.mark.parametrize(("version", "phase"), [("TLSv1.3", "first-read"), ("TLSv1.2", "handshake")])
def test_require_client_cert_is_enforced(mtls_echo_server, pki, ca, server_cred, client_cred, version, phase) -> None:
    tls = ServerTLS(server_cred.chain_pem, server_cred.key_pem, client_ca_pem=ca.cert_pem, require_client_cert=True)
    server = mtls_echo_server(namespace="ns", service="svc", pod="pod", tls=tls)

    missing = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, tls_version=version)
    assert isinstance(missing, Rejection), missing.describe()
    assert missing.phase == phase
    assert missing.alert == ("certificate required" if version == "TLSv1.3" else "handshake failure")

    stranger = pki.authority("untrusted").issue_client("stranger")
    untrusted = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, client_cert=stranger, tls_version=version)
    assert isinstance(untrusted, Rejection), untrusted.describe()
    assert (untrusted.phase, untrusted.alert) == (phase, "unknown ca")

    assert server.requests == [], "a rejected connection reached the echo handler"
    # The alert reaches the client before the server thread records the failure.
    failures = server.wait_for_handshake_failures(2, timeout=5)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in failures[0][1]
    assert "CERTIFICATE_VERIFY_FAILED" in failures[1][1]

    # The same server does answer a good certificate: the rejections were about the certificates.
    good = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, client_cert=client_cred, tls_version=version)
    assert isinstance(good, Response), good.describe()
    assert len(server.requests) == 1


def test_require_client_cert_needs_a_ca(server_cred) -> None:
    tls = ServerTLS(server_cred.chain_pem, server_cred.key_pem, require_client_cert=True)
    with pytest.raises(ValueError, match="require_client_cert=True. needs client_ca_pem"):
        EchoServer(namespace="ns", service="svc", pod="pod", tls=tls).start()


def test_stop_closes_listener_and_idle_keepalive_connections(ca, server_cred) -> None:
    before = set(threading.enumerate())
    server = EchoServer(namespace="ns", service="svc", pod="pod", tls=ServerTLS(server_cred.chain_pem, server_cred.key_pem))
    server.start()
    address = server.address
    # An idle keep-alive client (handler thread blocked in a read) and a client
    # stuck before its handshake: stop() must not wait for either.
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    idle = http.client.HTTPSConnection(HOST, address[1], context=context, timeout=10)
    idle.sock = context.wrap_socket(socket.create_connection(address), server_hostname=HOST)
    idle.request("GET", "/")
    assert idle.getresponse().read()
    mute = socket.create_connection(address)

    started = time.monotonic()
    server.stop()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"stop() took {elapsed:.2f}s with idle connections open"
    leftovers = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftovers == [], f"threads left after stop(): {leftovers}"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    idle.close()
    mute.close()
    server.stop()  # idempotent


def test_port_before_start_is_an_error() -> None:
    server = EchoServer(namespace="ns", service="svc", pod="pod")
    with pytest.raises(RuntimeError, match="echo server ns/svc is not running; call start"):
        server.port


def test_context_manager_and_fixture_teardown(mtls_echo_server) -> None:
    with EchoServer(namespace="ns", service="ctx", pod="pod") as server:
        address = server.address
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    assert mtls_echo_server(namespace="ns", service="a", pod="p").port != mtls_echo_server(
        namespace="ns", service="b", pod="p"
    ).port


def test_waiting_for_handshake_failures_that_never_come(mtls_echo_server, server_cred) -> None:
    server = mtls_echo_server(namespace="ns", service="quiet", pod="p", tls=ServerTLS(server_cred.chain_pem, server_cred.key_pem))
    with pytest.raises(AssertionError, match=r"echo server ns/quiet: expected 1 failed handshakes within 0.05s, saw 0: \[\]"):
        server.wait_for_handshake_failures(1, timeout=0.05)
