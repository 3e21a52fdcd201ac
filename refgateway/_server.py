"""The gateway process: watch config_dir, translate, program sockets, write state_dir.

Design note
-----------
One asyncio loop does everything. A cheap stat scan of ``config_dir`` every 25 ms
detects changes (files are replaced by rename, so the inode changes even when the
size and mtime do not). On a change the whole tree is re-read and re-translated: the
object sets are small and a full translation keeps the result independent of the
order in which changes arrived.

Order of effects on every change: sockets and TLS contexts first, then the ports
files, then status, then errors.yaml. A harness that sees ``Programmed=True`` can
therefore connect at once.

Each (Gateway, listener port) gets one ``Site``: a loopback socket bound once and kept
for as long as the port exists, whose plan and contexts are swapped in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml
from OpenSSL import SSL

from . import translator
from ._edge import Edge, Timeouts, on_sni, on_verify
from ._tls import MAX_CLIENT_CHAIN_DEPTH, BackendContexts, ContextCache, SessionMemory
from .faults import (DROPS_FOREIGN_POLICY_STATUS, IGNORE_BACKEND_TLS_POLICY_DELETION, IGNORE_CA_ROTATION,
                     IGNORE_CERTIFICATE_ROTATION, IGNORE_CLUSTER_TRUST_BUNDLE_ROTATION, SESSIONS_SURVIVE_CA_CHANGE,
                     STALE_INSECURE_CONDITION)

log = logging.getLogger("refgateway")

POLL_INTERVAL = 0.025
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Connections the kernel queues before the loop accepts them: many clients may connect at once.
BACKLOG = 1024
CLUSTER_SCOPED = {"GatewayClass", "Namespace", "ClusterTrustBundle"}
#: Status lists shared with other controllers, each entry owned by its controllerName, as
#: on an API server (the Kubernetes status sink does the same with resourceVersion).
SHARED_STATUS = {"HTTPRoute": "parents", "BackendTLSPolicy": "ancestors"}


# --------------------------------------------------------------------------- files


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def scan(config_dir: Path) -> tuple:
    """A signature of the tree that changes whenever any visible file changes.

    Runs every POLL_INTERVAL, also while the data plane is busy: one scandir per
    directory and one stat per file, nothing more (it used to be a third of the
    gateway's idle CPU time).
    """
    sig: list = []
    _scan_dir(os.fspath(config_dir), sig)
    return tuple(sig)


def _scan_dir(path: str, sig: list) -> None:
    try:
        with os.scandir(path) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return
    subdirs = []
    for e in entries:
        try:
            if e.is_dir():
                if not e.is_symlink():  # as os.walk: a link to a directory is not followed
                    subdirs.append(e.path)
                continue
            st = e.stat()
        except OSError:
            continue
        sig.append((e.path, st.st_ino, st.st_mtime_ns, st.st_size))
    for d in subdirs:
        _scan_dir(d, sig)


def parse_manifest(rel: str, text: str) -> tuple[tuple[str, str, str], dict] | str:
    """One config file of one object -> (key, object), or a one-line reason it cannot be used."""
    results = parse_manifests(rel, text)
    if isinstance(results, str):
        return results
    if len(results) != 1:
        return f"expected one object, got {len(results)}"
    return results[0]


def parse_manifests(rel: str, text: str) -> list[tuple[tuple[str, str, str], dict]] | str:
    """A config file -> its objects, or a one-line reason it cannot be used.

    Besides the harness's one object per file, a file may be what ``kubectl apply -f``
    takes: documents separated by ``---``, a ``kind: List``; a namespaced object without
    ``metadata.namespace`` is in ``default``, as kubectl puts it (or in the namespace
    folder of the harness's layout ``<namespace>/<Kind>/<name>.yaml``).
    """
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        return f"invalid YAML: {first}"
    objects: list = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            objects.extend(doc["items"])
        else:
            objects.append(doc)
    parts = Path(rel).parts
    layout_ns = parts[0] if len(parts) == 3 and parts[0] != "_cluster" else ""
    results = []
    for index, obj in enumerate(objects):
        where = f"document {index + 1}: " if len(objects) > 1 else ""
        if not isinstance(obj, dict):
            return f"{where}not an object (got {type(obj).__name__})"
        kind = obj.get("kind")
        meta = obj.get("metadata")
        if not isinstance(kind, str) or not kind:
            return f"{where}no kind"
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            return f"{where}no metadata.name"
        if kind in CLUSTER_SCOPED:
            ns = ""
        else:
            ns = meta.get("namespace") or layout_ns or "default"
            meta["namespace"] = ns
        results.append(((kind, ns, meta["name"]), obj))
    return results


def load_tree(config_dir: Path, parsed: dict | None = None) -> tuple[dict, dict[str, str]]:
    """Every object of the config tree, and per-file errors. ``parsed``: a cache of the
    files parsed before, by path and text, kept by the caller across reloads: parsing is
    most of a reload's time, and a reload after one change reads every file (with many
    Gateways configured, 280 ms a reload without it; benchmarks/results-2026-12-06.md).
    The objects are shared between reloads: nothing downstream changes them."""
    objects, errors = {}, {}
    seen: set[str] = set()
    origin: dict = {}
    for root, dirs, files in os.walk(config_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            p = Path(root, f)
            rel = p.relative_to(config_dir).as_posix()
            try:
                text = p.read_text()
            except FileNotFoundError:
                continue  # deleted between scan and read; the next scan sees it
            except (OSError, UnicodeDecodeError) as exc:
                errors[rel] = f"unreadable: {exc.__class__.__name__}: {exc}".splitlines()[0]
                continue
            seen.add(rel)
            before = parsed.get(rel) if parsed is not None else None
            if before is not None and before[0] == text:
                result = before[1]
            else:
                result = parse_manifests(rel, text)
                if parsed is not None:
                    parsed[rel] = (text, result)
            if isinstance(result, str):
                errors[rel] = result
                continue
            for key, obj in result:
                if key in origin:
                    errors[rel] = f"{key[0]} {'/'.join(filter(None, key[1:]))} is also in {origin[key]}"
                    continue
                origin[key] = rel
                objects[key] = obj
    if parsed is not None:
        for rel in set(parsed) - seen:
            del parsed[rel]
    return objects, errors


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- sites


@dataclass(eq=False)
class Site:
    port: translator.Port
    faults: frozenset[str]
    contexts: dict[str, SSL.Context] = field(default_factory=dict)
    base_context: SSL.Context | None = None  # the port's session context (ContextCache.session_context)
    scopes: dict[str, bytes] = field(default_factory=dict)  # listener name -> session scope
    sessions: SessionMemory | None = None
    server: asyncio.AbstractServer | None = None
    bound: int = 0
    edges: set = field(default_factory=set)
    backend_contexts: BackendContexts | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)


class Gateway:
    """What both modes share: translation, the data plane's sites and TLS contexts.

    A mode supplies the object source (``load``, ``cluster_trust_bundles_served``), the
    status sink (``publish``), how a site's socket is opened (``_listen``) and the loop
    (``run``): ``LocalGateway`` below from directories, ``_kube.KubeGateway`` from an
    API server.
    """

    def __init__(self, *, controller: str, faults: frozenset[str],
                 system_ca_bundle: Path | None = None, max_chain_depth: int = MAX_CLIENT_CHAIN_DEPTH):
        self.controller = controller
        self.faults = faults
        self.sites: dict[tuple[str, str, int], Site] = {}
        self.contexts = ContextCache(faults=faults, sni_callback=on_sni, verify_callback=on_verify,
                                     max_chain_depth=max_chain_depth)
        self.backend_contexts = BackendContexts(faults=faults, system_ca_bundle=system_ca_bundle)
        self.sessions = SessionMemory(faults)
        self.scope_memory: dict = {}  # fault sessions-survive-ca-change
        self.ca_memory: dict = {}
        self.cert_memory: dict = {}
        self.bundle_memory: dict = {}
        self.policy_memory: dict = {}
        self.stopping = asyncio.Event()
        self.timeouts = Timeouts()  # client connection timeouts (set by the command line)
        #: --apply-delay: seconds between reading a changed configuration and serving it
        #: (and only then writing its status); a slow but correct gateway, for the harness's
        #: consistency window. The first configuration is not a change and is not delayed.
        self.apply_delay = 0.0
        self._reloads = 0

    def load(self) -> tuple[dict, dict[str, str]]:
        """The object source: objects keyed (kind, ns, name), and per-file errors."""
        raise NotImplementedError

    def cluster_trust_bundles_served(self) -> bool:
        raise NotImplementedError

    async def publish(self, plan: translator.Plan, statuses: dict, errors: dict[str, str]) -> None:
        """The status sink, called once the data plane serves ``plan``."""
        raise NotImplementedError

    async def reload(self) -> None:
        objects, errors = self.load()
        if IGNORE_CLUSTER_TRUST_BUNDLE_ROTATION in self.faults:
            objects = translator.sticky_bundles(objects, self.bundle_memory)
        if IGNORE_BACKEND_TLS_POLICY_DELETION in self.faults:
            objects = translator.sticky_policies(objects, self.policy_memory)
        plan, statuses = translator.translate(objects, controller=self.controller, faults=self.faults,
                                              cluster_trust_bundles=self.cluster_trust_bundles_served())
        if IGNORE_CA_ROTATION in self.faults:
            plan = translator.sticky_cas(plan, self.ca_memory)
        if IGNORE_CERTIFICATE_ROTATION in self.faults:
            plan = translator.sticky_certs(plan, self.cert_memory)
        self._reloads += 1
        if self.apply_delay and self._reloads > 1:
            # What was read stays what is applied: changes made meanwhile wait for the next reload.
            log.info("applying this configuration in %.1f s (--apply-delay)", self.apply_delay)
            await asyncio.sleep(self.apply_delay)
        await self._program(plan)
        await self.publish(plan, statuses, errors)
        log.info("reloaded: %d objects, %d ports, %d status documents, %d file errors",
                 len(objects), len(plan.ports), len(statuses), len(errors))

    def _scope(self, key: tuple[str, str, int], ls) -> bytes:
        scope = self.contexts.scope(ls)
        if SESSIONS_SURVIVE_CA_CHANGE in self.faults:
            # The session scope of the listener's first configuration, kept across changes
            # (Go CVE-2025-68121: resumption after ClientCAs changed).
            scope = self.scope_memory.setdefault((key, ls.name), scope)
        return scope

    async def _program(self, plan: translator.Plan) -> None:
        all_listeners, session_contexts = [], []
        for key, port in plan.ports.items():
            contexts, scopes = {}, {}
            for ls in port.listeners:
                if ls.servable and ls.protocol == "HTTPS":
                    try:
                        contexts[ls.name] = self.contexts.context(ls)
                        scopes[ls.name] = self._scope(key, ls)
                        all_listeners.append(ls)
                    except (SSL.Error, ValueError) as exc:  # the translator validated; belt and braces
                        log.warning("cannot build TLS context for %s/%s %s: %s", key[0], key[1], ls.name, exc)
            site = self.sites.get(key)
            if site is None:
                site = Site(port=port, faults=self.faults, backend_contexts=self.backend_contexts,
                            timeouts=self.timeouts, sessions=self.sessions)
                if not await self._listen(key, site):
                    continue  # controller mode: reported as not programmed, retried on the next reload
                self.sites[key] = site
            # Swap in one step; connections already accepted keep their snapshot.
            base = self.contexts.session_context(list(scopes.values())) if contexts else None
            site.port, site.contexts, site.scopes, site.base_context = port, contexts, scopes, base
            if base is not None:
                session_contexts.append(base)
        self.contexts.retain(all_listeners, session_contexts)
        for key in [k for k in self.sites if k not in plan.ports]:
            site = self.sites.pop(key)
            site.server.close()  # stop accepting; established connections finish on their own
            log.info("gateway %s/%s port %d removed", *key)

    async def _listen(self, key: tuple[str, str, int], site: Site) -> bool:
        """Open a new site's socket; False if it cannot be (reported, retried on the next reload)."""
        raise NotImplementedError

    async def run(self) -> None:
        raise NotImplementedError

    async def shutdown(self) -> None:
        for site in self.sites.values():
            site.server.close()
            for edge in list(site.edges):
                edge.close(graceful=False)
        for site in self.sites.values():
            await site.server.wait_closed()
        log.info("stopped")


class LocalGateway(Gateway):
    """Local mode: objects from the files of ``config_dir``, status and ports into ``state_dir``."""

    def __init__(self, config_dir: Path, state_dir: Path, *, listener_ports: bool = False, **shared):
        super().__init__(**shared)
        self.config_dir = config_dir
        self.listener_ports = listener_ports
        self.state_dir = state_dir
        self.written_status: dict[tuple, dict] = {}
        self.written_ports: dict[tuple[str, str], dict] = {}
        self._parsed: dict[str, tuple[str, object]] = {}  # load_tree's cache

    def load(self) -> tuple[dict, dict[str, str]]:
        """The object source: objects keyed (kind, ns, name), and per-file errors."""
        return load_tree(self.config_dir, self._parsed)

    def cluster_trust_bundles_served(self) -> bool:
        """Local mode: the config dir can always hold ClusterTrustBundles."""
        return True

    async def publish(self, plan: translator.Plan, statuses: dict, errors: dict[str, str]) -> None:
        """The status sink, called once the data plane serves ``plan``."""
        self._write_ports(plan)
        self._write_status(statuses)
        atomic_write(self.state_dir / "errors.yaml", yaml.safe_dump(errors, sort_keys=True))

    async def _listen(self, key: tuple[str, str, int], site: Site) -> bool:
        """Open a new site's socket. Local mode: an ephemeral port on 127.0.0.1, or the
        listener's own port with --listen-on-listener-ports (checking a guide by hand)."""
        port = key[2] if self.listener_ports else 0
        try:
            site.server = await asyncio.get_running_loop().create_server(lambda: Edge(site), "127.0.0.1", port,
                                                                          backlog=BACKLOG)
        except OSError as exc:
            log.error("gateway %s/%s port %d: cannot listen on 127.0.0.1:%d: %s", *key, port, exc.strerror or exc)
            return False
        site.bound = site.server.sockets[0].getsockname()[1]
        log.info("gateway %s/%s port %d listening on 127.0.0.1:%d", *key, site.bound)
        return True

    def _write_ports(self, plan: translator.Plan) -> None:
        wanted: dict[tuple[str, str], dict] = {gw: {} for gw in plan.gateways}
        for (ns, gw, port), site in sorted(self.sites.items()):
            wanted.setdefault((ns, gw), {})[port] = site.bound
        for gw, ports in wanted.items():
            if self.written_ports.get(gw) != ports:
                atomic_write(self.state_dir / "ports" / gw[0] / f"{gw[1]}.yaml", yaml.safe_dump(ports))
        for gw in set(self.written_ports) - set(wanted):
            (self.state_dir / "ports" / gw[0] / f"{gw[1]}.yaml").unlink(missing_ok=True)
        self.written_ports = wanted

    def _status_path(self, key: tuple[str, str, str]) -> Path:
        kind, ns, name = key
        return self.state_dir / "status" / (ns or "_cluster") / kind / f"{name}.yaml"

    def _write_status(self, statuses: dict) -> None:
        now = _now()
        sticky = frozenset({"InsecureFrontendValidationMode"}) if STALE_INSECURE_CONDITION in self.faults else frozenset()
        new_written = {}
        for key, doc in sorted(statuses.items()):
            old = self.written_status.get(key)
            doc = translator.stamp_transitions(doc, old, now, sticky_types=sticky)
            if doc != old:
                self._write_status_file(key, doc)
            new_written[key] = doc
        for key in set(self.written_status) - set(new_written):
            self._write_status_file(key, None)
        self.written_status = new_written

    def _write_status_file(self, key: tuple[str, str, str], doc: dict | None) -> None:
        """Write (None: remove) our status of one object. A shared list keeps the entries of
        other controllers, which a harness adds under state_dir/status.lock
        (docs/local-target.md): read, merge and rewrite hold the same lock."""
        path, shared = self._status_path(key), SHARED_STATUS.get(key[0])
        if shared is None:
            if doc is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, yaml.safe_dump(doc, sort_keys=False))
            return
        with self._status_lock():
            try:
                current = yaml.load(path.read_bytes(), Loader=_YAML_LOADER) or {}
            except FileNotFoundError:
                current = {}
            others = [e for e in (current.get("status") or {}).get(shared) or []
                      if isinstance(e, dict) and e.get("controllerName") != self.controller]
            if DROPS_FOREIGN_POLICY_STATUS in self.faults and key[0] == "BackendTLSPolicy":
                others = []
            if doc is None and not others:
                path.unlink(missing_ok=True)
                return
            base = doc if doc is not None else current
            ours = ((doc or {}).get("status") or {}).get(shared) or []
            merged = {**base, "status": {**(base.get("status") or {}), shared: others + ours}}
            atomic_write(path, yaml.safe_dump(merged, sort_keys=False))

    @contextlib.contextmanager
    def _status_lock(self):
        with open(self.state_dir / "status.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        last = scan(self.config_dir)
        await self.reload()
        atomic_write(self.state_dir / "ready", f"{os.getpid()}\n")
        log.info("ready (pid %d, controller %s, faults: %s)", os.getpid(), self.controller,
                 ", ".join(sorted(self.faults)) or "none")
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), POLL_INTERVAL)
            except asyncio.TimeoutError:
                pass
            sig = scan(self.config_dir)
            if sig != last and not self.stopping.is_set():
                changed = set(sig) - set(last)
                last = sig
                seen = time.time()
                # The newest write among the changed files (a deletion: when it was seen).
                newest = max((entry[2] for entry in changed), default=int(seen * 1e9)) / 1e9
                try:
                    await self.reload()
                except Exception:  # keep serving the previous configuration
                    log.exception("reload failed; keeping the previous configuration")
                else:
                    # benchmarks/suite_speed.py sets this beside the harness's own time per test.
                    done = time.time()
                    log.info("configuration applied at %.3f: %.1f ms after the newest change, reload %.1f ms",
                             done, 1000 * (done - min(newest, seen)), 1000 * (done - seen))
        await self.shutdown()
