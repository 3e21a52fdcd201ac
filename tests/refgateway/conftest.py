"""Fixtures for the reference gateway's own tests.

Deliberately self-contained: it does not use conformance/ or fixtures/ so the gateway
can be tested on its own. Certificates come from trustme; manifests are written by a
tiny helper that follows docs/local-target.md (atomic rename, dot-file temp names).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme
import yaml

from testkit.procs import wait_until

ROOT = Path(__file__).resolve().parents[2]
CONTROLLER = "mtls-conformance.dev/refgateway"
NS = "ns1"


class Cluster:
    """Writes manifests into a config_dir the way the harness does."""

    def __init__(self, config_dir: Path):
        self.dir = config_dir
        self.generations: dict[tuple, int] = {}

    def path(self, kind: str, name: str, ns: str | None) -> Path:
        return self.dir / (ns or "_cluster") / kind / f"{name}.yaml"

    def apply(self, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace")
        key = (obj["kind"], ns, meta["name"])
        gen = self.generations.get(key, 0) + 1
        self.generations[key] = gen
        meta.setdefault("uid", f"uid-{obj['kind']}-{meta['name']}")
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        meta["generation"] = gen
        self.write_raw(self.path(obj["kind"], meta["name"], ns), yaml.safe_dump(obj))
        return obj

    def write_raw(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("." + path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def delete(self, kind: str, name: str, ns: str | None = NS) -> None:
        self.path(kind, name, ns).unlink()


class GatewayProcess:
    def __init__(self, config_dir: Path, state_dir: Path, faults=(), args=()):
        self.config_dir, self.state_dir = config_dir, state_dir
        cmd = [sys.executable, "-m", "refgateway", "--config-dir", str(config_dir), "--state-dir", str(state_dir)]
        for f in faults:
            cmd += ["--fault", f]
        cmd += list(args)
        self.stderr = open(state_dir.parent / f"gateway-{state_dir.name}.log", "w+")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=self.stderr, start_new_session=True)
        wait_until(lambda: (state_dir / "ready").exists() or self.proc.poll() is not None, what="ready file")
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def status(self, kind: str, name: str, ns: str | None = NS) -> dict | None:
        p = self.state_dir / "status" / (ns or "_cluster") / kind / f"{name}.yaml"
        try:
            return yaml.safe_load(p.read_text())
        except FileNotFoundError:
            return None

    def port(self, gateway: str, listener_port: int, ns: str = NS) -> int:
        p = self.state_dir / "ports" / ns / f"{gateway}.yaml"
        return wait_until(lambda: p.exists() and (yaml.safe_load(p.read_text()) or {}).get(listener_port),
                          what=f"port {listener_port} of {ns}/{gateway}")

    def wait_condition(self, kind, name, ctype, status="True", *, ns=NS, listener=None, reason=None,
                       generation=None, timeout=10.0):
        def check():
            doc = self.status(kind, name, ns)
            if not doc:
                return None
            st = doc["status"]
            if listener is not None:
                st = next((x for x in st.get("listeners", []) if x["name"] == listener), {})
            if kind == "HTTPRoute":
                st = (st.get("parents") or [{}])[0]
            for c in st.get("conditions", []):
                if c["type"] == ctype and c["status"] == status and (reason is None or c["reason"] == reason) \
                        and (generation is None or c["observedGeneration"] == generation):
                    return c
            return None
        return wait_until(check, timeout=timeout, what=f"{kind} {name} {listener or ''} {ctype}={status} {reason or ''}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        return self.proc.returncode


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def backend():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """Server CA + cert, a trusted client CA + client, an untrusted CA + client; as files."""
    d = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("example.com", "*.example.com")
    client = client_ca.issue_cert("client.example.com")
    stranger = other_ca.issue_cert("client.example.com")
    files = {}
    for name, obj in {"server-ca": server_ca, "client-ca": client_ca, "other-ca": other_ca}.items():
        obj.cert_pem.write_to_path(str(d / f"{name}.crt"))
        files[name] = d / f"{name}.crt"
    for name, leaf in {"client": client, "stranger": stranger}.items():
        leaf.cert_chain_pems[0].write_to_path(str(d / f"{name}.crt"))
        leaf.private_key_pem.write_to_path(str(d / f"{name}.key"))
        files[name] = (d / f"{name}.crt", d / f"{name}.key")
    return {"dir": d, "files": files, "server": server, "client": client, "stranger": stranger,
            "server_ca": server_ca, "client_ca": client_ca, "other_ca": other_ca}


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "config").mkdir()
    return Cluster(tmp_path / "config")


@pytest.fixture
def start_gateway(tmp_path, cluster):
    procs = []

    def start(*faults, args=()):
        state = tmp_path / f"state{len(procs)}"
        state.mkdir()
        gp = GatewayProcess(cluster.dir, state, faults, args)
        procs.append(gp)
        return gp

    yield start
    for gp in procs:
        assert gp.stop() == 0, gp.log()


# --------------------------------------------------------------------------- manifests


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_secret(name: str, leaf: trustme.LeafCert, ns: str = NS) -> dict:
    chain = b"".join(p.bytes() for p in leaf.cert_chain_pems)
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": ns},
            "data": {"tls.crt": b64(chain), "tls.key": b64(leaf.private_key_pem.bytes())}}


def ca_configmap(name: str, *cas: trustme.CA, ns: str = NS) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": {"ca.crt": "".join(ca.cert_pem.bytes().decode() for ca in cas)}}


def gateway_class(name: str = "ref") -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": name}, "spec": {"controllerName": CONTROLLER}}


def https_listener(name: str, port: int, hostname: str | None = None, secret: str = "server-cert", **tls) -> dict:
    ls = {"name": name, "port": port, "protocol": "HTTPS",
          "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": secret}], **tls},
          "allowedRoutes": {"namespaces": {"from": "All"}}}
    if hostname:
        ls["hostname"] = hostname
    return ls


def gateway(name: str, listeners: list, frontend: dict | None = None, ns: str = NS) -> dict:
    spec = {"gatewayClassName": "ref", "listeners": listeners}
    if frontend is not None:
        spec["tls"] = {"frontend": frontend}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def validation(*cms: str, mode: str | None = None) -> dict:
    v = {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": cm} for cm in cms]}
    if mode:
        v["mode"] = mode
    return {"validation": v}


def http_route(name: str, gateway_name: str, backend_svc: str = "echo", ns: str = NS, **spec) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": [{"name": gateway_name}],
                     "rules": [{"backendRefs": [{"name": backend_svc, "port": 8080}]}], **spec}}


def service_objects(port: int, name: str = "echo", ns: str = NS) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 3000}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-local", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
         "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
    ]
