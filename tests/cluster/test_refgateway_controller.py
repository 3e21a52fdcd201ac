"""refgateway as a Kubernetes controller, against a real kube-apiserver (TestCluster).

The controller runs as a subprocess with the ServiceAccount identity and ClusterRole
of deploy/refgateway/, so these tests also prove that the RBAC there is sufficient.
The backend runs in a network namespace behind a veth pair, because the API server
refuses loopback addresses in EndpointSlices.

Needs root (network namespaces; listeners on their real port 443).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import trustme
import yaml

from testkit import testcluster
from testkit.procs import wait_until
from testkit.testcluster import TestCluster

if not testcluster.go_available() and not testcluster._complete(testcluster.cache_dir()):
    pytest.skip(f"kube-apiserver/etcd are not built and Go is not installed ({testcluster.BUILD_COMMAND})",
                allow_module_level=True)

from kubernetes import client  # noqa: E402

pytestmark = pytest.mark.xdist_group("testcluster")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "refgateway"
GROUP = "gateway.networking.k8s.io"
CONTROLLER = "mtls-conformance.dev/refgateway"
HOST = "gw.example.test"
POOL = ipaddress.ip_network("127.0.0.0/16")


def cond(conditions, ctype: str) -> dict:
    return next((c for c in conditions or [] if c["type"] == ctype), {})


# --------------------------------------------------------------------------- cluster


@pytest.fixture(scope="module")
def deployed(cluster, api):
    """Apply deploy/refgateway's RBAC and GatewayClass for real, the Deployment as a dry run."""
    out = ""
    for f, dry in (("rbac.yaml", False), ("gatewayclass.yaml", False), ("deployment.yaml", True)):
        r = cluster.kubectl("apply", *(["--dry-run=server"] if dry else []), "-f", str(DEPLOY / f), check=False)
        assert r.returncode == 0, f"deploy/refgateway/{f} does not apply: {r.stderr}"
        out += r.stdout
    return out


@pytest.fixture(scope="module")
def sa_kubeconfig(cluster, api, deployed, tmp_path_factory) -> Path:
    """A kubeconfig with a token of the refgateway ServiceAccount (TokenRequest API)."""
    tr = client.CoreV1Api(api).create_namespaced_service_account_token(
        "refgateway", "refgateway-system", {"spec": {"expirationSeconds": 3600}})
    cfg = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    for u in cfg["users"]:
        u["user"] = {"token": tr.status.token}
    path = tmp_path_factory.mktemp("sa") / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


class Controller:
    """``python -m refgateway controller`` as a subprocess in its own process group."""

    def __init__(self, kubeconfig: Path, log: Path, *extra: str, prefix: tuple[str, ...] = ()):
        self.log = log
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "refgateway", "controller", "--kubeconfig", str(kubeconfig), *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
        wait_until(lambda: "ready (pid" in log.read_text() or self.proc.poll() is not None,
                   timeout=30, what="the controller's first list")
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited with {self.proc.returncode}:\n{log.read_text()}")

    def stop(self, timeout: float = 10) -> float:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"controller ignored SIGTERM for {timeout}s:\n{self.log.read_text()}")
        return time.monotonic() - t0

    def listening(self) -> list[str]:
        """The TCP sockets this process listens on, as ``address:port``."""
        out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
        return sorted(line.split()[3] for line in out.splitlines() if f"pid={self.proc.pid}," in line)


@pytest.fixture(scope="module")
def controller(sa_kubeconfig, tmp_path_factory):
    c = Controller(sa_kubeconfig, tmp_path_factory.mktemp("ctl") / "controller.log")
    yield c
    c.stop()
    log = c.log.read_text()
    # The ServiceAccount's rights must have been enough for everything it did.
    assert "HTTP 403" not in log, log


# --------------------------------------------------------------------------- backend in a netns


BACKEND = textwrap.dedent("""
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"backend": sys.argv[3], "path": self.path,
                               "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass

    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
""")


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", "netns", "exec", netns, "ip", *args] if netns else ["ip", *args]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {r.stderr.strip()}")


