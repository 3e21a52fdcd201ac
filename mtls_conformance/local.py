"""The local target: a gateway process on this machine, driven through files.

The contract is docs/local-target.md. The harness plays the API server: it writes each
object as one manifest file (filling in uid, generation and creationTimestamp), and
reads back the status files and listener ports that the gateway writes.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from .processes import spawn, uninterrupted
from ._turns import pause
from .target import (CLUSTER_SCOPED_KINDS, Manifest, ObjectRef, Progress, ServicePort, SystemRootsFile,
                     SystemRootsUnavailable, Target, TargetError)

REFGATEWAY_COMMAND = (f"{shlex.quote(sys.executable)} -m refgateway --config-dir {{config_dir}} "
                      "--state-dir {state_dir} --system-ca-bundle {system_ca_bundle}")
REFGATEWAY_CONTROLLER = "mtls-conformance.dev/refgateway"

#: How often status files are re-read while waiting; the gateway is on this machine.
POLL_INTERVAL = 0.02


#: libyaml's emitter where PyYAML has it: a manifest in a fifth of the time of the pure-Python
#: one (0.1-0.2 ms against 0.6-0.9), and the harness writes hundreds while it configures.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump_yaml(obj: object) -> str:
    return yaml.dump(obj, Dumper=_DUMPER, sort_keys=False)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


#: libyaml's loader where PyYAML has it: the pure-Python one was most of the harness's own
#: time per probe (every probe asks for its listener's address: a ports file and a status
#: file; benchmarks/suite_speed.py).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: path -> (the file's bytes, their content): a file whose bytes have not changed since it
#: was last read is not parsed again (compared whole: no file identity to trust).
_parsed: dict[Path, tuple[bytes, dict | None]] = {}


def _read_yaml(path: Path) -> dict | None:
    """The mapping in a YAML file the gateway writes, or None; callers get their own copy."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        _parsed.pop(path, None)
        return None
    cached = _parsed.get(path)
    if cached is None or cached[0] != raw:
        data = yaml.load(raw, Loader=_LOADER)
        cached = _parsed[path] = (raw, data if isinstance(data, dict) else None)
    return copy.deepcopy(cached[1])


