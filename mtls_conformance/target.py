"""The Target API: everything a scenario may do to the system under test.

A scenario never talks to a gateway directly. It applies manifests, waits for status
conditions, asks where a listener is, and publishes backends, all through a Target. The
same scenario module therefore runs unchanged against the bundled reference gateway on
this machine (``LocalTarget``) and against any cluster (``KubernetesTarget``).

Objects are plain manifests (dicts) in the exact upstream schema. A Target fills in what
an API server fills in (uid, generation, creationTimestamp) and never rewrites ``spec``.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ._turns import pause

__all__ = ["Manifest", "Progress", "PROGRESS_AFTER", "WORKLOAD_LABEL", "CLUSTER_SCOPED_KINDS",
           "TargetError", "TargetCannot", "NotListening", "SystemRootsUnavailable", "settled", "WaitTimeout",
           "ObjectRef", "ServicePort", "SystemRootsFile", "ProcessHost", "conditions_of",
           "find_condition", "describe_conditions", "Target"]

Manifest = Mapping[str, Any]
Progress = Callable[[str], None]

#: How long a wait may run before the harness says what it is waiting for.
PROGRESS_AFTER = 2.0


#: The label that names a backend workload's pods after its Service: Target.deploy_workload
#: reads their logs as the backend's request log.
WORKLOAD_LABEL = "app.kubernetes.io/name"


#: Kinds without a namespace, among those the suite uses.
CLUSTER_SCOPED_KINDS = frozenset({"Namespace", "GatewayClass", "ClusterRole", "ClusterRoleBinding",
                                  "CustomResourceDefinition", "ClusterTrustBundle"})


class TargetError(Exception):
    """The system under test cannot be used: the message says what to fix."""


class NotListening(TargetError):
    """Nothing listens on a listener port, as the target found out without connecting: e.g.
    the Service the harness forwards to has no such port (the implementation did not program
    the listener), or the pod behind it is not running (yet). A client there would get
    connection refused, and GatewayClient judges it so: a connect-phase Rejection of kind
    "refused" that names this message, tried again within the consistency window."""


class TargetCannot(TargetError):
    """This target cannot do what was asked (a capability it lacks, not a failure).

    The only target error a scenario turns into a skip, with this message as the reason;
    any other TargetError while deploying a backend or applying objects is an error of the
    run (a broken image pull must read as FAILED, never as a skip that makes a feature
    look PARTIAL).
    """


class SystemRootsUnavailable(TargetCannot):
    """The harness cannot change the gateway's system trust store on this target."""


def settled(read: Callable[[], list], *, quiet: float, timeout: float) -> list:
    """``read()`` once it has returned the same list for ``quiet`` seconds (at most ``timeout``).

    For request logs that trail the answers (a pod's log, nginx's access log): read at
    once, a request that did reach a backend may not be there yet, and a late line from an
    earlier request would be counted as a new one. Polled, because a log has no watch.
    """
    start = time.monotonic()
    last = read()
    since = start
    while True:
        now = time.monotonic()
        if now - since >= quiet or now - start >= timeout:
            return last
        pause(min(0.2, quiet))
        current = read()
        if current != last:
            last, since = current, time.monotonic()


class WaitTimeout(AssertionError):
    """A wait for a status condition ran out of time; the message holds the last status seen."""


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    kind: str
    name: str
    namespace: str | None = None
    api_version: str = "gateway.networking.k8s.io/v1"

    @classmethod
    def of(cls, obj: Manifest) -> ObjectRef:
        meta = obj.get("metadata") or {}
        return cls(kind=obj["kind"], name=meta["name"], namespace=meta.get("namespace"),
                   api_version=obj["apiVersion"])

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"


@dataclasses.dataclass(frozen=True)
class ServicePort:
    """One port of a backend Service and the address of the process serving it."""

    name: str
    port: int
    address: tuple[str, int]
    app_protocol: str | None = None


