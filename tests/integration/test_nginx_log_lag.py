"""The measurement behind ``NginxServer.log_lag`` (mtls_conformance/fixtures/nginx.py): how
long after a client has nginx's answer the request shows in nginx's access log as the
harness reads it (``read_requests``). The check that a refused request reached no backend
reads every backend's log again until that long after it was decided."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from mtls_conformance.client import probe_id_of, with_probe_id
from mtls_conformance.fixtures.nginx import NGINX, NginxServer
from mtls_conformance.fixtures.pki import PKI

pytestmark = pytest.mark.skipif(not NGINX.exists(), reason="needs Debian's nginx (apt-get install nginx-light)")


def test_a_request_is_in_nginxs_access_log_within_the_harness_bound(tmp_path):
    pki = PKI(tmp_path / "pki")
    ca = pki.authority("log-lag-ca")
    server = ca.issue_server("backend.example.com")
    nginx = NginxServer(namespace="ns", service="lag", cert_file=server.chain_file, key_file=server.key_file).start()
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    samples = []
    try:
        for n in range(30):
            probe_id = f"{n:016x}"
            with socket.create_connection(nginx.address, timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="backend.example.com") as tls:
                tls.sendall(f"GET {with_probe_id('/lag', probe_id)} HTTP/1.1\r\nHost: backend.example.com\r\n"
                            f"Connection: close\r\n\r\n".encode())
                while tls.recv(65536):
                    pass
            answered = time.monotonic()
            while probe_id not in {probe_id_of(e["path"]) for e in nginx.read_requests()}:
                assert time.monotonic() - answered < 10, f"request {probe_id} not in nginx's access log after 10 s"
                time.sleep(0.001)
            samples.append(time.monotonic() - answered)
    finally:
        nginx.stop()
    samples.sort()
    print(f"nginx access log lag over {len(samples)} requests: min {samples[0] * 1000:.1f} ms, "
          f"median {samples[len(samples) // 2] * 1000:.1f} ms, max {samples[-1] * 1000:.1f} ms; "
          f"bound {NginxServer.log_lag:g} s")
    assert samples[-1] < NginxServer.log_lag, samples
