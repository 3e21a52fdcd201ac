"""A stand-in for the node side of a cluster, so that --backend-mode=deployment runs
against the test API server, which has no controller-manager, scheduler or kubelet.

For each Deployment of the harness's backends (label ``app.kubernetes.io/part-of:
mtls-conformance``) it does what those would do for one replica: it makes a Pod bound
to a Node of its own, runs the pod's container as a process in a network namespace of
its own (a test host, as --backend-mode=local-process makes them), reports the pod
Running and Ready with that namespace's address once its readiness probe connects, and
writes an EndpointSlice for every Service that selects it. It serves the container's
output as the pod's log: ``kubectl logs`` and the harness's request logs go through the
API server to it, as they go to a kubelet. Deleting the Deployment stops the process and
deletes the Pod (the garbage collector's part).

What is not real: images. A container runs a program of this machine instead: an nginx
image runs Debian's nginx, any other image our echo backend
(``python -m mtls_conformance.echo --from-environment``, which takes echo-basic's environment),
unless ``programs`` maps the image to another program: the upstream Gateway API suite's
Deployments (``selector=None``: every Deployment) run a locally built echo-basic that way
(tools/upstream/run.py). A volume's ``items`` place its keys at their paths.
Volumes from Secrets and ConfigMaps become directories of its own, and their mount paths
are rewritten to those directories in the container's environment, arguments and
ConfigMap files.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import ipaddress
import queue
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import trustme

from testkit.procs import ROOT
from testkit.testhost import TestHost as _TestHost

NODE = "test-kubelet"
PART_OF = "app.kubernetes.io/part-of=mtls-conformance"
SLICE_MANAGER = "test-kubelet"
NGINX = "/usr/sbin/nginx"
READY_TIMEOUT = 20.0


VOLUME_TIMEOUT = 120.0


class _VolumeNotReady(Exception):
    pass


class _Pod:
    def __init__(self, namespace: str, name: str, labels: dict, host: _TestHost, proc: subprocess.Popen,
                 log: Path, container: str) -> None:
        self.namespace, self.name, self.labels = namespace, name, labels
        self.host, self.proc, self.log, self.container = host, proc, log, container

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.host.destroy()


class TestKubelet:
    __test__ = False  # not a test class, despite its name

    def __init__(self, api_client, *, selector: str | None = PART_OF,
                 programs: dict[str, tuple[list[str], Any]] | None = None) -> None:
        """``programs``: image substring -> (argv, the TCP port that means ready when no
        readiness probe names one: a number, None, or a function of the container's
        environment); ``selector``: the Deployments this kubelet runs (None: all)."""
        from kubernetes import client

        self.selector, self.programs = selector, dict(programs or {})

        self.core, self.apps, self.discovery = (client.CoreV1Api(api_client), client.AppsV1Api(api_client),
                                                client.DiscoveryV1Api(api_client))
        self._dir = Path(tempfile.mkdtemp(prefix="test-kubelet-"))
        self._pods: dict[tuple[str, str], _Pod] = {}  # by (namespace, deployment)
        self._events: queue.Queue = queue.Queue()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._node_host = _TestHost(run_id=f"k{uuid.uuid4().hex[:7]}")
        self._server: http.server.HTTPServer | None = None
        self.errors: list[str] = []
        self._waiting: dict[tuple[str, str], float] = {}  # deployments waiting for a volume, since

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> TestKubelet:
        self._node_host.create()
        # The log endpoint listens on this namespace's end of the node's veth pair: an
        # address the API server reaches that is not loopback.
        address = str(ipaddress.ip_address(self._node_host.address) - 1)
        self._server = self._log_server(address)
        port = self._server.server_address[1]
        self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
        self.core.patch_node_status(NODE, {"status": {
            "addresses": [{"type": "InternalIP", "address": address}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test kubelet"}]}})
        for name, target in (("logs", self._server.serve_forever), ("deployments", self._watch_deployments),
                             ("services", self._watch_services), ("worker", self._work)):
            thread = threading.Thread(target=target, name=f"test-kubelet-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._events.put(None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        for pod in list(self._pods.values()):
            pod.stop()
        self._pods.clear()
        with contextlib.suppress(Exception):
            self.core.delete_node(NODE)
        self._node_host.destroy()
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)

    def running(self) -> list[str]:
        return [f"{ns}/{name}" for (ns, name), pod in self._pods.items() if pod.proc.poll() is None]

    def wait_idle(self, timeout: float = 30.0) -> list[str]:
        """Wait until no pod of this kubelet runs; returns those still running."""
        with self._changed:
            self._changed.wait_for(lambda: not self._pods, timeout)
            return self.running()

    # -- pod logs ----------------------------------------------------------------------
    def _log_server(self, address: str) -> http.server.HTTPServer:
        kubelet = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # /containerLogs/<namespace>/<pod>/<container>
                parts = self.path.split("?")[0].strip("/").split("/")
                pod = next((p for p in kubelet._pods.values()
                            if parts[:1] == ["containerLogs"] and [p.namespace, p.name] == parts[1:3]), None)
                body = pod.log.read_bytes() if pod is not None else b""
                self.send_response(200 if pod is not None else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        ca = trustme.CA()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(address).configure_cert(context)
        server = http.server.ThreadingHTTPServer((address, 0), Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        return server

    # -- watches -------------------------------------------------------------------------
    def _watch(self, list_call, kind: str, **selector: str) -> None:
        from kubernetes import watch

        version = None
        while not self._stop.is_set():
            watcher = watch.Watch()
            try:
                # Short segments so that stop() is noticed; each resumes where the last ended.
                for event in watcher.stream(list_call, timeout_seconds=2, resource_version=version, **selector):
                    self._events.put((kind, event["type"], event["object"]))
                    if self._stop.is_set():
                        return
                version = watcher.resource_version
            except Exception as exc:  # e.g. 410 Gone: list again
                version = None
                if not self._stop.is_set():
                    self.errors.append(f"{kind} watch: {exc}")
                    self._stop.wait(0.2)

    def _watch_deployments(self) -> None:
        selector = {"label_selector": self.selector} if self.selector else {}
        self._watch(self.apps.list_deployment_for_all_namespaces, "Deployment", **selector)

    def _watch_services(self) -> None:
        self._watch(self.core.list_service_for_all_namespaces, "Service")

    def _work(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            kind, event, obj = item
            try:
                if kind == "Deployment" and event in ("ADDED", "MODIFIED"):
                    self._run(obj)
                elif kind == "Deployment" and event == "DELETED":
                    self._remove(obj.metadata.namespace, obj.metadata.name)
                elif kind == "Service" and event in ("ADDED", "MODIFIED"):
                    self._publish(obj.metadata.namespace)
            except _VolumeNotReady as exc:
                # A kubelet waits for a volume's Secret or ConfigMap to exist (the upstream
                # suite creates its certificate Secrets after the Deployments that mount them).
                first = self._waiting.setdefault((obj.metadata.namespace, obj.metadata.name), time.monotonic())
                if time.monotonic() - first > VOLUME_TIMEOUT:
                    self.errors.append(f"{kind} {obj.metadata.namespace}/{obj.metadata.name}: {exc}")
                elif not self._stop.is_set():
                    threading.Timer(0.5, self._events.put, [item]).start()
            except Exception as exc:
                self.errors.append(f"{kind} {obj.metadata.namespace}/{obj.metadata.name}: {exc!r}")

    # -- pods ----------------------------------------------------------------------------
    def _run(self, deployment) -> None:
        namespace, name = deployment.metadata.namespace, deployment.metadata.name
        if (namespace, name) in self._pods:
            return  # one replica, never rolled: the harness does not change its Deployments
        template = deployment.spec.template
        spec = template.spec
        container = spec.containers[0]
        pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
        pod_dir = self._dir / namespace / pod_name
        pod_dir.mkdir(parents=True)
        try:
            mounts = self._volumes(namespace, spec, container, pod_dir)
        except BaseException:
            import shutil

            shutil.rmtree(pod_dir, ignore_errors=True)
            raise

        def mapped(text: str) -> str:
            for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
                text = text.replace(mount_path, str(local))
            return text

        for local in mounts.values():  # ConfigMap files name other mounts (nginx.conf)
            for file in local.iterdir():
                file.write_text(mapped(file.read_text()))
        env = {"PATH": "/usr/sbin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
        for var in container.env or []:
            if var.value_from is not None:
                field = var.value_from.field_ref.field_path
                env[var.name] = {"metadata.name": pod_name, "metadata.namespace": namespace}[field]
            else:
                env[var.name] = mapped(var.value or "")
        program = next((p for image, p in self.programs.items() if image in container.image), None)
        ready_port = None
        if program is not None:
            argv, ready_port = list(program[0]), program[1](env) if callable(program[1]) else program[1]
        elif "nginx" in container.image:
            argv = [NGINX, *map(mapped, (container.command or ["nginx"])[1:] + (container.args or []))]
        else:
            argv = [sys.executable, "-m", "mtls_conformance.echo", "--from-environment"]
        host = _TestHost(run_id=f"k{uuid.uuid4().hex[:7]}")
        host.create()
        log = pod_dir / "container.log"
        try:
            with open(log, "wb") as out:
                proc = subprocess.Popen([*host.command_prefix, *argv], cwd=ROOT, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        except BaseException:
            host.destroy()
            raise
        pod = self._pods[(namespace, name)] = _Pod(namespace, pod_name, dict(template.metadata.labels or {}),
                                                    host, proc, log, container.name)
        self.core.create_namespaced_pod(namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": namespace, "labels": pod.labels},
            "spec": {"nodeName": NODE, "containers": [{"name": container.name, "image": container.image}]}})
        probe = container.readiness_probe
        port = probe.tcp_socket.port if probe is not None and probe.tcp_socket is not None else ready_port
        self._wait_ready(pod, port)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.core.patch_namespaced_pod_status(pod_name, namespace, {"status": {
            "phase": "Running", "podIP": host.address, "podIPs": [{"ip": host.address}], "hostIP": host.address,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}})
        self._publish(namespace)

    def _volumes(self, namespace: str, spec, container, pod_dir: Path) -> dict[str, Path]:
        by_name = {v.name: v for v in spec.volumes or []}
        mounts = {}
        for mount in container.volume_mounts or []:
            volume = by_name[mount.name]
            local = pod_dir / mount.name
            local.mkdir()
            try:
                source = (self.core.read_namespaced_secret(volume.secret.secret_name, namespace)
                          if volume.secret is not None else
                          self.core.read_namespaced_config_map(volume.config_map.name, namespace))
            except Exception as exc:
                if getattr(exc, "status", None) == 404:
                    raise _VolumeNotReady(f"volume {mount.name}: {exc.reason}") from None
                raise
            if volume.secret is not None:
                data = source.data or {}
                files = {key: base64.b64decode(value) for key, value in data.items()}
                items = volume.secret.items
            else:
                files = {key: value.encode() for key, value in (source.data or {}).items()}
                items = volume.config_map.items
            if items:  # only the listed keys, each at its own path
                files = {item.path: files[item.key] for item in items if item.key in files}
            for key, content in files.items():
                (local / key).write_bytes(content)
            mounts[mount.mount_path] = local
        return mounts

    def _wait_ready(self, pod: _Pod, port: int | None) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while port is not None:
            if pod.proc.poll() is not None:
                raise RuntimeError(f"container exited: {pod.log.read_text(errors='replace')[-500:]}")
            try:
                socket.create_connection((pod.host.address, port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready within {READY_TIMEOUT:g} s: {pod.log.read_text()[-500:]}")
                time.sleep(0.02)  # a readiness probe's period, much shortened

    def _publish(self, namespace: str) -> None:
        """The EndpointSlice controller's part, for the pods of this kubelet."""
        pods = [p for p in self._pods.values() if p.namespace == namespace]
        # Running every Deployment (selector None), this kubelet stands in for the whole
        # node side: like the EndpointSlice controller it gives a Service that selects no
        # pod an empty slice (Traefik, for one, skips a backend without any slice, and with
        # it the BackendTLSPolicy status the upstream suite waits for).
        every_service = self.selector is None
        if not pods and not every_service:
            return
        for service in self.core.list_namespaced_service(namespace).items:
            selector = service.spec.selector or {}
            ready = [p for p in pods if selector and all(p.labels.get(k) == v for k, v in selector.items())]
            if not ready and not (every_service and selector):
                continue
            ports = [{"name": sp.name, "port": sp.target_port if isinstance(sp.target_port, int) else sp.port,
                      "protocol": "TCP"} for sp in service.spec.ports]
            slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": f"{service.metadata.name}-kubelet", "namespace": namespace,
                                   "labels": {"kubernetes.io/service-name": service.metadata.name,
                                              "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER}},
                      "addressType": "IPv4", "ports": ports,
                      "endpoints": [{"addresses": [p.host.address], "conditions": {"ready": True}} for p in ready]}
            try:
                self.discovery.create_namespaced_endpoint_slice(namespace, slice_)
            except Exception as exc:
                if getattr(exc, "status", None) != 409:
                    raise
                self.discovery.replace_namespaced_endpoint_slice(slice_["metadata"]["name"], namespace, {
                    **slice_, "metadata": {**slice_["metadata"], "resourceVersion": self.discovery.read_namespaced_endpoint_slice(
                        slice_["metadata"]["name"], namespace).metadata.resource_version}})

    def _remove(self, namespace: str, name: str) -> None:
        pod = self._pods.get((namespace, name))
        if pod is None:
            return
        pod.stop()
        with contextlib.suppress(Exception):
            self.core.delete_namespaced_pod(pod.name, namespace, grace_period_seconds=0)
        with self._changed:
            del self._pods[(namespace, name)]
            self._changed.notify_all()
