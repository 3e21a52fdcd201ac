"""EchoProcess: the echo server in a child process reports what it saw, as the in-process one does."""

from __future__ import annotations

import os

import pytest

from mtls_conformance.probe import Rejection, Response, probe
from mtls_conformance.fixtures.echo import EchoProcess, ServerTLS
from mtls_conformance.fixtures.pki import PKI

HOST = "backend.example.org"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("echo-process-pki"))


@pytest.fixture
def start():
    started: list[EchoProcess] = []

    def make(**kwargs) -> EchoProcess:
        process = EchoProcess(namespace="ns", service="svc", pod="svc-0", host="127.0.0.1", **kwargs).start()
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def test_requests_are_seen_as_soon_as_the_client_has_its_answer(start) -> None:
    server = start()
    for n in range(20):
        outcome = probe(server.address, sni=None, host=HOST, path=f"/{n}", plaintext=True)
        assert isinstance(outcome, Response), outcome.describe()
        # No waiting: reading .requests flushes the child's reports first.
        assert [r["path"] for r in server.requests] == [f"/{i}" for i in range(n + 1)]
    assert server.requests[0]["namespace"] == "ns" and server.requests[0]["pod"] == "svc-0"


def test_tls_with_a_required_client_certificate_through_the_pipe(start, pki) -> None:
    ca = pki.authority("trusted")
    server_cred = ca.issue_server(HOST)
    tls = ServerTLS(server_cred.chain_pem, server_cred.key_pem, client_ca_pem=ca.cert_pem, require_client_cert=True)
    server = start(tls=tls)

    good = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, client_cert=ca.issue_client("client"))
    assert isinstance(good, Response), good.describe()
    assert good.json is not None and good.json["tls"]["serverName"] == HOST

    stranger = pki.authority("untrusted").issue_client("stranger")
    refused = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, client_cert=stranger, tls_version="TLSv1.2")
    assert isinstance(refused, Rejection), refused.describe()
    assert refused.alert == "unknown ca"
    failures = server.wait_for_handshake_failures(1, timeout=5)
    assert "CERTIFICATE_VERIFY_FAILED" in failures[0][1]
    assert len(server.requests) == 1


def test_stop_ends_the_child(start) -> None:
    server = start()
    pid = server.pid
    assert pid is not None and os.path.exists(f"/proc/{pid}")
    server.stop()
    assert not os.path.exists(f"/proc/{pid}")
    server.stop()  # idempotent


def test_a_child_that_cannot_start_says_why(tmp_path) -> None:
    log = tmp_path / "echo.log"
    process = EchoProcess(namespace="ns", service="svc", pod="svc-0", host="192.0.2.1", log_path=str(log))
    with pytest.raises(RuntimeError) as info:
        process.start(timeout=10)  # 192.0.2.1 (TEST-NET-1) is not an address of this machine
    message = str(info.value)
    assert message.startswith("echo process ns/svc (") and "exited with status 1" in message
    assert "Cannot assign requested address" in message
    assert process.pid is None
