"""A real kube-apiserver backed by a real etcd, for the project's own tests.

    with TestCluster() as cluster:
        api = cluster.api_client()          # kubernetes.client.ApiClient, admin
        ...

or, for a human:

    python -m testkit.testcluster up        # prints: export KUBECONFIG=...
    kubectl get crds
    python -m testkit.testcluster down

What it is: etcd and kube-apiserver (built from the Go module proxy by
``tools/apiserver/build.sh`` into a cache dir outside the repo), started on free
loopback ports with a throwaway data dir, plus the Gateway API CRDs (standard
channel by default) and the ClusterTrustBundle API (certificates.k8s.io/v1beta1, which
Kubernetes v1.35 serves only when asked to; GEP-5075 caCertificateRefs name them). CRD schema and CEL validation, defaulting, the status
subresource, watches, ``metadata.generation`` and RBAC are the real thing.

What it is not: there is no kube-controller-manager, scheduler or kubelet, so
nothing that a controller does happens by itself:

- Deleting a Namespace never finishes (it stays ``Terminating``): nothing empties
  it. Delete namespaced objects explicitly, or use
  :meth:`TestCluster.delete_namespace`, which empties the namespace and then
  finalizes it, doing the namespace controller's job. Easiest: use a fresh,
  uniquely named namespace per test and never delete it; the whole cluster is
  thrown away at :meth:`TestCluster.stop`.
- No garbage collection: ownerReferences do not cascade.
- No EndpointSlices are made from Services: callers write them. The API server
  rejects loopback addresses (127.0.0.0/8, ::1) in EndpointSlices (and
  Endpoints) with ``may not be in the loopback range``; see
  ``tests/cluster/test_testcluster.py``.
- No ServiceAccount token controller and no ``default`` ServiceAccount; the
  ServiceAccount admission plugin is disabled so that Pods could be created at
  all (they are never run). The TokenRequest API works for ServiceAccounts you
  create, since the cluster has a signing key.

Authentication is a static bearer token for user ``admin`` in group
``system:masters``; authorization is RBAC (``system:masters`` is a superuser),
so other identities can be given real, limited rights.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Iterable, Sequence

from testkit.procs import ROOT as REPO_ROOT, BuildFailed, run_build, signal_group, spawn, stop_process_group

__all__ = [
    "TestCluster",
    "ClusterStartError",
    "GoNotInstalled",
    "go_available",
    "ensure_binaries",
    "cache_dir",
    "gateway_api_version",
    "GATEWAY_CRDS",
]

TOOLS_DIR = REPO_ROOT / "tools" / "apiserver"
BUILD_SCRIPT = "tools/apiserver/build.sh"
BUILD_SH = REPO_ROOT / BUILD_SCRIPT
BUILD_COMMAND = f"bash {BUILD_SCRIPT}"

#: Gateway API CRDs that tests can count on in the standard channel.
GATEWAY_CRDS = (
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
    "referencegrants.gateway.networking.k8s.io",
    "backendtlspolicies.gateway.networking.k8s.io",
)

ADMIN_USER = "admin"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


class GoNotInstalled(RuntimeError):
    """The binaries are not built and there is no Go toolchain to build them."""


class ClusterStartError(RuntimeError):
    """etcd or kube-apiserver did not come up (the message has their log tail)."""


def _log(stream: IO[str] | None, msg: str) -> None:
    if stream is not None:
        print(f"[testcluster] {msg}", file=stream, flush=True)


# --------------------------------------------------------------------------- binaries


def go_available() -> bool:
    return shutil.which("go") is not None


def _cache_root() -> Path:
    if os.environ.get("MTLS_APISERVER_CACHE"):
        return Path(os.environ["MTLS_APISERVER_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "mtls-conformance"


def _pinned_versions() -> tuple[str, str]:
    """(kubernetes, etcd) versions, read from tools/apiserver/go.mod without Go."""
    text = (TOOLS_DIR / "go.mod").read_text()
    k8s = re.search(r"^\s*k8s\.io/kubernetes\s+(v\S+)", text, re.M)
    etcd = re.search(r"^\s*go\.etcd\.io/etcd/server/v3\s+(v\S+)", text, re.M)
    if not (k8s and etcd):
        raise RuntimeError(f"cannot read pinned versions from {TOOLS_DIR / 'go.mod'}")
    return k8s.group(1), etcd.group(1)


def gateway_api_version() -> str:
    """The Gateway API release whose CRDs build.sh fetches: $GATEWAY_API_VERSION, else
    build.sh's default (read from the script, so that the version lives in one place)."""
    if os.environ.get("GATEWAY_API_VERSION"):
        return os.environ["GATEWAY_API_VERSION"]
    found = re.search(r'^GATEWAY_API_VERSION="\$\{GATEWAY_API_VERSION:-(v[^}"]+)\}"', BUILD_SH.read_text(), re.M)
    if not found:
        raise RuntimeError(f"cannot read the default GATEWAY_API_VERSION from {BUILD_SH}")
    return found.group(1)