@contextlib.contextmanager
def _status_lock(state_dir: Path) -> Iterator[None]:
    """state_dir/status.lock, held while a status file is read and rewritten by anyone but
    its only writer (docs/local-target.md): the gateway holds it for files it shares."""
    with open(state_dir / "status.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_manifest(obj: Manifest) -> None:
    """Refuse a manifest that no API server would take, naming the missing field."""
    if not isinstance(obj, Mapping):
        raise TargetError(f"a manifest must be a mapping, got {type(obj).__name__}")
    for field in ("apiVersion", "kind"):
        if not obj.get(field):
            raise TargetError(f"manifest {dict(obj).get('metadata', {})!r} has no {field}")
    meta = obj.get("metadata") or {}
    if not meta.get("name"):
        raise TargetError(f"{obj['kind']} manifest has no metadata.name")
    namespaced = obj["kind"] not in CLUSTER_SCOPED_KINDS
    if namespaced and not meta.get("namespace"):
        raise TargetError(f"{obj['kind']} {meta['name']} has no metadata.namespace")



class LocalTarget(Target):
    """A gateway process that watches a config directory and writes status files."""

    kind = "local"

    def __init__(self, *, gateway_class: str, command: str = REFGATEWAY_COMMAND,
                 controller_name: str = REFGATEWAY_CONTROLLER, progress: Progress | None = None,
                 start_timeout: float = 30.0, parent: Path | None = None) -> None:
        super().__init__(progress=progress)
        self.gateway_class = gateway_class
        self.controller_name = controller_name
        self.command = command
        self._objects: dict[ObjectRef, dict] = {}
        self._proc: subprocess.Popen | None = None
        with uninterrupted():  # a Ctrl-C now would leave the directory with no one to remove it
            self._root = Path(tempfile.mkdtemp(prefix="mtls-local-", dir=parent))
        self.config_dir = self._root / "config"
        self.state_dir = self._root / "state"
        self._log_path = self._root / "gateway.log"
        #: Stands in for the gateway's system trust store, when its command takes
        #: {system_ca_bundle}: the CAs that trust_as_system_roots() added, in PEM.
        self.system_ca_bundle = self._root / "system-ca-bundle.pem"
        try:
            self.config_dir.mkdir()
            self.state_dir.mkdir()
            self._system_roots = SystemRootsFile(self.system_ca_bundle)
            self._start(start_timeout)
            self.apply({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GatewayClass",
                "metadata": {"name": gateway_class},
                "spec": {"controllerName": controller_name},
            })
            self.wait_for_condition(ObjectRef("GatewayClass", gateway_class), "Accepted",
                                    timeout=start_timeout)
        except BaseException:
            self.close()
            raise

    # -- the gateway process ---------------------------------------------------------
    def _start(self, timeout: float) -> None:
        text = self.command.replace("{config_dir}", str(self.config_dir)).replace(
            "{state_dir}", str(self.state_dir)).replace("{system_ca_bundle}", str(self.system_ca_bundle))
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise TargetError(f"--gateway-command {self.command!r} cannot be split: {exc}") from exc
        if not argv:
            raise TargetError("--gateway-command is empty; leave it out to use the bundled refgateway")
        log = open(self._log_path, "wb")
        try:
            # Started and recorded in one step: a gateway that close() does not know of would
            # outlive an interrupted run, and write its state directory again after removal.
            with uninterrupted():
                self._proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise TargetError(f"--gateway-command {self.command!r} could not be started: "
                              f"{exc.strerror or exc}: {argv[0]!r}") from exc
        finally:
            log.close()
        ready = self.state_dir / "ready"
        start = time.monotonic()
        announced = False
        while not ready.exists():
            if self._proc.poll() is not None:
                raise TargetError(f"--gateway-command {self.command!r} exited with status "
                                  f"{self._proc.returncode} before writing {ready.name}; "
                                  f"its output ends with:\n{self.log_tail()}")
            elapsed = time.monotonic() - start
            if elapsed > timeout:
                raise TargetError(f"--gateway-command {self.command!r} did not write "
                                  f"state_dir/ready within {timeout:.0f} s (see docs/local-target.md); "
                                  f"its output ends with:\n{self.log_tail()}")
            if not announced and elapsed > 2:
                self._progress(f"waiting up to {timeout:.0f} s for the local gateway to write state_dir/ready")
                announced = True
            time.sleep(POLL_INTERVAL)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise TargetError(f"the local gateway exited with status {self._proc.returncode}; "
                              f"its output ends with:\n{self.log_tail()}")

    def close(self) -> None:
        with uninterrupted():  # a second Ctrl-C must not leave the gateway or its files
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                except ProcessLookupError:
                    pass
            shutil.rmtree(self._root, ignore_errors=True)
            for path in [p for p in _parsed if self._root in p.parents]:
                del _parsed[path]

    # -- objects ---------------------------------------------------------------------
    def _path(self, ref: ObjectRef, root: Path) -> Path:
        return root / (ref.namespace or "_cluster") / ref.kind / f"{ref.name}.yaml"

    def create_namespace(self, name: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def delete_namespace(self, name: str) -> None:
        self._forget_backends(name)
        for ref in [r for r in self._objects if r.namespace == name]:
            del self._objects[ref]
        shutil.rmtree(self.config_dir / name, ignore_errors=True)
        self.changed()
        self.delete(ObjectRef("Namespace", name, api_version="v1"))

    def apply(self, *objects: Manifest) -> None:
        for obj in objects:
            check_manifest(obj)
        for obj in objects:
            ref = ObjectRef.of(obj)
            previous = self._objects.get(ref)
            new = json.loads(json.dumps(obj))  # a private deep copy, JSON-clean
            meta = new.setdefault("metadata", {})
            content = {k: v for k, v in new.items() if k not in ("metadata", "status")}
            if previous is None:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = datetime.datetime.now(datetime.timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")
                meta["generation"] = 1
            else:
                old_meta = previous["metadata"]
                old_content = {k: v for k, v in previous.items() if k not in ("metadata", "status")}
                meta["uid"] = old_meta["uid"]
                meta["creationTimestamp"] = old_meta["creationTimestamp"]
                meta["generation"] = old_meta["generation"] + (content != old_content)
            if new["kind"] == "Secret" and "stringData" in new:
                data = new.setdefault("data", {})
                for key, value in new.pop("stringData").items():
                    data[key] = base64.b64encode(value.encode()).decode()
            self._objects[ref] = new
            _atomic_write(self._path(ref, self.config_dir), _dump_yaml(new))
            self.changed()

    def delete(self, *objects: Manifest | ObjectRef) -> None:
        for obj in objects:
            ref = obj if isinstance(obj, ObjectRef) else ObjectRef.of(obj)
            self._objects.pop(ref, None)
            self._path(ref, self.config_dir).unlink(missing_ok=True)
            self.changed()

    def get(self, ref: ObjectRef) -> dict | None:
        self._check_alive()
        obj = self._objects.get(ref)
        if obj is None:
            return None
        obj = json.loads(json.dumps(obj))
        written = _read_yaml(self._path(ref, self.state_dir / "status"))
        if written and written.get("status") is not None:
            obj["status"] = written["status"]
        return obj

    def add_status_entry(self, ref: ObjectRef, field: str, entry: dict) -> dict:
        """The status file stands for the status subresource, shared with the gateway as on
        an API server: read, append, rewrite, under the lock docs/local-target.md names."""
        self._check_alive()
        obj = self._objects.get(ref)
        if obj is None:
            raise TargetError(f"{ref} does not exist")
        path = self._path(ref, self.state_dir / "status")
        with _status_lock(self.state_dir):
            doc = _read_yaml(path) or {"apiVersion": obj["apiVersion"], "kind": ref.kind,
                                       "metadata": {k: v for k, v in obj["metadata"].items()
                                                    if k in ("name", "namespace", "generation")}}
            status = doc.get("status") or {}
            status[field] = [*(status.get(field) or []), copy.deepcopy(entry)]
            doc["status"] = status
            _atomic_write(path, _dump_yaml(doc))
        return copy.deepcopy(entry)

    def _observe(self, ref: ObjectRef, deadline: float) -> Iterator[dict | None]:
        while True:
            yield self.get(ref)
            if time.monotonic() >= deadline:
                return
            pause(POLL_INTERVAL)  # other setups' checks take their turns meanwhile (_turns.py)

    def publish_service(self, namespace: str, name: str, ports: list[ServicePort]) -> None:
        service_ports = []
        for p in ports:
            entry = {"name": p.name, "port": p.port, "protocol": "TCP", "targetPort": p.address[1]}
            if p.app_protocol:
                entry["appProtocol"] = p.app_protocol
            service_ports.append(entry)
        hosts = sorted({p.address[0] for p in ports})
        if len(hosts) != 1:
            raise TargetError(f"Service {namespace}/{name}: all ports must be served from one address, got {hosts}")
        self.apply(
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": name, "namespace": namespace},
             "spec": {"ports": service_ports, "type": "ClusterIP"}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-local", "namespace": namespace,
                          "labels": {"kubernetes.io/service-name": name}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": hosts, "conditions": {"ready": True}}],
             "ports": [{"name": p.name, "port": p.address[1], "protocol": "TCP"} for p in ports]},
        )

    def trust_as_system_roots(self, ca_pem: bytes) -> None:
        if "{system_ca_bundle}" not in self.command:
            raise SystemRootsUnavailable(
                f"--gateway-command {self.command!r} takes no {{system_ca_bundle}}, so the harness cannot "
                "give the gateway a system trust store (docs/local-target.md)")
        self._system_roots.add(ca_pem)  # the file goes with the target's directory at close()
        self.changed(for_all=True)

    def listener_address(self, gateway: ObjectRef, port: int) -> tuple[str, int]:
        ports_file = self.state_dir / "ports" / (gateway.namespace or "") / f"{gateway.name}.yaml"

        def check(obj: dict | None) -> str | None:
            ports = _read_yaml(ports_file) or {}
            if port not in ports and str(port) not in ports:
                return f"{ports_file.relative_to(self.state_dir)} lists ports {sorted(ports)}"
            return None

        self.wait_for(gateway, check, what=f"a loopback port for listener port {port}", timeout=30)
        ports = _read_yaml(ports_file) or {}
        host_port = int(ports.get(port, ports.get(str(port))))
        obj = self.get(gateway) or {}
        addresses = (obj.get("status") or {}).get("addresses") or []
        host = addresses[0]["value"] if addresses else "127.0.0.1"
        return host, host_port
