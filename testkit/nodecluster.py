"""A one-node Kubernetes cluster on this machine, for the project's own tests.

    with NodeCluster() as cluster:          # root; see prerequisites() for the rest
        cluster.kubectl("get", "nodes")
        cluster.import_image("refgateway")  # what `kind load docker-image` does

or, for a human (root):

    python -m testkit.nodecluster up     # prints: export KUBECONFIG=...
    python -m testkit.nodecluster down

What it is: testkit.testcluster's kube-apiserver + etcd (reused, not copied:
NodeCluster is a TestCluster with the admission plugins and endpoint reconciler a
real cluster has), plus kube-controller-manager, kube-scheduler, kube-proxy and a
kubelet of the same Kubernetes version (tools/node/build.sh), Debian's containerd
with runc and the CNI bridge/host-local/portmap plugins, and the images of
tools/images/build.sh imported into containerd.

The node is a network namespace of its own, as a kind node is a container of its
own: containerd, the kubelet and kube-proxy run in it (nsenter --net, so they
share the host's mounts, which the kubelet's volumes need), with a veth pair to
the host. The node's address is its end of the pair (not loopback: the kubelet
refuses that, and the API server dials it for logs, exec and port-forward); pods
get addresses on the CNI bridge ``cni0`` inside the node namespace, and the host
reaches them through a route via the node. kube-proxy's iptables rules live in
the node namespace only, so nothing on the host's own firewall changes. Pods reach
the API server through the ``kubernetes`` Service (10.96.0.1), which kube-proxy
sends to the API server's address on the host end of the pair.

Stopping (also on Ctrl-C, and for whatever start() got done when it fails):
every pod is deleted through the API and the kubelet is given a bounded time to
stop them, then the kubelet, whatever containerd still runs (ctr), containerd,
kube-proxy and the controllers are stopped, mounts under the run's directories
and pod network namespaces are removed, the veth pair, the node namespace and the
route go with them, and then the API server and etcd stop (TestCluster.stop).
tests/node/test_nodecluster.py checks /proc, ``ip`` and the mount table after it.

One node cluster at a time on a machine (a file lock): two kubelets would share
/var/log/containers and the CNI plugins' host-wide state. A start that finds the
lock taken waits LOCK_WAIT seconds at most (a cluster that is stopping), then fails
naming the holder (pid, command line, since when), which LOCK_HOLDER records.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Sequence

from testkit import testcluster
from testkit.procs import run_build, stop_process_group
from testkit.testcluster import ClusterStartError, TestCluster

NODE_BUILD_SCRIPT = "tools/node/build.sh"
IMAGES_BUILD_SCRIPT = "tools/images/build.sh"
NODE_NAME = "mtls-node"
#: Addresses of the node's veth pair (a /30 per cluster) and of its pods (a /24).
NODE_LINK_RANGE = ipaddress.ip_network("10.251.0.0/16")
POD_RANGE = ipaddress.ip_network("10.244.0.0/16")
CNI_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
NETNS_PREFIX = "mtls-node-"
LOCK_FILE = Path(tempfile.gettempdir()) / "mtls-conformance-node.lock"
#: Who holds LOCK_FILE (JSON: pid, command line, since): a separate file, because the
#: lock file is truncated by every process that tries to take it.
LOCK_HOLDER = LOCK_FILE.with_name(LOCK_FILE.name + ".holder")
#: How long a start waits for another node cluster to let go: long enough for one that
#: is stopping, short enough that a test session does not sit out another's whole run.
LOCK_WAIT = 20.0
#: Images of tools/images/build.sh that a test can import: name -> image reference.
IMAGE_NAMES = ("pause", "refgateway", "mtls-echo", "echo-basic", "nginx")


class NodeUnavailable(RuntimeError):
    """This machine cannot run the node (not root, a package missing): the message says what to do."""


def prerequisites() -> list[str]:
    """What this machine lacks for a node cluster (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (containerd, the kubelet and network namespaces need it)")
    for tool, package in (("containerd", "containerd"), ("ctr", "containerd"), ("runc", "runc"),
                          ("ip", "iproute2"), ("nsenter", "util-linux"), ("iptables", "iptables"),
                          ("podman", "podman"), ("debootstrap", "debootstrap"), ("gcc", "gcc libc6-dev"),
                          ("go", "golang (Go >= 1.25)")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    for plugin in CNI_PLUGINS:
        if not (CNI_DIR / plugin).is_file():
            missing.append(f"{CNI_DIR / plugin} (apt-get install containernetworking-plugins)")
    return missing


def ensure_node_binaries(log: IO[str] | None = sys.stderr) -> Path:
    return run_build(NODE_BUILD_SCRIPT, what="kubelet, kube-controller-manager, kube-scheduler, kube-proxy",
                     log=log, error=ClusterStartError) / "bin"


def ensure_images(log: IO[str] | None = sys.stderr) -> dict[str, tuple[str, Path]]:
    """Build (or find cached) the images; name -> (image reference, docker-archive tarball)."""
    out = run_build(IMAGES_BUILD_SCRIPT, what="the images", log=log, error=ClusterStartError)
    images = {}
    for line in (out / "images.txt").read_text().splitlines():
        name, ref, tarball = line.split()
        images[name] = (ref, Path(tarball))
    return images


def normalized_ref(ref: str) -> str:
    """What containerd calls an image reference (docker.io/library/ for short names, as the kubelet asks)."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if rest else f"docker.io/library/{ref}"


def _run(*argv: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise ClusterStartError(f"`{' '.join(argv)}` failed ({proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc


def lock_holder() -> str:
    """Who holds LOCK_FILE, in words, from LOCK_HOLDER."""
    try:
        info = json.loads(LOCK_HOLDER.read_text())
        pid, command, since = int(info["pid"]), str(info["command"]), float(info["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that did not say who it is (no readable " + str(LOCK_HOLDER) + ")"
    started = datetime.datetime.fromtimestamp(since, datetime.timezone.utc).strftime("%H:%M:%S UTC")
    if pid == os.getpid():
        return f"this process (pid {pid}), since {started}: a second NodeCluster started before the first stopped"
    alive = Path(f"/proc/{pid}").exists()
    return (f"pid {pid} ({command[:200]}), since {started}, {time.time() - since:.0f} s ago"
            + ("" if alive else "; that pid is gone, so a child of it holds the lock now"))


def _mounts() -> list[str]:
    """Mount points, most nested first (the order to unmount them in)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        points.append(point)
    return sorted(points, key=len, reverse=True)


def _pod_netns() -> set[str]:
    d = Path("/run/netns")
    return {p.name for p in d.iterdir() if p.name.startswith("cni-")} if d.is_dir() else set()


class NodeCluster(TestCluster):
    """TestCluster + a real node (kubelet, containerd, kube-proxy) + controller-manager and scheduler.

    Parameters beyond TestCluster's:
        images: names from IMAGE_NAMES to import into containerd at start (all by default;
            ``pause`` always). Others can be imported later with import_image().
        node_timeout: seconds to wait for the Node to be Ready and the default
            ServiceAccount to exist.
        lock_wait: seconds to wait for another node cluster on this machine to stop
            (LOCK_WAIT by default) before failing with who holds the lock.
    """

    __test__ = False

    def __init__(self, *, images: Sequence[str] = IMAGE_NAMES, node_timeout: float = 180.0,
                 lock_wait: float | None = None, **kw) -> None:
        super().__init__(**kw)
        self.lock_wait = lock_wait
        unknown = set(images) - set(IMAGE_NAMES)
        if unknown:
            raise ValueError(f"unknown images {sorted(unknown)}; known: {', '.join(IMAGE_NAMES)}")
        self.want_images = ["pause", *[i for i in images if i != "pause"]]
        self.node_timeout = node_timeout
        self.run_id = os.urandom(3).hex()
        self.netns = f"{NETNS_PREFIX}{os.getpid()}-{self.run_id}"
        self.host_if, self.node_if = f"mn{self.run_id}h", f"mn{self.run_id}n"
        self.host_ip = self.node_ip = ""
        self.pod_cidr: ipaddress.IPv4Network | None = None
        self.node_bin: Path | None = None
        self.images: dict[str, tuple[str, Path]] = {}
        self.imported: dict[str, str] = {}
        self._lock = None
        self._netns_before: set[str] = set()
        self._node_kubeconfig: Path | None = None
        self._stopped_node = True

    # ----------------------------------------------------------------- paths
    @property
    def containerd_socket(self) -> Path:
        assert self.dir is not None
        return self.dir / "containerd" / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        """Images and snapshots, kept between runs: importing (and, with ext4's discard,
        deleting) a gigabyte of layers per run costs minutes. A run that could not clean
        up leaves containers there, which the next start removes."""
        return testcluster._cache_root() / "node-containerd"

    def _node_dirs(self) -> list[Path]:
        assert self.dir is not None
        return [self.dir / "kubelet", self.dir / "containerd", self.dir / "pod-logs"]

    # ----------------------------------------------------------------- start
    def start(self) -> "NodeCluster":
        missing = prerequisites()
        if missing:
            raise NodeUnavailable("a node cluster needs: " + "; ".join(missing))
        from filelock import FileLock, Timeout

        self._lock = FileLock(str(LOCK_FILE))
        lock_wait = LOCK_WAIT if self.lock_wait is None else self.lock_wait
        try:
            self._lock.acquire(timeout=lock_wait)
        except Timeout:
            self._lock = None
            raise ClusterStartError(
                f"another node cluster holds {LOCK_FILE} (waited {lock_wait:.0f} s): {lock_holder()}. One node "
                "cluster runs on a machine at a time: let that one finish, or stop it (Ctrl-C, or kill -INT "
                "its pid)") from None
        command = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        LOCK_HOLDER.write_text(json.dumps({"pid": os.getpid(), "command": command, "since": time.time()}))
        try:
            self.node_bin = ensure_node_binaries(self.log)
            self.images = ensure_images(self.log)
            self._make_network()
            # The API server with a real cluster's admission and endpoints; see apiserver_args.
            super().start()
            self._stopped_node = False
            t0 = time.monotonic()
            self._start_node()
            testcluster._log(self.log, f"node {NODE_NAME} ready at {self.node_ip} (pods {self.pod_cidr}) "
                             f"in {time.monotonic() - t0:.1f}s")
        except BaseException:
            self.stop()
            raise
        return self

    def _make_network(self) -> None:
        used_addrs = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", _run("ip", "-o", "-4", "addr", "show").stdout)
        used_routes = re.findall(r"^(\d+\.\d+\.\d+\.\d+/\d+)", _run("ip", "-4", "route", "show").stdout, re.M)
        used = {ipaddress.ip_network(f"{a}/30", strict=False) for a in used_addrs
                if ipaddress.ip_address(a) in NODE_LINK_RANGE}
        link = next((s for s in NODE_LINK_RANGE.subnets(new_prefix=30) if s not in used), None)
        routed = [ipaddress.ip_network(r) for r in used_routes]
        self.pod_cidr = next((s for s in POD_RANGE.subnets(new_prefix=24)
                              if not any(s.overlaps(r) for r in routed)), None)
        if link is None or self.pod_cidr is None:
            raise ClusterStartError(f"no free subnet in {NODE_LINK_RANGE} or {POD_RANGE}")
        host_ip, node_ip = list(link.hosts())
        self.host_ip, self.node_ip = str(host_ip), str(node_ip)
        self._netns_before = _pod_netns()
        steps = [
            ("netns", "add", self.netns),
            ("link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if, "netns", self.netns),
            ("addr", "add", f"{host_ip}/30", "dev", self.host_if),
            ("link", "set", self.host_if, "up"),
            ("-n", self.netns, "addr", "add", f"{node_ip}/30", "dev", self.node_if),
            ("-n", self.netns, "link", "set", self.node_if, "up"),
            ("-n", self.netns, "link", "set", "lo", "up"),
            ("-n", self.netns, "route", "add", "default", "via", str(host_ip)),
            ("route", "add", str(self.pod_cidr), "via", str(node_ip), "dev", self.host_if),
        ]
        for step in steps:
            _run("ip", *step)
        # The node forwards between its pods and the host (the CNI bridge plugin also
        # turns this on; the host needs it for replies to pods that reach the API server).
        _run("ip", "netns", "exec", self.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def apiserver_args(self, pki):
        args = []
        for a in super().apiserver_args(pki):
            # A real cluster: the ServiceAccount admission plugin (pods get their token
            # volume; the controller-manager makes the default ServiceAccounts), and the
            # "kubernetes" Service's endpoint, which kube-proxy sends pods to.
            if a in ("--disable-admission-plugins=ServiceAccount", "--endpoint-reconciler-type=none"):
                continue
            if a == "--bind-address=127.0.0.1":
                a = "--bind-address=0.0.0.0"  # the node reaches it on the host end of the veth pair
            elif a == "--advertise-address=127.0.0.1":
                a = f"--advertise-address={self.host_ip}"
            args.append(a)
        assert self.dir is not None
        client = self._kubelet_client_pki()
        return args + [
            f"--kubelet-client-certificate={client['cert']}",
            f"--kubelet-client-key={client['key']}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _kubelet_client_pki(self) -> dict[str, Path]:
        """A CA the kubelet trusts for clients, and the API server's client certificate from it."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        assert self.dir is not None
        d = self.dir / "kubelet-pki"
        files = {"ca": d / "client-ca.crt", "cert": d / "apiserver-kubelet-client.crt",
                 "key": d / "apiserver-kubelet-client.key"}
        if files["key"].exists():
            return files
        d.mkdir(exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mtls-conformance kubelet client CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-kubelet-client"),
                                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubeadm:cluster-admins")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        files["key"].chmod(0o600)
        return files

    def in_node(self, argv: list[str]) -> list[str]:
        """``argv`` run in the node's network namespace, where kube-proxy's rules make
        ClusterIPs reachable (the host has none of them); with ``node_kubeconfig``."""
        # Only the network namespace: the kubelet's volume mounts must be where
        # containerd (and runc) see them, in the host's mount namespace.
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]

    @property
    def node_kubeconfig(self) -> Path:
        """The cluster's kubeconfig (same credentials) for programs run ``in_node``."""
        assert self._node_kubeconfig is not None, "the node is not started"
        return self._node_kubeconfig

    def _start_node(self) -> None:
        assert self.dir is not None and self.node_bin is not None and self.kubeconfig is not None
        import yaml

        for d in self._node_dirs():
            d.mkdir(parents=True, exist_ok=True)
        # Components on the node reach the API server at the host end of the pair;
        # its serving certificate names localhost, which they check instead.
        cfg = yaml.safe_load(self.kubeconfig.read_text())
        cfg["clusters"][0]["cluster"]["server"] = f"https://{self.host_ip}:{self.port}"
        cfg["clusters"][0]["cluster"]["tls-server-name"] = "localhost"
        self._node_kubeconfig = self.dir / "node.kubeconfig"
        self._node_kubeconfig.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self._node_kubeconfig.chmod(0o600)

        self._start_containerd()
        for name in self.want_images:
            self.import_image(name)
        self._start_controllers()
        self._start_kube_proxy()
        self._start_kubelet()
        self._wait_node_ready()

    def _start_containerd(self) -> None:
        assert self.dir is not None
        base = self.dir / "containerd"
        cni_conf = base / "cni"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-mtls-node.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": "mtls-node",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.pod_cidr)}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(base / "cni-ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }, indent=2))
        pause_ref = self.images["pause"][0]
        (base / "config.toml").write_text(f"""\
version = 2
root = "{self.containerd_root}"
state = "{base / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{base / 'containerd.sock.ttrpc'}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_ref}"
  # A negative oom_score_adj is refused on these machines: without this every pod
  # sandbox fails in runc ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_DIR}"
    conf_dir = "{cni_conf}"
""")
        self._spawn("containerd", self.in_node(["containerd", "--config", str(base / "config.toml")]))
        self._wait_for("containerd", lambda: self._ctr("version", check=False).returncode == 0, 60)
        self._remove_containers()  # of a run that was killed before it could clean up

    def _remove_containers(self) -> None:
        tasks = self._ctr("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            self._ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=10)
        for task in tasks:
            self._ctr("tasks", "delete", "-f", task, check=False, timeout=20)
        containers = self._ctr("containers", "ls", "-q", check=False).stdout.split()
        if containers:
            self._ctr("containers", "delete", *containers, check=False, timeout=30)

    def _ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return _run("ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args,
                    check=check, timeout=timeout)

    def import_image(self, name: str, *aliases: str) -> str:
        """Import an image of tools/images/build.sh into the node (as `kind load` does); its reference.

        ``aliases``: more references for it, such as the ones a third party's manifests
        name (the node has no registry to pull them from).
        """
        ref = self._import_image(name)
        for alias in aliases:
            self._ctr("images", "tag", "--force", normalized_ref(ref), alias)
        return ref

    def _import_image(self, name: str) -> str:
        if name in self.imported:
            return self.imported[name]
        ref, tarball = self.images[name]
        listed = self._ctr("images", "ls", "-q").stdout.split()
        stamp = self.containerd_root / "imported" / name
        if normalized_ref(ref) not in listed or not stamp.is_file() or stamp.read_text() != str(tarball.resolve()):
            # The tarball's name is keyed by its content (tools/images/build.sh).
            self._ctr("images", "import", str(tarball))
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(str(tarball.resolve()))
            listed = self._ctr("images", "ls", "-q").stdout.split()
        if normalized_ref(ref) not in listed:
            raise ClusterStartError(f"imported {tarball} but containerd lists no {normalized_ref(ref)}: {listed}")
        self.imported[name] = ref
        return ref

    def _start_controllers(self) -> None:
        assert self.dir is not None and self.node_bin is not None and self.ca_file is not None
        sa_key = self.dir / "sa.key"
        self._spawn("kube-controller-manager", [
            str(self.node_bin / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1", "--secure-port=0",
            # Makes the tokens of legacy ServiceAccount token Secrets; pods get theirs
            # from the TokenRequest API, signed with the API server's key.
            f"--service-account-private-key-file={sa_key}",
            # Published as the kube-root-ca.crt ConfigMap of every namespace, which the
            # pods' token volume carries as ca.crt.
            f"--root-ca-file={self.ca_file}",
            "--use-service-account-credentials=false",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
            f"--cluster-name={NODE_NAME}",
            "--v=1",
        ])
        self._spawn("kube-scheduler", [
            str(self.node_bin / "kube-scheduler"),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1", "--secure-port=0",
            "--v=1",
        ])

    def _start_kube_proxy(self) -> None:
        assert self.dir is not None and self.node_bin is not None
        self._spawn("kube-proxy", self.in_node([
            str(self.node_bin / "kube-proxy"),
            f"--kubeconfig={self._node_kubeconfig}",
            f"--hostname-override={NODE_NAME}",
            "--proxy-mode=iptables",
            f"--cluster-cidr={self.pod_cidr}",
            # Not the host-wide nf_conntrack_max: a network namespace may not set it.
            "--conntrack-max-per-core=0",
            "--v=1",
        ]))

    def _start_kubelet(self) -> None:
        assert self.dir is not None and self.node_bin is not None
        import yaml

        pki = self._kubelet_client_pki()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki["ca"])}},
            # Only the API server's client certificate gets in (anonymous is off).
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "podLogsDir": str(self.dir / "pod-logs"),
            # What these machines need (../shared/reference/containers-here.md):
            # cgroups v1 without systemd, no QoS cgroup tree, swap tolerated.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            # A shared machine's disk and memory are not this node's to guard.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
        }
        (self.dir / "kubelet.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn("kubelet", self.in_node([
            str(self.node_bin / "kubelet"),
            f"--config={self.dir / 'kubelet.yaml'}",
            f"--kubeconfig={self._node_kubeconfig}",
            f"--root-dir={self.dir / 'kubelet'}",
            f"--cert-dir={self.dir / 'kubelet' / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={self.node_ip}",
            "--v=1",
        ]))

    def _wait_for(self, name: str, ready, timeout: float, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for proc in list(self._procs):
                self._check_alive(proc)
            if time.monotonic() > deadline:
                assert self.dir is not None
                raise ClusterStartError(f"{what or name} not ready after {timeout:.0f}s; last lines of "
                                        f"{name}.log:\n{testcluster._tail(self.dir / f'{name}.log')}")
            time.sleep(0.25)

    def _wait_node_ready(self) -> None:
        def node_ready() -> bool:
            status, body = self.request(f"/api/v1/nodes/{NODE_NAME}")
            if status != 200:
                return False
            conds = {c["type"]: c["status"] for c in json.loads(body)["status"].get("conditions") or []}
            return conds.get("Ready") == "True"

        def default_sa() -> bool:
            return self.request("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

        def root_ca() -> bool:
            return self.request("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")[0] == 200

        self._wait_for("kubelet", node_ready, self.node_timeout, f"node {NODE_NAME}")
        self._wait_for("kube-controller-manager", default_sa, self.node_timeout, "the default ServiceAccount")
        self._wait_for("kube-controller-manager", root_ca, self.node_timeout, "the kube-root-ca.crt ConfigMap")

    # ----------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop the node (pods, kubelet, containerd, network), then the API server and etcd."""
        try:
            if not self._stopped_node:
                self._stop_node()
        finally:
            self._stopped_node = True
            self._remove_network()
            try:
                super().stop()
            finally:
                if self._lock is not None:
                    LOCK_HOLDER.unlink(missing_ok=True)
                    self._lock.release()
                    self._lock = None

    def _stop_node(self) -> None:
        # Pods first, through the API, while the kubelet runs: it stops them and CNI
        # DEL removes their addresses and network namespaces.
        if "kubelet" in self._procs and self._procs["kubelet"].poll() is None:
            self.request("/api/v1/pods?gracePeriodSeconds=0", method="DELETE")
            for ns in self._namespaces():
                self.request(f"/api/v1/namespaces/{ns}/pods?gracePeriodSeconds=0", method="DELETE")
            # Force-deleted pods leave the API at once; the kubelet stops their containers after.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (
                    self._node_pods() or self._ctr("tasks", "ls", "-q", check=False, timeout=10).stdout.split()):
                time.sleep(0.25)
        for name in ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager"):
            self._stop_proc(name)
        # Whatever the kubelet left behind: tasks, containers (and their sandboxes' CNI DEL).
        if "containerd" in self._procs and self._procs["containerd"].poll() is None:
            self._remove_containers()
        self._stop_proc("containerd")
        # containerd-shim processes are in their own sessions: find them by our socket path.
        self._kill_shims()
        self._unmount_all()
        # The kubelet links every container's log into /var/log/containers (not configurable)
        # and removes the link when it garbage-collects the container, which is later.
        assert self.dir is not None
        logs = Path("/var/log/containers")
        for link in logs.glob("*.log") if logs.is_dir() else ():
            if os.path.realpath(link).startswith(str(self.dir) + "/"):
                link.unlink(missing_ok=True)

    def _namespaces(self) -> list[str]:
        status, body = self.request("/api/v1/namespaces")
        return [n["metadata"]["name"] for n in json.loads(body)["items"]] if status == 200 else []

    def _node_pods(self) -> list[str]:
        status, body = self.request(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE_NAME}")
        if status != 200:
            return []
        return [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in json.loads(body)["items"]]

    def _stop_proc(self, name: str) -> None:
        p = self._procs.pop(name, None)
        if p is not None:
            stop_process_group(p, grace=15)

    def _our_processes(self) -> list[int]:
        """Processes whose command line names this run's directory (shims, pause, stragglers)."""
        if self.dir is None:
            return []
        marker, me = str(self.dir).encode(), os.getpid()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != me:
                with contextlib.suppress(OSError):
                    if marker in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
        return pids

    def _kill_shims(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._our_processes()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if Path(f"/proc/{p}").exists()]
                time.sleep(0.1)

    def _unmount_all(self) -> None:
        if self.dir is None:
            return
        prefixes = (str(self.dir) + "/", str(self.containerd_root) + "/")
        ours = [m for m in _mounts() if m.startswith(prefixes)]
        for netns in _pod_netns() - self._netns_before:
            ours.append(f"/run/netns/{netns}")
        for point in ours:
            subprocess.run(["umount", "-l", point], capture_output=True)
        for netns in _pod_netns() - self._netns_before:
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True)

    def _remove_network(self) -> None:
        # The pair first (with it the route via the node), then the namespace, as
        # mtls_conformance.kubernetes' test hosts do.
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)

    # ----------------------------------------------------------------- CLI state
    def state(self) -> dict:
        return {**super().state(), "netns": self.netns, "containerd_root": str(self.containerd_root), "host_if": self.host_if, "node_ip": self.node_ip,
                "pod_cidr": str(self.pod_cidr), "containerd_socket": str(self.containerd_socket),
                "images": self.imported}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testkit.nodecluster",
                                 description="A one-node cluster (kubelet + containerd) on this machine, in the "
                                             "foreground; Ctrl-C stops it and removes everything it made.")
    ap.add_argument("cmd", choices=["up", "build"])
    ap.add_argument("--state", type=Path, default=testcluster._cache_root() / "node-cluster.json",
                    help="up: write the running cluster's kubeconfig, pids, addresses and images here "
                         "(removed at stop; default %(default)s)")
    ap.add_argument("--lock-wait", type=float, default=LOCK_WAIT, metavar="SECONDS",
                    help="up: how long to wait for another node cluster on this machine to stop "
                         "(default %(default)g s; one runs at a time)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        print(ensure_node_binaries().parent)
        for name, (ref, tarball) in ensure_images().items():
            print(f"{name}: {ref} {tarball}")
        return 0
    cluster = NodeCluster(lock_wait=args.lock_wait)

    def interrupt(*_):
        raise KeyboardInterrupt

    # Both, explicitly: a shell starts a background job with SIGINT ignored, which Python keeps.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        cluster.start()
        assert cluster.bin_dir is not None
        args.state.parent.mkdir(parents=True, exist_ok=True)
        args.state.write_text(json.dumps(cluster.state(), indent=2))
        print(f"export KUBECONFIG={cluster.kubeconfig}\nexport PATH={cluster.bin_dir}:$PATH\n"
              f"# state: {args.state}\n# images: {json.dumps(cluster.imported)}\n"
              f"# import a docker-archive: ctr --address {cluster.containerd_socket} -n k8s.io images import FILE\n"
              "# Ctrl-C to stop", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        with contextlib.suppress(FileNotFoundError):
            args.state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