def crd_dir(d: Path) -> Path:
    """The CRDs of this Gateway API version in a cache dir: crds/<version>/{standard,experimental}."""
    return d / "crds" / gateway_api_version()


def cache_dir() -> Path:
    """Where build.sh puts bin/ and crds/ (it may not exist yet)."""
    if os.environ.get("MTLS_APISERVER_DIR"):
        return Path(os.environ["MTLS_APISERVER_DIR"])
    k8s, etcd = _pinned_versions()
    return _cache_root() / f"apiserver-{k8s}-etcd-{etcd}"


def _complete(d: Path) -> bool:
    return (
        (d / "bin" / "kube-apiserver").is_file()
        and (d / "bin" / "etcd").is_file()
        and (crd_dir(d) / "standard").is_dir()
    )


def ensure_binaries(log: IO[str] | None = sys.stderr) -> Path:
    """Return the cache dir with bin/{etcd,kube-apiserver[,kubectl]} and crds/.

    Runs tools/apiserver/build.sh when anything is missing (it is idempotent and
    does nothing when everything is there). A cold build of kube-apiserver takes
    many minutes; build.sh reports progress on stderr. Set MTLS_APISERVER_DIR to
    use a prebuilt dir instead.
    """
    if os.environ.get("MTLS_APISERVER_DIR"):
        d = Path(os.environ["MTLS_APISERVER_DIR"])
        if not _complete(d):
            raise RuntimeError(f"MTLS_APISERVER_DIR={d} lacks bin/kube-apiserver, bin/etcd or "
                               f"crds/{gateway_api_version()}/standard")
        return d
    d = cache_dir()
    if not go_available():
        if _complete(d):
            return d
        raise GoNotInstalled(
            "kube-apiserver and etcd are not built and Go is not installed. "
            f"Install Go >= 1.25, then run: {BUILD_COMMAND}"
        )
    if _complete(d):
        # Cheap check of kubectl/CRD version too: build.sh exits at once if all is there.
        with contextlib.suppress(BuildFailed):
            run_build(BUILD_SCRIPT, "--check", what="kube-apiserver and etcd", log=None)
            return d
    _log(log, f"building kube-apiserver and etcd with {BUILD_COMMAND} (a cold build takes 10+ minutes)")
    out = run_build(BUILD_SCRIPT, what="kube-apiserver and etcd", log=log)
    if not _complete(out):
        raise RuntimeError(f"{BUILD_COMMAND} finished but {out} is incomplete")
    return out


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(data[-lines:])