@pytest.fixture(scope="module")
def backend():
    """A plain HTTP backend at a non-loopback address: (ip, port), in its own netns."""
    if shutil.which("ip") is None:
        pytest.fail("the `ip` command (iproute2) is needed to create a network namespace for the backend")
    tag = uuid.uuid4().hex[:6]
    netns, host_if, ns_if = f"rgw-{tag}", f"rgwh{tag}", f"rgwb{tag}"
    # 198.18.0.0/15 is reserved for network tests (RFC 2544): no real network uses it.
    # Other test hosts on this machine (the kubernetes target's) use it too: skip their /30s.
    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    used = {ipaddress.ip_network(f.split("/")[0] + "/30", strict=False) for f in out.split() if f.startswith("198.1")}
    base = next(b for b in (ipaddress.ip_address("198.18.0.0") + 4 * random.randrange(2 ** 17 // 4) for _ in range(100))
                if ipaddress.ip_network(f"{b}/30") not in used)
    host_ip, backend_ip = str(base + 1), str(base + 2)
    proc = None
    try:
        try:
            _ip("netns", "add", netns)
        except RuntimeError as exc:
            pytest.fail(f"cannot create a network namespace for the backend (needs root): {exc}")
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", netns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", f"{backend_ip}/30", "dev", ns_if, netns=netns)
        _ip("link", "set", ns_if, "up", netns=netns)
        _ip("link", "set", "lo", "up", netns=netns)
        proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", BACKEND,
                                 backend_ip, "8080", f"netns-{tag}"], start_new_session=True)

        def up():
            try:
                socket.create_connection((backend_ip, 8080), timeout=0.5).close()
                return True
            except OSError:
                return proc.poll() is not None
        wait_until(up, timeout=15, what=f"the backend on {backend_ip}:8080")
        assert proc.poll() is None, "the backend exited"
        yield backend_ip, 8080, f"netns-{tag}"
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


# --------------------------------------------------------------------------- PKI and objects


