"""The nginx backend's in-cluster configuration, run by Debian's nginx here.

There is no kubelet on this machine, so ``nginx_manifests`` is checked by running the
nginx.conf of its ConfigMap with the Secret's files where the pod would mount them (the
paths moved under a temporary directory) and the access log on stdout, as in a pod: the
configuration must serve TLS, demand a client certificate when asked to, and log each
request in a form ``parse_access_log`` reads from the pod's log.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from mtls_conformance.probe import probe
from mtls_conformance.fixtures.backends import free_port
from mtls_conformance.fixtures.nginx import NGINX, POD_NGINX_PORT, nginx_manifests, parse_access_log

pytestmark = pytest.mark.skipif(not NGINX.exists(), reason=f"needs Debian's nginx ({NGINX})")

HOST = "abc.example.com"


@pytest.fixture
def pod_nginx(mtls_pki, tmp_path):
    """Start nginx with the pod's files; yields (port, server CA, client CA, stdout file)."""
    server_ca, client_ca = mtls_pki.authority("pod-nginx-ca"), mtls_pki.authority("pod-nginx-client-ca")
    credential = server_ca.issue_server(HOST, name="pod-nginx")
    objects = nginx_manifests(namespace="ns", service="nginx", port=443, image="unused",
                              cert_chain_pem=credential.chain_pem, key_pem=credential.key_pem,
                              client_ca_pem=client_ca.cert_pem, require_client_cert=True)
    by_kind = {o["kind"]: o for o in objects}
    deployment = by_kind["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in deployment["containers"][0]["volumeMounts"]}
    (tmp_path / "tls").mkdir()
    for name, text in by_kind["Secret"]["stringData"].items():
        (tmp_path / "tls" / name).write_text(text)
    port = free_port()
    conf = (by_kind["ConfigMap"]["data"]["nginx.conf"]
            .replace("/tmp/", f"{tmp_path}/")  # the pod's work directory (before tmp_path appears)
            .replace(mounts["tls"], str(tmp_path / "tls"))
            .replace(f"0.0.0.0:{POD_NGINX_PORT}", f"127.0.0.1:{port}"))
    (tmp_path / "nginx.conf").write_text(conf)
    out = tmp_path / "pod.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen([str(NGINX), "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, out.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen: " + out.read_text()
                time.sleep(0.02)  # polling a port nginx is about to bind
        yield port, server_ca, client_ca, out
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_pod_configuration_demands_a_client_certificate_and_logs_to_stdout(pod_nginx):
    port, server_ca, client_ca, out = pod_nginx
    address = ("127.0.0.1", port)
    refused = probe(address, sni=HOST, path="/pod", trust_pem=server_ca.cert_pem)
    assert getattr(refused, "status", None) == 400, f"nginx must refuse a client without a certificate: {refused}"
    client = client_ca.issue_client("gateway", dns_names=["gateway.example"])
    answer = probe(address, sni=HOST, path="/pod", client_cert=client, trust_pem=server_ca.cert_pem)
    assert getattr(answer, "status", None) == 200, answer
    assert answer.json["tls"]["clientVerify"] == "SUCCESS"
    # nginx logs a request after it has answered it: the log may trail the answer a little.
    deadline = time.monotonic() + 10
    while len(requests := parse_access_log(out.read_text())) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [(r["path"], r["status"], r["tls"]["serverName"], r["tls"]["clientVerify"]) for r in requests] == [
        ("/pod", "400", HOST, "NONE"), ("/pod", "200", HOST, "SUCCESS")]