def _write_pki(d: Path) -> dict[str, Path]:
    """CA, serving cert for 127.0.0.1/localhost/kubernetes.default..., SA key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mtls-conformance testcluster CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    sans = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ] + [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts())),
    ]
    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    files = {
        "ca": d / "ca.crt",
        "cert": d / "apiserver.crt",
        "key": d / "apiserver.key",
        "sa_key": d / "sa.key",
        "sa_pub": d / "sa.pub",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(pem_key(srv_key))
    files["sa_key"].write_bytes(pem_key(sa_key))
    files["sa_pub"].write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for k in ("key", "sa_key"):
        files[k].chmod(0o600)
    return files


# --------------------------------------------------------------------------- the cluster


class TestCluster:
    """etcd + kube-apiserver on loopback, with the Gateway API CRDs installed.

    Parameters:
        crds: "standard" (default), "experimental", or None for no Gateway API CRDs.
        authorization: kube-apiserver --authorization-mode ("RBAC" or "AlwaysAllow").
        startup_timeout: seconds to wait for each of etcd, /readyz and the CRDs.
        extra_apiserver_args: appended to the kube-apiserver command line.
        log: where progress goes (stderr by default; None for silence).
        detached: leave the processes running when this Python process exits
            (for the CLI's ``up``); otherwise they get SIGTERM if it dies
            (testkit.procs.spawn: set only from the main thread, as pytest
            fixtures run; a cluster started from another thread relies on stop()).
        keep_tmp: do not remove the tmp dir (data, certs, logs) at stop().
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        crds: str | None = "standard",
        authorization: str = "RBAC",
        startup_timeout: float = 120.0,
        extra_apiserver_args: Sequence[str] = (),
        log: IO[str] | None = sys.stderr,
        detached: bool = False,
        keep_tmp: bool = False,
    ) -> None:
        if crds not in (None, "standard", "experimental"):
            raise ValueError(f"crds must be 'standard', 'experimental' or None, not {crds!r}")
        self.crds = crds
        self.authorization = authorization
        self.startup_timeout = startup_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.log = log
        self.detached = detached
        self.keep_tmp = keep_tmp or bool(os.environ.get("MTLS_TESTCLUSTER_KEEP"))

        self.dir: Path | None = None  # the tmp dir
        self.bin_dir: Path | None = None
        self.crd_dir: Path | None = None
        self.etcd_port = self.etcd_peer_port = self.port = 0
        self.token = secrets.token_hex(24)
        self.kubeconfig: Path | None = None
        self.ca_file: Path | None = None
        self.installed_crds: list[str] = []
        self.skipped_manifests: list[str] = []
        self._procs: dict[str, subprocess.Popen] = {}
        self._logfiles: list[IO[bytes]] = []
        self._clients: list = []

    # ----------------------------------------------------------------- properties

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs.items()}

    @property
    def ports(self) -> list[int]:
        return [p for p in (self.port, self.etcd_port, self.etcd_peer_port) if p]

    @property
    def kubectl_path(self) -> Path | None:
        p = self.bin_dir / "kubectl" if self.bin_dir else None
        return p if p and p.is_file() else None

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> "TestCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "TestCluster":
        if self._procs:
            raise RuntimeError("TestCluster already started")
        cache = ensure_binaries(self.log)
        self.bin_dir, self.crd_dir = cache / "bin", crd_dir(cache)
        self.dir = Path(tempfile.mkdtemp(prefix="mtls-testcluster-"))
        t0 = time.monotonic()
        try:
            pki = _write_pki(self.dir)
            self.ca_file = pki["ca"]
            (self.dir / "tokens.csv").write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
            (self.dir / "tokens.csv").chmod(0o600)
            for attempt in range(3):  # a free port can be taken between probe and bind
                try:
                    self._start_etcd()
                    self._start_apiserver(pki)
                    break
                except _PortTaken as e:
                    _log(self.log, f"{e}; retrying on other ports")
                    self._kill_all()
            else:
                raise ClusterStartError("could not find free loopback ports after 3 attempts")
            self._write_kubeconfig()
            if self.crds:
                self.install_gateway_crds(self.crds)
            _log(self.log, f"cluster ready at {self.server} in {time.monotonic() - t0:.1f}s")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop etcd and kube-apiserver (their process groups) and remove the tmp dir."""
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()
        self._kill_all()
        for f in self._logfiles:
            with contextlib.suppress(Exception):
                f.close()
        self._logfiles.clear()
        if self.dir is not None and not self.keep_tmp:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.dir is not None:
            _log(self.log, f"kept {self.dir}")

    def _kill_all(self) -> None:
        # kube-apiserver first: it shuts down in about a second, but hangs retrying
        # etcd for much longer if etcd goes first. SIGTERM, then SIGKILL.
        for name in ("kube-apiserver", "etcd"):
            p = self._procs.pop(name, None)
            if p is None:
                continue
            stop_process_group(p)
        self._procs.clear()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        assert self.dir is not None
        logf = open(self.dir / f"{name}.log", "ab")
        self._logfiles.append(logf)
        # A session of its own (stop() ends the group), and SIGTERM if we die unless detached.
        p = (subprocess.Popen if self.detached else spawn)(
            argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=self.dir,
            start_new_session=True)
        self._procs[name] = p
        return p

    def _check_alive(self, name: str) -> None:
        p = self._procs[name]
        if p.poll() is not None:
            assert self.dir is not None
            tail = _tail(self.dir / f"{name}.log")
            if re.search(r"address already in use", tail):
                raise _PortTaken(f"{name}: address already in use")
            raise ClusterStartError(f"{name} exited with code {p.returncode}; last log lines:\n{tail}")

    def _start_etcd(self) -> None:
        assert self.dir is not None and self.bin_dir is not None
        self.etcd_port, self.etcd_peer_port = _free_port(), _free_port()
        data = self.dir / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=testcluster",
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=testcluster={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # throwaway data: no fsync makes it much faster
                "--log-level=warn",
            ],
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            self._check_alive("etcd")
            try:
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"etcd not healthy after {self.startup_timeout:.0f}s; last log lines:\n"
                    + _tail(self.dir / "etcd.log")
                )
            time.sleep(0.1)

    def apiserver_args(self, pki: dict[str, Path]) -> list[str]:
        assert self.dir is not None and self.bin_dir is not None
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.dir / 'certs'}",  # never the default /var/run/kubernetes
            f"--tls-cert-file={pki['cert']}",
            f"--tls-private-key-file={pki['key']}",
            f"--client-ca-file={pki['ca']}",
            f"--token-auth-file={self.dir / 'tokens.csv'}",
            f"--authorization-mode={self.authorization}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki['sa_pub']}",
            f"--service-account-signing-key-file={pki['sa_key']}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # Without a controller-manager nothing creates the "default" ServiceAccount,
            # so the ServiceAccount plugin would reject every Pod. Everything else in the
            # default plugin set (NamespaceLifecycle, ResourceQuota, ValidatingAdmission-
            # Policy, webhooks, ...) works without controllers and stays on.
            "--disable-admission-plugins=ServiceAccount",
            # The apiserver would publish 127.0.0.1 as the "kubernetes" Service's
            # endpoint, which endpoint validation rejects (loopback); nothing needs it.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            # ClusterTrustBundle (GEP-5075 caCertificateRefs): beta and off by default in
            # Kubernetes v1.33 to v1.36, served as certificates.k8s.io/v1beta1 only with both
            # the feature gate and the beta resource enabled (v1 from v1.37).
            "--feature-gates=ClusterTrustBundle=true",
            "--runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true",
            *self.extra_apiserver_args,
        ]

    def _start_apiserver(self, pki: dict[str, Path]) -> None:
        assert self.dir is not None
        self.port = _free_port()
        self._spawn("kube-apiserver", self.apiserver_args(pki))
        self._wait_ready()

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, path: str, method: str = "GET", body: bytes | None = None, timeout: float = 10):
        """Raw authenticated HTTP request; returns (status, body bytes)."""
        req = urllib.request.Request(
            self.server + path,
            method=method,
            data=body,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context()) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _wait_ready(self) -> None:
        assert self.dir is not None
        t0 = time.monotonic()
        deadline = t0 + self.startup_timeout
        said = 0.0
        last = ""
        while True:
            self._check_alive("kube-apiserver")
            try:
                status, body = self.request("/readyz?verbose", timeout=5)
                if status == 200:
                    return
                last = body.decode(errors="replace")
            except (OSError, ssl.SSLError) as e:
                last = f"{type(e).__name__}: {e}"
            waited = time.monotonic() - t0
            if waited > 2 and waited - said >= 5:
                said = waited
                failing = [ln.strip() for ln in last.splitlines() if ln.startswith("[-]")]
                _log(self.log, f"waiting for kube-apiserver /readyz ({waited:.0f}s): "
                     + (", ".join(f.split()[0][3:] for f in failing) or last.strip()[:200]))
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"kube-apiserver not ready after {self.startup_timeout:.0f}s; last /readyz:\n{last}\n"
                    f"last log lines:\n{_tail(self.dir / 'kube-apiserver.log')}"
                )
            time.sleep(0.25)

    def _write_kubeconfig(self) -> None:
        assert self.dir is not None and self.ca_file is not None
        import yaml

        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testcluster",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [{"name": "testcluster", "context": {"cluster": "testcluster", "user": ADMIN_USER}}],
            "current-context": "testcluster",
        }
        self.kubeconfig = self.dir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    # ----------------------------------------------------------------- clients

    def api_client(self):
        """A new kubernetes.client.ApiClient for the admin identity (closed at stop())."""
        from kubernetes import config

        if self.kubeconfig is None:
            raise RuntimeError("TestCluster not started")
        c = config.new_client_from_config(config_file=str(self.kubeconfig))
        self._clients.append(c)
        return c

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """Run the cached kubectl against this cluster (text output); with ``check``, a
        failure raises KubectlFailed, whose message is kubectl's command line and output."""
        if self.kubectl_path is None:
            raise RuntimeError("kubectl was not built (BUILD_KUBECTL=0?)")
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        proc = subprocess.run([str(self.kubectl_path), *args], env=env, input=input, text=True, capture_output=True)
        if check and proc.returncode != 0:
            raise KubectlFailed(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    # ----------------------------------------------------------------- CRDs

    def install_gateway_crds(self, channel: str = "standard", timeout: float | None = None) -> list[str]:
        """Create the Gateway API CRDs of a channel and wait until they are Established.

        The channel's ValidatingAdmissionPolicy (safe-upgrades) is created after the
        CRDs; if the API server refuses it, it is skipped (see .skipped_manifests).
        """
        import yaml
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        assert self.crd_dir is not None
        d = self.crd_dir / channel
        files = sorted(d.glob("*.yaml"))
        if not files:
            raise RuntimeError(f"no CRD files in {d}")
        api = self.api_client()
        ext = client.ApiextensionsV1Api(api)
        adm = client.AdmissionregistrationV1Api(api)
        names, later = [], []
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if not doc:
                    continue
                if doc.get("kind") == "CustomResourceDefinition":
                    try:
                        ext.create_custom_resource_definition(doc, _preload_content=False)
                    except ApiException as e:
                        if e.status != 409:
                            raise
                    names.append(doc["metadata"]["name"])
                else:
                    later.append((f.name, doc))
        self._wait_established(names, timeout or self.startup_timeout)
        creators = {
            "ValidatingAdmissionPolicy": adm.create_validating_admission_policy,
            "ValidatingAdmissionPolicyBinding": adm.create_validating_admission_policy_binding,
        }
        for fname, doc in later:
            what = f"{fname}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            create = creators.get(doc.get("kind"))
            if create is None:
                self.skipped_manifests.append(f"{what} (unsupported kind)")
                continue
            try:
                create(doc, _preload_content=False)
            except ApiException as e:
                if e.status != 409:
                    self.skipped_manifests.append(f"{what} ({e.status} {e.reason})")
                    _log(self.log, f"skipped {what}: {e.status} {e.reason}")
        self.installed_crds = names
        return names

    def _wait_established(self, names: Iterable[str], timeout: float) -> None:
        want = set(names)
        deadline = time.monotonic() + timeout
        pending = want
        while True:
            status, body = self.request("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
            if status == 200:
                served: dict[str, tuple[str, str, str]] = {}
                ok = set()
                for item in json.loads(body)["items"]:
                    conds = {c["type"]: c["status"] for c in item.get("status", {}).get("conditions") or []}
                    if conds.get("Established") == "True" and conds.get("NamesAccepted") == "True":
                        ok.add(item["metadata"]["name"])
                        spec = item["spec"]
                        ver = next(v["name"] for v in spec["versions"] if v.get("storage"))
                        served[item["metadata"]["name"]] = (spec["group"], ver, spec["names"]["plural"])
                pending = want - ok
                if not pending:
                    # Established means served; also wait for discovery (kubectl uses it).
                    groups = {(g, v) for g, v, _ in (served[n] for n in want)}
                    disc: dict[tuple[str, str], set[str]] = {}
                    for g, v in groups:
                        s, b = self.request(f"/apis/{g}/{v}")
                        disc[(g, v)] = {r["name"] for r in json.loads(b)["resources"]} if s == 200 else set()
                    pending = {n for n in want if served[n][2] not in disc[served[n][:2]]}
                    if not pending:
                        return
            if time.monotonic() > deadline:
                raise ClusterStartError(f"CRDs not established after {timeout:.0f}s: {sorted(pending)}")
            time.sleep(0.1)

    # ----------------------------------------------------------------- namespaces

    def delete_namespace(self, name: str, timeout: float = 30) -> None:
        """Do the namespace controller's job: delete everything in the namespace, then it.

        Deletes every namespaced resource type with the deletecollection verb, removes
        the namespace's spec.finalizers through the finalize subresource, and waits
        until the namespace is gone.
        """
        for path in self._namespaced_collections():
            self.request(f"{path[0]}/namespaces/{name}/{path[1]}", method="DELETE")
        s, _ = self.request(f"/api/v1/namespaces/{name}", method="DELETE")
        if s == 404:
            return
        deadline = time.monotonic() + timeout
        while True:
            s, b = self.request(f"/api/v1/namespaces/{name}")
            if s == 404:
                return
            ns = json.loads(b)
            if ns.get("spec", {}).get("finalizers"):
                ns["spec"]["finalizers"] = []
                self.request(f"/api/v1/namespaces/{name}/finalize", method="PUT", body=json.dumps(ns).encode())
            if time.monotonic() > deadline:
                raise TimeoutError(f"namespace {name} still exists after {timeout}s")
            time.sleep(0.1)

    def _namespaced_collections(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        prefixes = ["/api/v1"]
        s, b = self.request("/apis")
        if s == 200:
            prefixes += [f"/apis/{g['preferredVersion']['groupVersion']}" for g in json.loads(b)["groups"]]
        for prefix in prefixes:
            s, b = self.request(prefix)
            if s != 200:
                continue
            for r in json.loads(b)["resources"]:
                if r.get("namespaced") and "/" not in r["name"] and "deletecollection" in r.get("verbs", []):
                    if r["name"] != "events":
                        out.append((prefix, r["name"]))
        return out

    # ----------------------------------------------------------------- CLI state

    def state(self) -> dict:
        return {
            "dir": str(self.dir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "pids": self.pids,
            "ports": self.ports,
            "bin_dir": str(self.bin_dir),
        }


class _PortTaken(ClusterStartError):
    pass


class KubectlFailed(subprocess.CalledProcessError):
    """kubectl exited non-zero: the message has what it was asked and what it said."""

    def __str__(self) -> str:
        return f"kubectl {' '.join(self.cmd[1:])} exited {self.returncode}:\n{self.stdout}{self.stderr}"


# --------------------------------------------------------------------------- CLI


def _state_file(name: str) -> Path:
    return _cache_root() / "testclusters" / f"{name}.json"


def _ours(pid: int, marker: str) -> bool:
    """Is pid still a process that we started (its command line names our tmp dir)?"""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _down(name: str) -> int:
    sf = _state_file(name)
    if not sf.exists():
        print(f"no test cluster named {name!r} is up", file=sys.stderr)
        return 1
    st = json.loads(sf.read_text())
    pids = [st["pids"].get("kube-apiserver"), st["pids"].get("etcd")]
    live = [p for p in pids if p and _ours(p, st["dir"])]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in live:
            signal_group(p, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_ours(p, st["dir"]) for p in live):
            time.sleep(0.1)
    shutil.rmtree(st["dir"], ignore_errors=True)
    sf.unlink()
    print(f"stopped test cluster {name!r} (pids {', '.join(map(str, live)) or 'already gone'})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m testkit.testcluster",
        description="Start/stop a real kube-apiserver + etcd with the Gateway API CRDs on loopback.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a cluster in the background and print the export KUBECONFIG line")
    up.add_argument("--name", default="default")
    up.add_argument("--crds", choices=["standard", "experimental", "none"], default="standard")
    up.add_argument("--authorization", default="RBAC")
    up.add_argument("--foreground", action="store_true", help="stay in the foreground; Ctrl-C stops it")
    down = sub.add_parser("down", help="stop a cluster started with up")
    down.add_argument("--name", default="default")
    st = sub.add_parser("status", help="show the clusters started with up")
    st.add_argument("--name", default=None)
    sub.add_parser("build", help="build the binaries (tools/apiserver/build.sh) and print the cache dir")
    args = ap.parse_args(argv)

    if args.cmd == "build":
        print(ensure_binaries())
        return 0
    if args.cmd == "down":
        return _down(args.name)
    if args.cmd == "status":
        d = _cache_root() / "testclusters"
        files = sorted(d.glob("*.json")) if d.exists() else []
        for f in files:
            if args.name and f.stem != args.name:
                continue
            s = json.loads(f.read_text())
            alive = all(_ours(p, s["dir"]) for p in s["pids"].values())
            print(f"{f.stem}: {'up' if alive else 'DEAD'} {s['server']} KUBECONFIG={s['kubeconfig']}")
        return 0

    sf = _state_file(args.name)
    if sf.exists():
        s = json.loads(sf.read_text())
        if any(_ours(p, s["dir"]) for p in s["pids"].values()):
            print(f"test cluster {args.name!r} is already up:\nexport KUBECONFIG={s['kubeconfig']}")
            return 1
        sf.unlink()
    crds = None if args.crds == "none" else args.crds
    tc = TestCluster(crds=crds, authorization=args.authorization, detached=not args.foreground)
    tc.start()
    if args.foreground:
        print(f"export KUBECONFIG={tc.kubeconfig}", flush=True)
        if tc.kubectl_path:
            print(f"export PATH={tc.bin_dir}:$PATH", flush=True)
        print("# Ctrl-C to stop", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            tc.stop()
        return 0
    sf.parent.mkdir(parents=True, exist_ok=True)
    sf.write_text(json.dumps(tc.state(), indent=2))
    print(f"export KUBECONFIG={tc.kubeconfig}")
    if tc.kubectl_path:
        print(f"export PATH={tc.bin_dir}:$PATH")
    print(f"# stop with: python -m testkit.testcluster down --name {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