@pytest.fixture(scope="module")
def pki():
    ca, other_ca = trustme.CA(), trustme.CA()
    return {
        "ca": ca,
        "server": ca.issue_cert(HOST),
        "client": ca.issue_cert("client@example.test"),
        "untrusted": other_ca.issue_cert("client@example.test"),
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def ns(api):
    name = f"rgw-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def gateway_body(name: str, port: int = 443) -> dict:
    return {
        "apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": name},
        "spec": {
            "gatewayClassName": "refgateway",
            "listeners": [{"name": "https", "port": port, "protocol": "HTTPS", "hostname": HOST,
                           "tls": {"mode": "Terminate", "certificateRefs": [{"name": "server-cert"}]}}],
            "tls": {"frontend": {"default": {"validation": {
                "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "client-ca"}]}}}},
        },
    }


def create_site(api, ns: str, pki, backend, gw_name: str | None = "mtls") -> None:
    """Secret, CA ConfigMap, Service, EndpointSlice and (with gw_name) a Gateway and its HTTPRoute."""
    core, co = client.CoreV1Api(api), client.CustomObjectsApi(api)
    server = pki["server"]
    core.create_namespaced_secret(ns, {
        "metadata": {"name": "server-cert"}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(b"".join(b.bytes() for b in server.cert_chain_pems)),
                 "tls.key": b64(server.private_key_pem.bytes())}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "client-ca"},
                                           "data": {"ca.crt": pki["ca"].cert_pem.bytes().decode()}})
    core.create_namespaced_service(ns, {"metadata": {"name": "echo"}, "spec": {
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 8080}]}})
    client.DiscoveryV1Api(api).create_namespaced_endpoint_slice(ns, {
        "metadata": {"name": "echo-1", "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [backend[0]], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": backend[1], "protocol": "TCP"}]})
    if gw_name is None:
        return
    co.create_namespaced_custom_object(GROUP, "v1", ns, "gateways", gateway_body(gw_name))
    co.create_namespaced_custom_object(GROUP, "v1", ns, "httproutes", {
        "apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute", "metadata": {"name": "echo"},
        "spec": {"parentRefs": [{"name": gw_name}], "hostnames": [HOST],
                 "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}]}})


def get(api, plural: str, name: str, ns: str | None = None) -> dict:
    co = client.CustomObjectsApi(api)
    if ns is None:
        return co.get_cluster_custom_object(GROUP, "v1", plural, name)
    return co.get_namespaced_custom_object(GROUP, "v1", ns, plural, name)


def programmed_gateway(api, ns: str, name: str = "mtls", generation: int = 1) -> dict:
    def ready():
        gw = get(api, "gateways", name, ns)
        c = cond((gw.get("status") or {}).get("conditions"), "Programmed")
        return gw if c.get("status") == "True" and c.get("observedGeneration") == generation else None
    return wait_until(ready, timeout=15, what=f"Gateway {ns}/{name} Programmed=True at generation {generation}")


def https_get(pki, addr: str, port: int = 443, *, cert: str | None = "client") -> tuple[int, dict]:
    ctx = ssl.create_default_context()
    pki["ca"].configure_trust(ctx)
    if cert:
        pki[cert].configure_cert(ctx)
    with socket.create_connection((addr, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST) as s:
            s.sendall(f"GET /hello HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body) if status == 200 else {"text": body.decode(errors="replace")}


# --------------------------------------------------------------------------- tests


def test_deploy_manifests_apply(deployed, cluster):
    assert "deployment.apps/refgateway created (server dry run)" in deployed
    out = cluster.kubectl("auth", "can-i", "patch", "gateways.gateway.networking.k8s.io", "--subresource=status",
                          "--as=system:serviceaccount:refgateway-system:refgateway").stdout
    assert out.strip() == "yes"
    out = cluster.kubectl("auth", "can-i", "update", "gateways.gateway.networking.k8s.io",
                          "--as=system:serviceaccount:refgateway-system:refgateway", check=False).stdout
    assert out.strip() == "no"  # spec is never written


def test_mtls_gateway_end_to_end(api, cluster, controller, backend, pki, ns):
    create_site(api, ns, pki, backend)

    gc = wait_until(lambda: (lambda g: g if cond((g.get("status") or {}).get("conditions"), "Accepted")
                           .get("status") == "True" else None)(get(api, "gatewayclasses", "refgateway")),
                  what="GatewayClass refgateway Accepted")
    assert cond(gc["status"]["conditions"], "Accepted")["observedGeneration"] == gc["metadata"]["generation"]
    assert {"name": "GatewayFrontendClientCertificateValidation"} in gc["status"]["supportedFeatures"]
    # The tier serves ClusterTrustBundles and rbac.yaml lets the ServiceAccount list and watch them.
    assert {"name": "ClusterTrustBundle"} in gc["status"]["supportedFeatures"]

    programmed_gateway(api, ns)
    # The Gateway is created before its HTTPRoute, so the controller may program it (and
    # write attachedRoutes 0) before the route's event arrives: wait for the route to count.
    gw = wait_until(lambda: (lambda g: g if [ls.get("attachedRoutes") for ls in g["status"]["listeners"]] == [1]
                           else None)(get(api, "gateways", "mtls", ns)),
                  what=f"Gateway {ns}/mtls listener attachedRoutes 1")
    st = gw["status"]
    assert cond(st["conditions"], "Accepted") | {"lastTransitionTime": None} == {
        "type": "Accepted", "status": "True", "reason": "Accepted", "message": "gateway is accepted",
        "observedGeneration": 1, "lastTransitionTime": None}
    (addr,) = [a["value"] for a in st["addresses"] if a["type"] == "IPAddress"]
    assert ipaddress.ip_address(addr) in POOL and addr != "127.0.0.1", addr
    (ls,) = st["listeners"]
    assert {c["type"]: (c["status"], c["reason"]) for c in ls["conditions"]} == {
        "Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed"),
        "ResolvedRefs": ("True", "ResolvedRefs"), "Conflicted": ("False", "NoConflicts")}
    assert ls["attachedRoutes"] == 1
    route = wait_until(lambda: (get(api, "httproutes", "echo", ns).get("status") or {}).get("parents"),
                       what="HTTPRoute status.parents")
    assert route[0]["controllerName"] == CONTROLLER
    assert cond(route[0]["conditions"], "Accepted")["status"] == "True"
    assert cond(route[0]["conditions"], "ResolvedRefs")["status"] == "True"
    assert f"{addr}:443" in controller.listening()

    # What kubectl shows is what the API server stores, not something the test computed.
    shown = cluster.kubectl("get", "gateway", "-n", ns, "mtls", "-o",
                            "jsonpath={.status.addresses[0].value} {.status.conditions[?(@.type=='Programmed')].status}")
    assert shown.stdout == f"{addr} True"

    status, body = https_get(pki, addr)
    assert status == 200 and body["backend"] == backend[2], body
    assert body["headers"]["x-refgateway-client-verify"] == "SUCCESS"

    # No certificate: TLS 1.3 completes the client side, the alert comes with the first read.
    with pytest.raises(ssl.SSLError) as info:
        https_get(pki, addr, cert=None)
    assert info.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED", info.value
    with pytest.raises(ssl.SSLError) as info:
        https_get(pki, addr, cert="untrusted")
    assert info.value.reason == "TLSV1_ALERT_UNKNOWN_CA", info.value


def test_spec_change_bumps_observed_generation(api, controller, backend, pki, ns):
    create_site(api, ns, pki, backend)
    before = programmed_gateway(api, ns)
    accepted_at = cond(before["status"]["conditions"], "Accepted")["lastTransitionTime"]
    addr = before["status"]["addresses"][0]["value"]
    body = gateway_body("mtls", port=8443)
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, "v1", ns, "gateways", "mtls", {"spec": {"listeners": body["spec"]["listeners"]}})
    after = programmed_gateway(api, ns, generation=2)
    assert all(c["observedGeneration"] == 2 for c in after["status"]["conditions"])
    assert all(c["observedGeneration"] == 2 for c in after["status"]["listeners"][0]["conditions"])
    # Unchanged status: the transition time stays; the address is the Gateway's, not the port's.
    assert cond(after["status"]["conditions"], "Accepted")["lastTransitionTime"] == accepted_at
    assert after["status"]["addresses"] == before["status"]["addresses"]
    wait_until(lambda: f"{addr}:443" not in controller.listening() and f"{addr}:8443" in controller.listening(),
               what="the listener to move from 443 to 8443")
    assert https_get(pki, addr, 8443)[0] == 200


def test_route_status_keeps_other_controllers_entries(api, controller, backend, pki, ns):
    create_site(api, ns, pki, backend)
    programmed_gateway(api, ns)
    co = client.CustomObjectsApi(api)
    wait_until(lambda: (get(api, "httproutes", "echo", ns).get("status") or {}).get("parents"),
               what="HTTPRoute status.parents")
    route = get(api, "httproutes", "echo", ns)
    foreign = {"parentRef": {"group": GROUP, "kind": "Gateway", "name": "elsewhere"},
               "controllerName": "example.com/other",
               "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                               "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    route["status"]["parents"].append(foreign)
    co.replace_namespaced_custom_object_status(GROUP, "v1", ns, "httproutes", "echo", route)
    # A spec change makes refgateway rewrite its own entry (generation 2)...
    co.patch_namespaced_custom_object(GROUP, "v1", ns, "httproutes", "echo",
                                      {"spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/hello"}}],
                                                           "backendRefs": [{"name": "echo", "port": 8080}]}]}})

    def rewritten():
        parents = get(api, "httproutes", "echo", ns)["status"]["parents"]
        ours = [p for p in parents if p["controllerName"] == CONTROLLER]
        return parents if ours and cond(ours[0]["conditions"], "Accepted")["observedGeneration"] == 2 else None
    parents = wait_until(rewritten, what="refgateway's parents[] entry at generation 2")
    # ...and leaves the other controller's entry as it was.
    assert foreign in parents and len(parents) == 2