class SystemRootsFile:
    """A gateway's system trust store that the harness may write: roots are appended, and
    ``restore()`` puts back what the file held before (or removes it if it did not exist)."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        if not self.path.parent.is_dir():
            raise TargetError(f"--system-ca-bundle {path}: its directory does not exist (the file is the one "
                              "the gateway under test reads as its system trust store)")
        self._before: bytes | None = None
        self._touched = False

    def add(self, ca_pem: bytes) -> None:
        current = self.path.read_bytes() if self.path.exists() else None
        if not self._touched:
            self._before, self._touched = current, True
        if current is not None and ca_pem.strip() in current:
            return
        kept = (current or b"").strip()
        self._write((kept + b"\n" if kept else b"") + ca_pem)

    def restore(self) -> None:
        if not self._touched:
            return
        self._touched = False
        if self._before is None:
            self.path.unlink(missing_ok=True)
        else:
            self._write(self._before)

    def _write(self, data: bytes) -> None:
        # A new file, not an edit in place: a gateway that notices changes by inode or
        # mtime sees the new roots, and never reads half a bundle.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)


@dataclasses.dataclass(frozen=True)
class ProcessHost:
    """Where the harness runs a backend process so that the gateway reaches it: bind
    ``address`` and start the command behind ``command_prefix`` (e.g. ``ip netns exec NS``)."""

    address: str
    command_prefix: tuple[str, ...] = ()


def conditions_of(obj: Manifest | None, *, listener: str | None = None) -> list[dict]:
    """The status conditions of an object, or of one of a Gateway's listeners."""
    status = (obj or {}).get("status") or {}
    if listener is None:
        return list(status.get("conditions") or [])
    for entry in status.get("listeners") or []:
        if entry.get("name") == listener:
            return list(entry.get("conditions") or [])
    return []


def find_condition(conditions: list[dict], type_: str) -> dict | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def describe_conditions(conditions: list[dict]) -> str:
    if not conditions:
        return "no conditions"
    return "; ".join(
        f"{c.get('type')}={c.get('status')} ({c.get('reason')}: {c.get('message', '')!s}"
        f"{', observedGeneration ' + str(c['observedGeneration']) if 'observedGeneration' in c else ''})"
        for c in conditions)


