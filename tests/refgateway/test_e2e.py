"""End to end: ``python -m refgateway`` as a subprocess, real TLS clients, a real backend."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import sys

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .conftest import (NS, ROOT, ca_configmap, gateway, gateway_class, http_route, https_listener,
                       service_objects, tls_secret, validation)
from testkit.procs import wait_until

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def https_get(port, pki, *, cert=None, sni="example.com", host=None, version="1.3", headers=()):
    """One request on a fresh connection; returns (status, echoed JSON or body) or raises ssl.SSLError."""
    ctx = ssl.create_default_context(cafile=str(pki["files"]["server-ca"]))
    ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[version]
    if cert:
        ctx.load_cert_chain(*map(str, pki["files"][cert]))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
            s.sendall(f"GET /x HTTP/1.1\r\nHost: {host or sni}\r\n{extra}Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):  # under TLS 1.3 a rejection surfaces here
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def alert_of(call) -> str:
    with pytest.raises(ssl.SSLError) as info:
        call()
    return info.value.reason


@pytest.fixture
def mtls_setup(cluster, pki, backend):
    """Gateway "mtls": :443 AllowValidOnly with client-ca, :8443 perPort AllowInsecureFallback."""
    for obj in [gateway_class(), tls_secret("server-cert", pki["server"]),
                ca_configmap("client-ca", pki["client_ca"]), *service_objects(backend)]:
        cluster.apply(obj)
    cluster.apply(gateway("mtls", [https_listener("https", 443), https_listener("fallback", 8443)], {
        "default": validation("client-ca"),
        "perPort": [{"port": 8443, "tls": validation("client-ca", mode="AllowInsecureFallback")}],
    }))
    cluster.apply(http_route("echo", "mtls"))
    return cluster


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_allow_valid_only(mtls_setup, start_gateway, pki, version):
    gw = start_gateway()
    gw.wait_condition("Gateway", "mtls", "Programmed")
    port = gw.port("mtls", 443)
    status, echo = https_get(port, pki, cert="client", version=version)
    assert status == 200
    assert echo["headers"]["x-refgateway-client-verify"] == "SUCCESS"
    leaf = x509.load_pem_x509_certificate(pki["client"].cert_chain_pems[0].bytes())
    assert echo["headers"]["x-refgateway-client-cert-sha256"] == hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
    # The same listener refuses what it should: no cert, then a cert from an untrusted CA.
    no_cert = alert_of(lambda: https_get(port, pki, version=version))
    assert no_cert == ("TLSV13_ALERT_CERTIFICATE_REQUIRED" if version == "1.3" else "SSLV3_ALERT_HANDSHAKE_FAILURE")
    assert alert_of(lambda: https_get(port, pki, cert="stranger", version=version)) == "TLSV1_ALERT_UNKNOWN_CA"


def test_insecure_fallback_and_headers(mtls_setup, start_gateway, pki):
    gw = start_gateway()
    cond = gw.wait_condition("Gateway", "mtls", "InsecureFrontendValidationMode", reason="ConfigurationChanged")
    assert cond["observedGeneration"] == 1
    port = gw.port("mtls", 8443)
    forged = [("X-RefGateway-Client-Verify", "SUCCESS")]
    assert https_get(port, pki, headers=forged)[1]["headers"]["x-refgateway-client-verify"] == "NONE"
    status, echo = https_get(port, pki, cert="stranger")
    assert status == 200
    assert echo["headers"]["x-refgateway-client-verify"] == "FAILED:unknown-ca"
    assert len(echo["headers"]["x-refgateway-client-cert-sha256"]) == 64
    assert https_get(port, pki, cert="client")[1]["headers"]["x-refgateway-client-verify"] == "SUCCESS"

    # Switching the perPort entry to AllowValidOnly removes the condition and closes the port.
    mtls_setup.apply(gateway("mtls", [https_listener("https", 443), https_listener("fallback", 8443)], {
        "default": validation("client-ca")}))
    gw.wait_condition("Gateway", "mtls", "Programmed", generation=2)
    doc = gw.status("Gateway", "mtls")
    assert "InsecureFrontendValidationMode" not in [c["type"] for c in doc["status"]["conditions"]]
    assert gw.port("mtls", 8443) == port, "an unchanged listener port must not be rebound"
    assert alert_of(lambda: https_get(port, pki, cert="stranger")) == "TLSV1_ALERT_UNKNOWN_CA"


def test_fault_reports_fallback_as_verified(mtls_setup, start_gateway, pki):
    gw = start_gateway("report-fallback-as-verified")
    gw.wait_condition("Gateway", "mtls", "Programmed")
    status, echo = https_get(gw.port("mtls", 8443), pki, cert="stranger")
    assert echo["headers"]["x-refgateway-client-verify"] == "SUCCESS"


def test_invalid_ca_fails_closed(cluster, start_gateway, pki, backend):
    for obj in [gateway_class(), tls_secret("server-cert", pki["server"]), *service_objects(backend)]:
        cluster.apply(obj)
    cluster.apply(gateway("broken", [https_listener("https", 443),
                                     {"name": "http", "port": 80, "protocol": "HTTP"}],
                          {"default": validation("missing")}))
    cluster.apply(http_route("echo", "broken"))
    gw = start_gateway()
    gw.wait_condition("Gateway", "broken", "Accepted", "False", listener="https", reason="NoValidCACertificate")
    gw.wait_condition("Gateway", "broken", "ResolvedRefs", "False", listener="https", reason="InvalidCACertificateRef")
    gw.wait_condition("Gateway", "broken", "Programmed", "False", listener="https")
    gw.wait_condition("Gateway", "broken", "Programmed", "True", listener="http")
    assert alert_of(lambda: https_get(gw.port("broken", 443), pki, cert="client")) == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    # The HTTP listener on the same Gateway is untouched.
    with socket.create_connection(("127.0.0.1", gw.port("broken", 80)), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b'"x-refgateway-client-verify": "NONE"' in reply


def test_malformed_manifest_is_reported_and_others_keep_serving(mtls_setup, start_gateway, pki):
    gw = start_gateway()
    gw.wait_condition("Gateway", "mtls", "Programmed")
    mtls_setup.write_raw(mtls_setup.dir / NS / "Gateway" / "bad.yaml", "kind: Gateway\nmetadata: [oops\n")
    errors = wait_until(lambda: yaml.safe_load((gw.state_dir / "errors.yaml").read_text()), what="errors.yaml entry")
    assert list(errors) == [f"{NS}/Gateway/bad.yaml"]
    assert "invalid YAML" in errors[f"{NS}/Gateway/bad.yaml"]
    assert https_get(gw.port("mtls", 443), pki, cert="client")[0] == 200
    (mtls_setup.dir / NS / "Gateway" / "bad.yaml").unlink()
    wait_until(lambda: yaml.safe_load((gw.state_dir / "errors.yaml").read_text()) == {}, what="errors cleared")


def test_deleted_gateway_status_and_ports_removed(mtls_setup, start_gateway):
    gw = start_gateway()
    gw.wait_condition("Gateway", "mtls", "Programmed")
    assert gw.status("GatewayClass", "ref", ns=None)["status"]["conditions"][0]["reason"] == "Accepted"
    mtls_setup.delete("Gateway", "mtls")
    wait_until(lambda: gw.status("Gateway", "mtls") is None, what="status file removal")
    wait_until(lambda: not (gw.state_dir / "ports" / NS / "mtls.yaml").exists(), what="ports file removal")


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl(mtls_setup, start_gateway, pki):
    gw = start_gateway()
    gw.wait_condition("Gateway", "mtls", "Programmed")
    port = gw.port("mtls", 443)
    f = pki["files"]
    base = ["curl", "-sS", "--cacert", str(f["server-ca"]), "--resolve", f"example.com:{port}:127.0.0.1",
            f"https://example.com:{port}/"]
    ok = subprocess.run(base + ["--cert", str(f["client"][0]), "--key", str(f["client"][1]),
                                "-o", "/dev/null", "-w", "%{http_code}"], capture_output=True, text=True, timeout=30)
    assert ok.stdout == "200", ok.stderr
    denied = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert denied.returncode != 0
    assert "alert certificate required" in denied.stderr


def test_curl_negotiates_http2(mtls_setup, start_gateway, pki):
    """curl offers h2 and http/1.1 by ALPN and gets h2; the client certificate is still required."""
    gw = start_gateway()
    gw.wait_condition("Gateway", "mtls", "Programmed")
    port = gw.port("mtls", 443)
    f = pki["files"]
    base = ["curl", "-sS", "--http2", "--cacert", str(f["server-ca"]), "--resolve",
            f"example.com:{port}:127.0.0.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
            f"https://example.com:{port}/"]
    ok = subprocess.run(base + ["--cert", str(f["client"][0]), "--key", str(f["client"][1])],
                        capture_output=True, text=True, timeout=30)
    assert ok.stdout == "2 200", ok.stderr
    denied = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert denied.returncode != 0 and "alert certificate required" in denied.stderr, denied.stderr


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_openssl_s_client_sees_certificate_request(mtls_setup, start_gateway, pki):
    gw = start_gateway()
    gw.wait_condition("Gateway", "mtls", "Programmed")
    port = gw.port("mtls", 8443)  # fallback still requests a certificate
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "example.com",
                          "-tls1_2", "-msg", "-CAfile", str(pki["files"]["server-ca"])],
                         input="", capture_output=True, text=True, timeout=30)
    assert "CertificateRequest" in out.stdout, out.stdout


def test_fallback_without_cert_request_fault(mtls_setup, start_gateway, pki):
    gw = start_gateway("fallback-without-cert-request")
    gw.wait_condition("Gateway", "mtls", "Programmed")
    port = gw.port("mtls", 8443)
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "example.com",
                          "-tls1_2", "-msg", "-CAfile", str(pki["files"]["server-ca"])],
                         input="", capture_output=True, text=True, timeout=30)
    assert "ServerHelloDone" in out.stdout, out.stdout  # the handshake did run
    assert "CertificateRequest" not in out.stdout


def test_bad_cli_arguments(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "refgateway", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    r = run("--config-dir", str(tmp_path / "missing"), "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"refgateway: error: --config-dir {tmp_path / 'missing'}: not an existing directory"]
    r = run("--config-dir", str(tmp_path), "--state-dir", str(tmp_path / "s"), "--fault", "nope")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown fault 'nope'; valid faults: accept-any-client-cert" in r.stderr
    r = run("--list-faults")
    assert r.returncode == 0 and "ignore-per-port" in r.stdout


def test_pinning_and_misdirected(cluster, start_gateway, pki, backend):
    leaf = x509.load_pem_x509_certificate(pki["client"].cert_chain_pems[0].bytes())
    digest = hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
    for obj in [gateway_class(), tls_secret("server-cert", pki["server"]),
                ca_configmap("client-ca", pki["client_ca"]), *service_objects(backend)]:
        cluster.apply(obj)
    pinned_ok = {"kgateway.dev/verify-certificate-hash": ":".join(digest[i:i + 2] for i in range(0, 64, 2)).upper()}
    pinned_bad = {"refgateway.mtls-conformance.dev/verify-subject-alt-names": "someone-else.example.com"}
    cluster.apply(gateway("pin", [
        https_listener("a", 443, hostname="a.example.com", options=pinned_ok),
        https_listener("wild", 443, hostname="*.example.com", options=pinned_bad),
    ], {"default": validation("client-ca")}))
    cluster.apply(http_route("echo", "pin"))
    gw = start_gateway()
    gw.wait_condition("Gateway", "pin", "Programmed", listener="wild")
    port = gw.port("pin", 443)
    assert https_get(port, pki, cert="client", sni="a.example.com")[0] == 200
    # The chain verifies but the SAN pin does not match: a certificate alert (refgateway sets
    # X509_V_ERR_CERT_REJECTED, see _tls.set_verify), not OpenSSL's internal_error.
    assert alert_of(lambda: https_get(port, pki, cert="client", sni="b.example.com")) == "SSLV3_ALERT_BAD_CERTIFICATE"
    # SNI picked the exact listener but Host belongs to the wildcard one, which pins differently: 421.
    assert https_get(port, pki, cert="client", sni="a.example.com", host="c.example.com")[0] == 421
    assert https_get(port, pki, cert="client", sni="a.example.com", host="other.org")[0] == 404


@pytest.mark.parametrize("faults, expect", [((), "SSLV3_ALERT_CERTIFICATE_EXPIRED"), (("accept-expired-client-cert",), 200)])
def test_expired_client_cert(mtls_setup, start_gateway, pki, tmp_path, faults, expect):
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    old = pki["client_ca"].issue_cert("old.example.com", not_before=now - datetime.timedelta(days=10),
                                      not_after=now - datetime.timedelta(days=1))
    old.cert_chain_pems[0].write_to_path(str(tmp_path / "old.crt"))
    old.private_key_pem.write_to_path(str(tmp_path / "old.key"))
    pki = {**pki, "files": {**pki["files"], "old": (tmp_path / "old.crt", tmp_path / "old.key")}}
    gw = start_gateway(*faults)
    gw.wait_condition("Gateway", "mtls", "Programmed")
    port = gw.port("mtls", 443)
    if expect == 200:
        assert https_get(port, pki, cert="old")[0] == 200
    else:
        assert alert_of(lambda: https_get(port, pki, cert="old")) == expect


def test_other_controllers_route_status_entries_are_kept_and_outlive_ours(mtls_setup, start_gateway):
    """HTTPRoute status.parents is shared with other controllers (docs/local-target.md): an
    entry someone else adds under state_dir/status.lock survives our rewrite at the next
    generation, and stays alone in the file once our status of the route is gone."""
    import fcntl

    gw = start_gateway()
    gw.wait_condition("Gateway", "mtls", "Programmed")
    path = gw.state_dir / "status" / NS / "HTTPRoute" / "echo.yaml"
    wait_until(lambda: path.exists(), what="the route's status file")
    theirs = {"parentRef": {"name": "elsewhere"}, "controllerName": "example.net/other", "conditions": []}
    with open(gw.state_dir / "status.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = yaml.safe_load(path.read_text())
        doc["status"]["parents"].append(theirs)
        path.write_text(yaml.safe_dump(doc))

    def parents() -> list:
        return ((gw.status("HTTPRoute", "echo") or {}).get("status") or {}).get("parents") or []

    mtls_setup.apply(http_route("echo", "mtls"))  # generation 2: our entry is written again
    wait_until(lambda: any(c.get("observedGeneration") == 2 for p in parents() if p is not None
                           and p.get("controllerName") != theirs["controllerName"] for c in p.get("conditions") or []),
               what="our parents entry at generation 2")
    assert theirs in parents()
    mtls_setup.delete("HTTPRoute", "echo")
    wait_until(lambda: parents() == [theirs], what="only the other controller's entry left")