def test_deleting_gateway_closes_its_listeners(api, controller, backend, pki, ns):
    create_site(api, ns, pki, backend)
    addr = programmed_gateway(api, ns)["status"]["addresses"][0]["value"]
    assert f"{addr}:443" in controller.listening()
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, "v1", ns, "gateways", "mtls")
    wait_until(lambda: not any(a.startswith(f"{addr}:") for a in controller.listening()),
               what=f"the listeners on {addr} to close")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((addr, 443), timeout=2)
    # The route's entry for a Gateway that is gone is removed, not left stale.
    wait_until(lambda: not (get(api, "httproutes", "echo", ns).get("status") or {}).get("parents"),
               what="the HTTPRoute's parents[] entry to be removed")


def test_busy_port_is_reported_and_sigterm_stops_cleanly(cluster, api, backend, pki, ns, tmp_path):
    """A second controller (own class, admin identity) with one fixed listen address."""
    controller_name = "mtls-conformance.dev/refgateway-fixed"
    co = client.CustomObjectsApi(api)
    co.create_cluster_custom_object(GROUP, "v1", "gatewayclasses", {
        "apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": "refgateway-fixed"},
        "spec": {"controllerName": controller_name}})
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    c = Controller(Path(cluster.kubeconfig), tmp_path / "controller.log",
                   "--controller-name", controller_name, "--listen-address", "127.0.0.1")
    try:
        gw = gateway_body("fixed", port=busy)
        gw["spec"]["gatewayClassName"] = "refgateway-fixed"
        gw["spec"]["listeners"].append({"name": "http", "port": 0, "protocol": "HTTP"})
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        gw["spec"]["listeners"][1]["port"] = free_port = free.getsockname()[1]
        free.close()
        create_site(api, ns, pki, backend, gw_name=None)
        co.create_namespaced_custom_object(GROUP, "v1", ns, "gateways", gw)

        def reported():
            st = get(api, "gateways", "fixed", ns).get("status") or {}
            return st if len(st.get("listeners") or []) == 2 and st.get("addresses") else None
        st = wait_until(reported, what="status of Gateway fixed")
        assert st["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
        https, http = st["listeners"]
        assert cond(https["conditions"], "Accepted")["reason"] == "PortUnavailable"
        programmed = cond(https["conditions"], "Programmed")
        assert programmed["status"] == "False"
        assert f"cannot listen on 127.0.0.1:{busy}: Address already in use" in programmed["message"]
        assert cond(http["conditions"], "Programmed")["status"] == "True"
        assert cond(st["conditions"], "Programmed")["status"] == "True"
        assert c.listening() == [f"127.0.0.1:{free_port}"]

        took = c.stop()
    finally:
        c.stop()
        blocker.close()
    assert c.proc.returncode == 0, c.log.read_text()
    assert took < 5, f"SIGTERM took {took:.1f}s"
    assert "stopped" in c.log.read_text().splitlines()[-1]
    leftover = subprocess.run(["pgrep", "-g", str(c.proc.pid)], capture_output=True, text=True).stdout
    assert not leftover, f"processes left in the controller's group: {leftover}"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free_port), timeout=2)


