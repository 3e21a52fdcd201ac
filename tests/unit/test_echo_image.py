"""The echo image's entry point (``python -m mtls_conformance.echo --from-environment``), run
here as a process with the environment a Deployment gives it (echo_backend_manifests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mtls_conformance.kubernetes import parse_echo_log
from mtls_conformance.probe import probe
from mtls_conformance.fixtures.backends import free_port

ROOT = Path(__file__).resolve().parents[2]
HOST = "abc.example.com"


@pytest.fixture
def echo_image(mtls_pki, tmp_path):
    ca, client_ca = mtls_pki.authority("echo-image-ca"), mtls_pki.authority("echo-image-client-ca")
    credential = ca.issue_server(HOST, name="echo-image")
    (tmp_path / "ca.crt").write_bytes(client_ca.cert_pem)
    http_port, https_port = free_port(), free_port()
    env = {**os.environ, "HTTP_PORT": str(http_port), "HTTPS_PORT": str(https_port),
           "TLS_SERVER_CERT": str(credential.chain_file), "TLS_SERVER_PRIVKEY": str(credential.key_file),
           "TLS_CLIENT_CACERTS": str(tmp_path / "ca.crt"),
           "NAMESPACE": "ns", "SERVICE_NAME": "echo", "POD_NAME": "echo-7d4b9-xk2p1"}
    proc = subprocess.Popen([sys.executable, "-m", "mtls_conformance.echo", "--from-environment"], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = [proc.stdout.readline() for _ in range(2)]  # one line per listener, once it listens
    assert started == [f"Starting server, listening on port {http_port} (http)\n",
                       f"Starting server, listening on port {https_port} (https)\n"], started
    try:
        yield proc, http_port, https_port, ca, client_ca
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_serves_like_echo_basic_and_logs_each_answer_with_its_tls(echo_image):
    proc, http_port, https_port, ca, client_ca = echo_image
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/plain") as answer:
        plain = json.load(answer)
    assert (plain["path"], plain["namespace"], plain["service"], plain["pod"]) == (
        "/plain", "ns", "echo", "echo-7d4b9-xk2p1")
    assert "tls" not in plain

    client = client_ca.issue_client("gateway", dns_names=["gateway.example"])
    answer = probe(("127.0.0.1", https_port), sni=HOST, path="/secure", client_cert=client, trust_pem=ca.cert_pem)
    assert getattr(answer, "status", None) == 200, answer
    secure = answer.json
    assert secure["tls"]["serverName"] == HOST
    assert secure["tls"]["peerCertificates"][0].strip() == client.cert_pem.decode().strip()

    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    logged = parse_echo_log(out)
    assert [(r["path"], "tls" in r) for r in logged] == [("/plain", False), ("/secure", True)]
    assert logged[1]["tls"]["serverName"] == HOST


def test_unreadable_certificate_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "TLS_SERVER_CERT": str(tmp_path / "missing.crt"), "TLS_SERVER_PRIVKEY": "x",
           "HTTP_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-m", "mtls_conformance.echo", "--from-environment"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mtls_conformance.echo: [Errno 2] No such file or directory: ") and \
        proc.stderr.count("\n") == 1, proc.stderr
