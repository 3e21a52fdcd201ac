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
import logging
import os
import signal
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml
from OpenSSL import SSL

from . import translator
from ._edge import Edge, on_sni, on_verify
from ._tls import BackendContexts, ContextCache

log = logging.getLogger("refgateway")

POLL_INTERVAL = 0.025
CLUSTER_SCOPED = {"GatewayClass", "Namespace"}


# --------------------------------------------------------------------------- files


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def scan(config_dir: Path) -> tuple:
    """A signature of the tree that changes whenever any visible file changes."""
    sig = []
    for root, dirs, files in os.walk(config_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            p = os.path.join(root, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            sig.append((p, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(sig)


def parse_manifest(rel: str, text: str) -> tuple[tuple[str, str, str], dict] | str:
    """One config file -> (key, object), or a one-line reason it cannot be used."""
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        return f"invalid YAML: {first}"
    if not isinstance(obj, dict):
        return f"not an object (got {type(obj).__name__})"
    kind = obj.get("kind")
    meta = obj.get("metadata")
    if not isinstance(kind, str) or not kind:
        return "no kind"
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        return "no metadata.name"
    parts = Path(rel).parts
    if kind in CLUSTER_SCOPED:
        ns = ""
    else:
        ns = meta.get("namespace") or (parts[0] if len(parts) == 3 and parts[0] != "_cluster" else "")
        if not ns:
            return "namespaced object without a namespace"
        meta["namespace"] = ns
    return (kind, ns, meta["name"]), obj


def load_tree(config_dir: Path) -> tuple[dict, dict[str, str]]:
    objects, errors = {}, {}
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
            result = parse_manifest(rel, text)
            if isinstance(result, str):
                errors[rel] = result
            else:
                objects[result[0]] = result[1]
    return objects, errors


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- sites


@dataclass(eq=False)
class Site:
    port: translator.Port
    faults: frozenset[str]
    contexts: dict[str, SSL.Context] = field(default_factory=dict)
    base_context: SSL.Context | None = None
    server: asyncio.AbstractServer | None = None
    bound: int = 0
    edges: set = field(default_factory=set)
    backend_contexts: BackendContexts | None = None


class Gateway:
    def __init__(self, config_dir: Path, state_dir: Path, *, controller: str, faults: frozenset[str],
                 system_ca_bundle: Path | None = None):
        self.config_dir = config_dir
        self.state_dir = state_dir
        self.controller = controller
        self.faults = faults
        self.sites: dict[tuple[str, str, int], Site] = {}
        self.contexts = ContextCache(faults=faults, sni_callback=on_sni, verify_callback=on_verify)
        self.backend_contexts = BackendContexts(faults=faults, system_ca_bundle=system_ca_bundle)
        self.written_status: dict[tuple, dict] = {}
        self.written_ports: dict[tuple[str, str], dict] = {}
        self.ca_memory: dict = {}
        self.cert_memory: dict = {}
        self.stopping = asyncio.Event()

    def load(self) -> tuple[dict, dict[str, str]]:
        """The object source: objects keyed (kind, ns, name), and per-file errors."""
        return load_tree(self.config_dir)

    async def publish(self, plan: translator.Plan, statuses: dict, errors: dict[str, str]) -> None:
        """The status sink, called once the data plane serves ``plan``."""
        self._write_ports(plan)
        self._write_status(statuses)
        atomic_write(self.state_dir / "errors.yaml", yaml.safe_dump(errors, sort_keys=True))

    async def reload(self) -> None:
        objects, errors = self.load()
        plan, statuses = translator.translate(objects, controller=self.controller, faults=self.faults)
        if "ignore-ca-rotation" in self.faults:
            plan = translator.sticky_cas(plan, self.ca_memory)
        if "ignore-certificate-rotation" in self.faults:
            plan = translator.sticky_certs(plan, self.cert_memory)
        await self._program(plan)
        await self.publish(plan, statuses, errors)
        log.info("reloaded: %d objects, %d ports, %d status documents, %d file errors",
                 len(objects), len(plan.ports), len(statuses), len(errors))

    async def _program(self, plan: translator.Plan) -> None:
        all_listeners = []
        for key, port in plan.ports.items():
            contexts = {}
            for ls in port.listeners:
                if ls.servable and ls.protocol == "HTTPS":
                    try:
                        contexts[ls.name] = self.contexts.context(ls)
                        all_listeners.append(ls)
                    except (SSL.Error, ValueError) as exc:  # the translator validated; belt and braces
                        log.warning("cannot build TLS context for %s/%s %s: %s", key[0], key[1], ls.name, exc)
            site = self.sites.get(key)
            if site is None:
                site = Site(port=port, faults=self.faults, backend_contexts=self.backend_contexts)
                if not await self._listen(key, site):
                    continue  # controller mode: reported as not programmed, retried on the next reload
                self.sites[key] = site
            # Swap in one step; connections already accepted keep their snapshot.
            site.port, site.contexts = port, contexts
            site.base_context = next(iter(contexts.values()), None)
        self.contexts.retain(all_listeners)
        for key in [k for k in self.sites if k not in plan.ports]:
            site = self.sites.pop(key)
            site.server.close()  # stop accepting; established connections finish on their own
            log.info("gateway %s/%s port %d removed", *key)

    async def _listen(self, key: tuple[str, str, int], site: Site) -> bool:
        """Open a new site's socket. Local mode: an ephemeral port on 127.0.0.1."""
        site.server = await asyncio.get_running_loop().create_server(lambda: Edge(site), "127.0.0.1", 0)
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
        sticky = frozenset({"InsecureFrontendValidationMode"}) if "stale-insecure-condition" in self.faults else frozenset()
        new_written = {}
        for key, doc in sorted(statuses.items()):
            old = self.written_status.get(key)
            doc = translator.stamp_transitions(doc, old, now, sticky_types=sticky)
            if doc != old:
                atomic_write(self._status_path(key), yaml.safe_dump(doc, sort_keys=False))
            new_written[key] = doc
        for key in set(self.written_status) - set(new_written):
            self._status_path(key).unlink(missing_ok=True)
        self.written_status = new_written

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
                last = sig
                try:
                    await self.reload()
                except Exception:  # keep serving the previous configuration
                    log.exception("reload failed; keeping the previous configuration")
        await self.shutdown()

    async def shutdown(self) -> None:
        for site in self.sites.values():
            site.server.close()
            for edge in list(site.edges):
                edge.close(graceful=False)
        for site in self.sites.values():
            await site.server.wait_closed()
        log.info("stopped")