def test_in_cluster_mode_gives_each_gateway_a_service_of_its_own(cluster, api, sa_kubeconfig, backend, pki, ns,
                                                                   tmp_path):
    """deploy/refgateway's mode (--service-namespace), as its ServiceAccount: two Gateways
    on port 443 are both programmed, each reporting the ClusterIP of its own Service in
    the controller's namespace (GEP-1762's gateway-name label), which sends 443 to the
    internal port serving that Gateway. A restart keeps the Services as they are; a
    Gateway's Service goes with it, also when it went while the controller was down."""
    controller_name = "mtls-conformance.dev/refgateway-services"
    selector = "app.kubernetes.io/name=refgateway-services-test"
    co, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    co.create_cluster_custom_object(GROUP, "v1", "gatewayclasses", {
        "apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": "refgateway-services"},
        "spec": {"controllerName": controller_name}})
    args = ("--controller-name", controller_name, "--listen-address", "127.0.0.1",
            "--service-namespace", "refgateway-system", "--service-selector", selector)

    def services() -> dict[str, dict]:
        items = core.list_namespaced_service("refgateway-system", label_selector=(
            f"app.kubernetes.io/managed-by=refgateway,refgateway.mtls-conformance.dev/gateway-namespace={ns}"))
        return {s.metadata.labels["gateway.networking.k8s.io/gateway-name"]: api.sanitize_for_serialization(s)
                for s in items.items}

    create_site(api, ns, pki, backend, gw_name=None)
    for name in ("a", "b"):
        gw = gateway_body(name)
        gw["spec"]["gatewayClassName"] = "refgateway-services"
        co.create_namespaced_custom_object(GROUP, "v1", ns, "gateways", gw)
        co.create_namespaced_custom_object(GROUP, "v1", ns, "httproutes", {
            "apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute", "metadata": {"name": f"echo-{name}"},
            "spec": {"parentRefs": [{"name": name}], "hostnames": [HOST],
                     "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}]}})
    c = Controller(sa_kubeconfig, tmp_path / "controller.log", *args)
    try:
        gateways = {name: programmed_gateway(api, ns, name) for name in ("a", "b")}
        svcs = services()
        assert sorted(svcs) == ["a", "b"]
        targets = {}
        for name, gw in gateways.items():
            svc = svcs[name]
            assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": svc["spec"]["clusterIP"]}]
            assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "refgateway-services-test"}
            (port,) = svc["spec"]["ports"]
            assert port["port"] == 443
            targets[name] = port["targetPort"]
        assert len({gw["status"]["addresses"][0]["value"] for gw in gateways.values()}) == 2
        assert sorted(c.listening()) == sorted(f"127.0.0.1:{t}" for t in targets.values())
        for name, target in targets.items():
            status, body = https_get(pki, "127.0.0.1", target)
            assert status == 200 and body["path"] == "/hello", (name, body)
        c.stop()
        c = Controller(sa_kubeconfig, tmp_path / "controller-2.log", *args)
        wait_until(lambda: sorted(c.listening()) == sorted(f"127.0.0.1:{t}" for t in targets.values()),
                   what="the restarted controller on the same internal ports")
        assert {n: s["spec"]["ports"][0]["targetPort"] for n, s in services().items()} == targets
        assert {n: s["spec"]["clusterIP"] for n, s in services().items()} == {
            n: gw["status"]["addresses"][0]["value"] for n, gw in gateways.items()}
        co.delete_namespaced_custom_object(GROUP, "v1", ns, "gateways", "b")
        wait_until(lambda: sorted(services()) == ["a"], what="Gateway b's Service deleted with it")
        c.stop()
        co.delete_namespaced_custom_object(GROUP, "v1", ns, "gateways", "a")
        c = Controller(sa_kubeconfig, tmp_path / "controller-3.log", *args)
        wait_until(lambda: services() == {}, what="the Service of Gateway a, deleted while the controller was down")
    finally:
        c.stop()
        co.delete_cluster_custom_object(GROUP, "v1", "gatewayclasses", "refgateway-services")
    for log in tmp_path.glob("controller*.log"):
        assert "HTTP 403" not in log.read_text(), log.read_text()


def test_reflector_follows_changes_across_watch_reconnects(cluster, api, ns, monkeypatch):
    """The server ends every watch after timeoutSeconds; the reflector resumes without losing events."""
    from refgateway import _kube_api, _kube_informer

    monkeypatch.setattr(_kube_informer, "WATCH_SECONDS", (1, 1))
    kube = _kube_api.connect(str(cluster.kubeconfig), None)
    stop = threading.Event()
    cache = _kube_informer.Cache(lambda: None)
    r = _kube_informer.Reflector(kube, (_kube_api.Resource("ConfigMap", "v1", "configmaps", True),), cache, stop)
    r.start()
    try:
        assert r.synced.wait(10), "no first list"
        core = client.CoreV1Api(api)
        core.create_namespaced_config_map(ns, {"metadata": {"name": "a"}, "data": {"k": "1"}})
        wait_until(lambda: cache.get(("ConfigMap", ns, "a")), what="ConfigMap a in the cache")
        first = wait_until(lambda: r._resp, what="a watch in progress")
        wait_until(lambda: r._resp is not None and r._resp is not first, what="the watch to be resumed")
        core.patch_namespaced_config_map("a", ns, {"data": {"k": "2"}})
        core.create_namespaced_config_map(ns, {"metadata": {"name": "b"}})
        core.delete_namespaced_config_map("b", ns)
        wait_until(lambda: (cache.get(("ConfigMap", ns, "a")) or {}).get("data") == {"k": "2"},
                   what="the change to ConfigMap a")
        wait_until(lambda: ("ConfigMap", ns, "b") not in cache.snapshot() and r._resp is not None,
                   what="ConfigMap b gone from the cache")
    finally:
        stop.set()
        r.close()
        r.join(5)
        kube.close()
    assert not r.is_alive(), "the reflector thread did not stop"


def test_a_status_write_answered_after_the_delete_does_not_bring_the_gateway_back(cluster, api, ns, monkeypatch):
    """A Gateway deleted while its status write is on the way: the watch's DELETED event
    may come before the write's answer. The answer must not put the Gateway back in the
    cache, or refgateway serves it, and keeps its Service, until the next full list (CI
    on the node tier: a deleted Gateway's Service still there 180 s later). The race is
    forced here: the write's answer is handed back only once the reflector has seen the
    delete."""
    from refgateway import _kube_api, _kube_informer, _kube_status

    kube = _kube_api.connect(str(cluster.kubeconfig), None)
    stop = threading.Event()
    cache = _kube_informer.Cache(lambda: None)
    r = _kube_informer.Reflector(kube, (_kube_api.Resource("Gateway", f"{GROUP}/v1", "gateways", True),), cache, stop)
    r.start()
    key = ("Gateway", ns, "doomed")
    co = client.CustomObjectsApi(api)
    real_request = _kube_status.request

    def request_then_delete(api_, method, path, **kw):
        answer = real_request(api_, method, path, **kw)
        if method == "PATCH" and path.endswith("/doomed/status"):
            co.delete_namespaced_custom_object(GROUP, "v1", ns, "gateways", "doomed")
            wait_until(lambda: key not in cache.snapshot(), what="the reflector to see the delete")
        return answer

    monkeypatch.setattr(_kube_status, "request", request_then_delete)
    try:
        assert r.synced.wait(10), "no first list"
        co.create_namespaced_custom_object(GROUP, "v1", ns, "gateways", gateway_body("doomed"))
        wait_until(lambda: cache.get(key), what="Gateway doomed in the cache")
        writer = _kube_status.StatusWriter(kube, cache, CONTROLLER, frozenset())
        accepted = {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                    "observedGeneration": 1}
        assert writer.sync({key: {"status": {"conditions": [accepted]}}})
        assert writer.writes == 1, "the status write did not happen"
        assert key not in cache.snapshot(), "the write's answer brought the deleted Gateway back into the cache"
    finally:
        stop.set()
        r.close()
        r.join(5)
        kube.close()


def test_privileged_port_without_capability_is_port_unavailable(cluster, api, backend, pki, ns, tmp_path):
    """Without CAP_NET_BIND_SERVICE, a listener on 443 is reported, not silently missing."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_NET_BIND_SERVICE")
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 443:
        pytest.skip("net.ipv4.ip_unprivileged_port_start allows anyone to bind 443 here")
    controller_name = "mtls-conformance.dev/refgateway-nocap"
    client.CustomObjectsApi(api).create_cluster_custom_object(GROUP, "v1", "gatewayclasses", {
        "apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": "refgateway-nocap"},
        "spec": {"controllerName": controller_name}})
    c = Controller(Path(cluster.kubeconfig), tmp_path / "controller.log", "--controller-name", controller_name,
                   prefix=("setpriv", "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service"))
    try:
        create_site(api, ns, pki, backend, gw_name=None)
        gw = gateway_body("nocap")
        gw["spec"]["gatewayClassName"] = "refgateway-nocap"
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, "v1", ns, "gateways", gw)

        def reported():
            st = get(api, "gateways", "nocap", ns).get("status") or {}
            return st if cond((st.get("listeners") or [{}])[0].get("conditions"), "Programmed") else None
        st = wait_until(reported, what="status of Gateway nocap")
        (ls,) = st["listeners"]
        addr = st["addresses"][0]["value"]
        expected = (f"cannot listen on {addr}:443: Permission denied "
                    "(ports below 1024 need root or CAP_NET_BIND_SERVICE)")
        assert cond(ls["conditions"], "Programmed") | {"lastTransitionTime": None} == {
            "type": "Programmed", "status": "False", "reason": "Invalid", "message": expected,
            "observedGeneration": 1, "lastTransitionTime": None}
        assert cond(ls["conditions"], "Accepted")["reason"] == "PortUnavailable"
        assert cond(st["conditions"], "Programmed")["status"] == "False"
        assert c.listening() == []
        assert expected in c.log.read_text()
    finally:
        c.stop()


def test_restart_rewrites_nothing_and_keeps_the_address(cluster, api, backend, pki, ns, tmp_path):
    controller_name = "mtls-conformance.dev/refgateway-restart"
    client.CustomObjectsApi(api).create_cluster_custom_object(GROUP, "v1", "gatewayclasses", {
        "apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": "refgateway-restart"},
        "spec": {"controllerName": controller_name}})
    args = (Path(cluster.kubeconfig),)
    first = Controller(*args, tmp_path / "first.log", "--controller-name", controller_name)
    try:
        create_site(api, ns, pki, backend, gw_name=None)
        gw = gateway_body("restart")
        gw["spec"]["gatewayClassName"] = "refgateway-restart"
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, "v1", ns, "gateways", gw)
        before = programmed_gateway(api, ns, "restart")
    finally:
        first.stop()
    second = Controller(*args, tmp_path / "second.log", "--controller-name", controller_name)
    try:
        wait_until(lambda: "reloaded:" in second.log.read_text(), what="the second controller's first reload")
        addr = before["status"]["addresses"][0]["value"]
        assert second.listening() == [f"{addr}:443"]
        assert https_get(pki, addr)[0] == 404  # served again (no HTTPRoute for this Gateway)
        assert get(api, "gateways", "restart", ns)["status"] == before["status"]
        assert "written" not in second.log.read_text()  # same status, same lastTransitionTimes: no writes
    finally:
        second.stop()


def test_reflector_lists_again_after_410_gone(monkeypatch, caplog):
    """A watch from a compacted resourceVersion gets 410 Gone; the reflector lists again.

    The API server's watch cache would hide the compaction, so this cluster has none.
    """
    import urllib.request

    from refgateway import _kube_api, _kube_informer

    monkeypatch.setattr(_kube_informer, "WATCH_SECONDS", (1, 1))
    caplog.set_level("INFO", logger="refgateway")
    with TestCluster(crds=None, extra_apiserver_args=["--watch-cache=false"]) as bare:
        core = client.CoreV1Api(bare.api_client())
        kube = _kube_api.connect(str(bare.kubeconfig), None)
        stop = threading.Event()
        cache = _kube_informer.Cache(lambda: None)
        r = _kube_informer.Reflector(kube, (_kube_api.Resource("ConfigMap", "v1", "configmaps", True),), cache, stop)
        r.start()
        try:
            assert r.synced.wait(10), "no first list"
            core.create_namespaced_config_map("default", {"metadata": {"name": "before"}})
            wait_until(lambda: cache.get(("ConfigMap", "default", "before")), what="ConfigMap before")
            # Move etcd on without touching ConfigMaps, then compact: the reflector's
            # resourceVersion (its last ConfigMap event) is now gone.
            for i in range(3):
                core.create_namespaced_secret("default", {"metadata": {"name": f"s{i}"}})

            def etcd(path: str, body: dict) -> dict:
                req = urllib.request.Request(bare.etcd_url + path, data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return json.load(resp)
            revision = etcd("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"]
            etcd("/v3/kv/compaction", {"revision": revision, "physical": True})
            wait_until(lambda: "resourceVersion expired; listing again" in caplog.text, timeout=15,
                       what="the reflector to see 410 Gone")
            core.create_namespaced_config_map("default", {"metadata": {"name": "after"}})
            wait_until(lambda: cache.get(("ConfigMap", "default", "after")), what="ConfigMap after the relist")
            assert cache.get(("ConfigMap", "default", "before"))
        finally:
            stop.set()
            r.close()
            r.join(5)
            kube.close()
        assert not r.is_alive(), "the reflector thread did not stop"


def test_without_the_cluster_trust_bundle_api_the_feature_is_not_advertised(pki, tmp_path):
    """GEP-5075 "API Availability": where certificates.k8s.io serves no ClusterTrustBundle,
    the controller runs on, does not claim the feature, and a ref to one is an invalid kind."""
    off = "--runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=false"
    with TestCluster(extra_apiserver_args=[off]) as bare:
        assert bare.request("/apis/certificates.k8s.io/v1beta1/clustertrustbundles")[0] == 404
        api = bare.api_client()
        core, co = client.CoreV1Api(api), client.CustomObjectsApi(api)
        co.create_cluster_custom_object(GROUP, "v1", "gatewayclasses", {
            "apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": "refgateway"},
            "spec": {"controllerName": CONTROLLER}})
        ns = f"rgw-{uuid.uuid4().hex[:8]}"
        core.create_namespace({"metadata": {"name": ns}})
        server = pki["server"]
        core.create_namespaced_secret(ns, {
            "metadata": {"name": "server-cert"}, "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(b"".join(b.bytes() for b in server.cert_chain_pems)),
                     "tls.key": b64(server.private_key_pem.bytes())}})
        body = gateway_body("ctb", port=8443)
        body["spec"]["tls"]["frontend"]["default"]["validation"]["caCertificateRefs"] = [
            {"group": "certificates.k8s.io", "kind": "ClusterTrustBundle", "name": "corporate-roots"}]
        co.create_namespaced_custom_object(GROUP, "v1", ns, "gateways", body)
        ctl = Controller(Path(bare.kubeconfig), tmp_path / "controller.log")
        try:
            def listener_conditions():
                gw = get(api, "gateways", "ctb", ns)
                for ls in (gw.get("status") or {}).get("listeners") or []:
                    conds = {c["type"]: (c["status"], c["reason"]) for c in ls["conditions"]}
                    if conds.get("ResolvedRefs", ("", ""))[0] == "False":
                        return conds
                return None
            conds = wait_until(listener_conditions, what="listener ResolvedRefs=False")
            assert conds["ResolvedRefs"] == ("False", "InvalidCACertificateKind")
            assert conds["Accepted"] == ("False", "NoValidCACertificate")
            # The GatewayClass status is its own write, which may land after the Gateway's.
            gc = wait_until(lambda: (lambda g: g if (g.get("status") or {}).get("supportedFeatures") else None)(
                get(api, "gatewayclasses", "refgateway")), what="GatewayClass refgateway supportedFeatures")
            names = {f["name"] for f in gc["status"]["supportedFeatures"]}
            assert "GatewayFrontendClientCertificateValidation" in names and "ClusterTrustBundle" not in names
        finally:
            ctl.stop()