class Target(abc.ABC):
    """The system under test, as the scenarios see it."""

    #: "local" or "kubernetes"
    kind: str
    gateway_class: str
    controller_name: str

    def __init__(self, *, progress: Progress | None = None) -> None:
        self._progress = progress or (lambda message: None)
        #: The backends started through this target, per namespace (see running_backends).
        self._started_backends: dict[str, list[Any]] = {}
        self._changes: dict[str, float] = {}
        self._change_for_all: float | None = None
        self.change_scope = ""

    # -- configuration changes ---------------------------------------------------------
    #: Which part of the run the harness is configuring or checking now: a scenario
    #: module's node id, set by the plugin for each test and while it configures a module
    #: ahead (``--configure-ahead``); a test's node id (the module's id, "::", the test's
    #: name) while a configure_ahead test checks and changes objects of its own (its
    #: setup's part after ``yield``, and its call); "" outside of modules.
    change_scope: str

    @property
    def last_change(self) -> float | None:
        """When the harness last changed anything the current scope's checks may depend on
        (``time.monotonic()``), or None before the first such change. A check's consistency
        window runs from here (conformance/expect.py ``eventually``).

        Deliberately not per Gateway: a Gateway depends on Routes, Secrets, ConfigMaps,
        Services, ReferenceGrants and ClusterTrustBundles the module made, in any of its
        namespaces or cluster-scoped, and which of them the gateway reads is its business,
        so every change the scope made counts. A change to the gateway's system trust store
        counts for every scope: Gateways of any module may trust it. What another scenario
        module changed does not count: no Gateway of this module refers to those objects
        (the scenarios share none; a module's cluster-scoped objects have its own names and
        signers), and a gateway that serves one Gateway wrongly while it applies another's
        configuration is wrong (as with xdist, where each worker has its own scope already).
        A test's scope counts its module's changes too; its own changes (to objects only it
        uses: _ahead.py ``_mtls_configure_ahead``) count for it alone. Per process, as
        before."""
        parts = self.change_scope.split("::")
        scopes = ["::".join(parts[:end]) for end in range(1, len(parts) + 1)]  # the module, then the test
        known = [t for t in (*(self._changes.get(s) for s in scopes), self._change_for_all) if t is not None]
        return max(known, default=None)

    @last_change.setter
    def last_change(self, value: float) -> None:
        self._changes[self.change_scope] = value

    def changed(self, *, for_all: bool = False) -> None:
        """Note a change the gateway must converge on; targets call it after every write
        (apply, delete, a new trust store, a backend's endpoints becoming ready).
        ``for_all``: the change is to what Gateways of every scope may read (the system
        trust store)."""
        now = time.monotonic()
        self._changes[self.change_scope] = now
        if for_all:
            self._change_for_all = now

    # -- lifecycle -------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Delete what this Target created and stop what it started."""

    # -- objects ---------------------------------------------------------------------
    @abc.abstractmethod
    def create_namespace(self, name: str) -> None: ...

    @abc.abstractmethod
    def delete_namespace(self, name: str) -> None:
        """Delete the namespace and every object the harness put in it."""

    def keep_namespace(self, name: str) -> str | None:
        """Leave the namespace and its objects in place after the run (``--keep-objects``).

        Returns how to look at them, or None when this target cannot keep them: the
        local target's objects live only as long as its gateway process (use ``--pdb``).
        """
        return None

    @abc.abstractmethod
    def apply(self, *objects: Manifest) -> None:
        """Create or replace objects; ``spec`` changes bump ``metadata.generation``."""

    def apply_yaml(self, source: str | os.PathLike, *, namespace: str = "default") -> list[dict]:
        """Apply what ``kubectl apply -f FILE`` would: a YAML file (or text) of objects
        separated by ``---``, or a ``kind: List``; namespaced objects without
        ``metadata.namespace`` go to ``namespace``. Returns the objects applied."""
        import yaml  # only here: the targets take dicts

        text = Path(source).read_text() if isinstance(source, os.PathLike) else source
        objects: list[dict] = []
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and doc.get("kind") == "List":
                objects.extend(doc.get("items") or [])
            elif doc is not None:
                objects.append(doc)
        for obj in objects:
            meta = obj.setdefault("metadata", {}) if isinstance(obj, dict) else None
            if meta is not None and obj.get("kind") not in CLUSTER_SCOPED_KINDS:
                meta.setdefault("namespace", namespace)
        self.apply(*objects)
        return objects

    @abc.abstractmethod
    def delete(self, *objects: Manifest | ObjectRef) -> None: ...

    @abc.abstractmethod
    def get(self, ref: ObjectRef) -> dict | None:
        """The object as the API sees it (metadata, spec and the gateway's status)."""

    def add_status_entry(self, ref: ObjectRef, field: str, entry: dict) -> dict:
        """Append ``entry`` to the list ``status.<field>`` of an object through a status write,
        as another controller shares a BackendTLSPolicy's ``ancestors`` or an HTTPRoute's
        ``parents`` with the gateway; returns the entry as stored (an API server truncates
        ``lastTransitionTime`` to seconds). Both targets can; another may not."""
        raise TargetCannot(f"the {self.kind} target cannot write an object's status as another controller")

    @abc.abstractmethod
    def publish_service(self, namespace: str, name: str, ports: list[ServicePort]) -> None:
        """Make a Service whose endpoints are processes that the harness runs."""

    # -- backends --------------------------------------------------------------------
    def record_backend(self, namespace: str, backend: Any) -> None:
        """Count ``backend`` (anything with ``namespace``, ``service`` and ``requests``) among
        the backends a Gateway's routes could reach, until its namespace is deleted.

        start_backend, start_multiport_backend and deploy_workload record what they start;
        a fixture that runs a backend of its own and publishes it (nginx) records it here.
        """
        self._started_backends.setdefault(namespace, []).append(backend)

    def running_backends(self) -> list[Any]:
        """Every backend recorded in a namespace that still exists, in the order started.

        Whatever a Gateway's routes could reach, in its namespace or, through a
        ReferenceGrant, in another: a refused request must have reached none of them.
        """
        return [backend for backends in self._started_backends.values() for backend in backends]

    def _forget_backends(self, namespace: str) -> None:
        """The namespace is gone: so are its backends (a pod's log can no longer be read)."""
        self._started_backends.pop(namespace, None)

    def start_backend(self, *, namespace: str, service: str, port: int, tls: Any = None) -> Any:
        """Run an echo backend where the gateway can reach it and publish it as Service ``service``.

        Returns the running backend (``.requests``, ``.stop()``); ``tls`` is a
        ``mtls_conformance.echo.ServerTLS`` or None. This default runs the echo server in this
        process on loopback, which a gateway on this machine reaches; targets whose
        gateway cannot reach this loopback override it.
        """
        from .echo import EchoServer

        server = EchoServer(namespace=namespace, service=service, pod=f"{service}-0", tls=tls).start()
        try:
            self.publish_service(namespace, service, [
                ServicePort(name="https" if tls else "http", port=port, address=server.address)])
        except BaseException:
            server.stop()
            raise
        self.record_backend(namespace, server)
        return server

    def start_multiport_backend(self, *, namespace: str, service: str,
                                ports: list[tuple[str, int, Any]]) -> dict[str, Any]:
        """One Service ``service`` with several named ports ``(name, port, tls)``, each served
        by an echo backend; returns the running backend of each port name.

        This default starts one backend per port (as Service ``<service>-<name>``) and
        publishes their addresses under ``service``.
        """
        servers: dict[str, Any] = {}
        try:
            for name, port, tls in ports:
                servers[name] = self.start_backend(namespace=namespace, service=f"{service}-{name}", port=port,
                                                   tls=tls)
            self.publish_service(namespace, service, [
                ServicePort(name=name, port=port, address=servers[name].address) for name, port, _ in ports])
        except BaseException:
            for server in servers.values():
                server.stop()
            raise
        return servers

    def backend_process_host(self) -> ProcessHost:
        """Where a backend process of the harness (nginx, the echo server) must run.

        This default is this machine's loopback, which a gateway on this machine reaches;
        targets whose gateway cannot reach it override this, and raise :class:`TargetCannot`
        if they run backends only as workloads of their own.
        """
        return ProcessHost("127.0.0.1")

    def deploy_workload(self, objects: list[Manifest], *, namespace: str, service: str,
                        parse_log: Callable[[str], list[dict]]) -> Any:
        """Run a backend as a workload of the cluster: apply ``objects`` (a Deployment whose
        pods carry ``WORKLOAD_LABEL: <service>``, the Service ``service``, its
        ConfigMaps and Secrets) and wait for a ready endpoint.

        Returns the backend (``.requests``: its pods' logs through ``parse_log``,
        ``.stop()``). Only targets with a cluster that runs pods can; this default raises
        :class:`TargetCannot`.
        """
        raise TargetCannot(f"the {self.kind} target runs no workloads; backends there are processes of the harness")

    def trust_as_system_roots(self, ca_pem: bytes) -> None:
        """Add a CA to the roots the gateway trusts for BackendTLSPolicy
        ``wellKnownCACertificates: System``, standing in for a public CA.

        Only where the harness can write the gateway's trust store (a local gateway whose
        command takes ``{system_ca_bundle}``, docs/local-target.md; on the kubernetes target
        a file given with ``--system-ca-bundle``); this default raises
        :class:`SystemRootsUnavailable`, and scenarios that need it skip.
        """
        raise SystemRootsUnavailable(
            f"the {self.kind} target cannot add roots to the gateway's system trust store")

    @abc.abstractmethod
    def listener_address(self, gateway: ObjectRef, port: int) -> tuple[str, int]:
        """Where a client connects to reach the Gateway's listeners on ``port``."""

    # -- waiting ---------------------------------------------------------------------
    @abc.abstractmethod
    def _observe(self, ref: ObjectRef, deadline: float) -> Iterator[dict | None]:
        """Yield the object each time it may have changed, until the deadline."""

    #: How long a status wait may take when the caller names no timeout; the plugin
    #: sets it from --condition-timeout.
    condition_timeout: float = 60.0

    def wait_for(self, ref: ObjectRef, check: Callable[[dict | None], str | None], *,
                 what: str, timeout: float | None = None) -> dict | None:
        """Wait until ``check(obj)`` returns None; it returns why not, for the message.

        The ``timeout`` runs from the harness's last configuration change, as the
        consistency window does (expect.py ``eventually``): what the gateway has not
        written ``timeout`` after the change it reacts to is a failure however late the
        wait began, so a wait that begins long after the change is decided by its first
        observation.
        """
        timeout = self.condition_timeout if timeout is None else timeout
        start = time.monotonic()
        changed = getattr(self, "last_change", None)
        deadline = (start if changed is None else min(changed, start)) + timeout
        announced = False
        why = "never observed"
        obj = None
        for obj in self._observe(ref, deadline):
            why = check(obj)
            if why is None:
                return obj
            if not announced and time.monotonic() - start > PROGRESS_AFTER:
                self._progress(f"waiting up to {timeout:.0f} s for {ref}: {what}")
                announced = True
        since = "" if changed is None else f" of the harness's last configuration change ({start - changed:.1f} s " \
                                            f"before this wait began)"
        raise WaitTimeout(f"{ref}: expected {what} within {timeout:.0f} s{since}; {why}")

    def wait_for_condition(self, ref: ObjectRef, type_: str, status: str = "True", *,
                           reason: str | None = None, listener: str | None = None,
                           timeout: float | None = None) -> dict:
        """Wait for a condition at the object's current generation."""
        where = f"listener {listener!r} " if listener else ""
        what = f"{where}condition {type_}={status}" + (f" reason {reason}" if reason else "")

        def check(obj: dict | None) -> str | None:
            if obj is None:
                return "the object does not exist"
            conds = conditions_of(obj, listener=listener)
            generation = obj.get("metadata", {}).get("generation")
            cond = find_condition(conds, type_)
            if cond is None:
                return f"{where}has {describe_conditions(conds)}"
            if generation is not None and cond.get("observedGeneration") != generation:
                return (f"{type_} observedGeneration is {cond.get('observedGeneration')}, "
                        f"metadata.generation is {generation}")
            if cond.get("status") != status or (reason and cond.get("reason") != reason):
                return f"{where}has {describe_conditions(conds)}"
            return None

        obj = self.wait_for(ref, check, what=what, timeout=timeout)
        assert obj is not None
        return find_condition(conditions_of(obj, listener=listener), type_) or {}

    def wait_for_no_condition(self, ref: ObjectRef, type_: str, *, timeout: float | None = None) -> None:
        """Wait until the gateway, having seen the current generation, drops a condition."""

        def check(obj: dict | None) -> str | None:
            if obj is None:
                return "the object does not exist"
            conds = conditions_of(obj)
            generation = obj.get("metadata", {}).get("generation")
            if any(c.get("observedGeneration") != generation for c in conds
                   if c.get("type") in ("Accepted", "Programmed")):
                return f"status not yet at generation {generation}: {describe_conditions(conds)}"
            if find_condition(conds, type_) is not None:
                return f"has {describe_conditions(conds)}"
            return None

        self.wait_for(ref, check, what=f"no {type_} condition", timeout=timeout)

    def wait_for_route_condition(self, route: ObjectRef, gateway: ObjectRef, type_: str,
                                 status: str = "True", *, reason: str | None = None,
                                 timeout: float | None = None) -> dict:
        """Wait for a condition in the route's status for one parent Gateway."""
        what = f"condition {type_}={status} for parent Gateway {gateway.name}" + (
            f" reason {reason}" if reason else "")
        found: dict = {}

        def check(obj: dict | None) -> str | None:
            if obj is None:
                return "the route does not exist"
            generation = obj.get("metadata", {}).get("generation")
            parents = [p for p in (obj.get("status") or {}).get("parents") or []
                       if (p.get("parentRef") or {}).get("name") == gateway.name]
            if not parents:
                return f"no status for parent Gateway {gateway.name}"
            conds = [c for p in parents for c in p.get("conditions") or []]
            cond = find_condition(conds, type_)
            if cond is None or cond.get("observedGeneration") != generation or \
                    cond.get("status") != status or (reason and cond.get("reason") != reason):
                return f"has {describe_conditions(conds)} at generation {generation}"
            found.update(cond)
            return None

        self.wait_for(route, check, what=what, timeout=timeout)
        return found

    def wait_for_policy_condition(self, policy: ObjectRef, gateway: ObjectRef, type_: str,
                                  status: str = "True", *, reason: str | None = None,
                                  timeout: float | None = None) -> dict:
        """Wait for a condition in a policy's ``status.ancestors[]`` entry for one Gateway.

        As upstream's BackendTLSPolicyMustHaveCondition: every ancestor entry must be at
        the policy's current generation, and the one for ``gateway`` must have the condition.
        """
        what = f"condition {type_}={status} for ancestor Gateway {gateway.name}" + (
            f" reason {reason}" if reason else "")
        found: dict = {}

        def check(obj: dict | None) -> str | None:
            if obj is None:
                return "the policy does not exist"
            generation = obj.get("metadata", {}).get("generation")
            # Only the gateway's own entries: others' are theirs to keep current (and upstream
            # skips them too); an entry without controllerName counts as the gateway's.
            ancestors = [e for e in (obj.get("status") or {}).get("ancestors") or []
                         if e.get("controllerName") in (None, self.controller_name)]
            for entry in ancestors:
                stale = [c for c in entry.get("conditions") or [] if c.get("observedGeneration") != generation]
                if stale:
                    return (f"ancestor {(entry.get('ancestorRef') or {}).get('name')} has conditions at "
                            f"observedGeneration {stale[0].get('observedGeneration')}, metadata.generation "
                            f"is {generation}")
            mine = [e for e in ancestors if (e.get("ancestorRef") or {}).get("name") == gateway.name
                    and (e.get("ancestorRef") or {}).get("namespace") in (None, gateway.namespace)]
            if not mine:
                return f"no status.ancestors entry for Gateway {gateway.name}"
            conds = [c for e in mine for c in e.get("conditions") or []]
            cond = find_condition(conds, type_)
            if cond is None or cond.get("status") != status or (reason and cond.get("reason") != reason):
                return f"has {describe_conditions(conds)}"
            found.update(cond)
            return None

        self.wait_for(policy, check, what=what, timeout=timeout)
        return found
