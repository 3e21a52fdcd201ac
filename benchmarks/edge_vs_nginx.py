"""refgateway's data plane beside Debian's nginx, measured side by side in one run.

    python benchmarks/edge_vs_nginx.py [--rounds 5] [--seconds 5] [--profile FILE]

Both gateways serve the same listener: the same server certificate, the same client
CA, client certificates required and verified (refgateway: a Gateway with
``frontend.default.validation`` AllowValidOnly; nginx: ``ssl_verify_client on``), one
process each (nginx: one worker), TLS 1.2 and 1.3 enabled (the client negotiates 1.3).
For full handshakes nginx serves without session resumption (``ssl_session_cache off;
ssl_session_tickets off``); for resumed ones the same server on a second port with
``ssl_session_cache shared:SSL:10m; ssl_session_tickets on``. refgateway always resumes
(scoped to the validation, docs/refgateway.md), one port for both.
Both proxy every request over HTTP/1.1 to the same backend, a third nginx answering
``200 ok`` (so that neither gateway waits on a slow backend), and pass the client
verification result to it as a header.

One client for both, ``benchmarks/loadclient`` (Go, built on first use into
~/.cache/mtls-conformance): ``handshake`` opens a fresh connection per request (full
handshake with the client certificate, "Connection: close"); ``resumed`` does the same
with a client session cache, so that every connection after the first resumes the
session (TLS 1.3 ticket) the gateway gave before; ``keepalive`` sends
request after request over kept-alive HTTP/1.1 connections. Rounds interleave the two
gateways (alternating which goes first), so both see the same machine load; the
medians, every round's value and the ratio of the medians are printed. Nothing is
asserted: this is a measurement, not a test.

Targets (issue 14): handshakes >= 0.8x nginx, kept-alive requests >= 0.25x nginx; resumed
handshakes are measured (issue 21), with no target yet.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme
import yaml

from testkit.procs import stop_process_group

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtls-conformance"
SNI = "example.com"

_NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
{body}
}}
"""

_BACKEND = """\
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
"""

_UPSTREAM = """\
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 64;
    }}
"""

#: One server block: without resumption on the port for full handshakes, with it on the
#: port for resumed ones.
_GATEWAY = """\
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        server_name {sni};
        ssl_certificate {dir}/server.crt;
        ssl_certificate_key {dir}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {dir}/client-ca.crt;
        ssl_verify_client on;
        ssl_verify_depth 4;
        ssl_session_cache {session_cache};
        ssl_session_tickets {tickets};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Client-Verify $ssl_client_verify;
            proxy_set_header X-Client-Cert-Fingerprint $ssl_client_fingerprint;
            proxy_set_header X-Client-Cert-Subject $ssl_client_s_dn;
        }}
    }}
"""


_PROFILED = """\
import cProfile, signal, sys, time
from refgateway._cli import main
out = sys.argv[1]
prof = cProfile.Profile(time.process_time)
try:
    prof.runcall(main, sys.argv[2:])
finally:
    prof.dump_stats(out)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {timeout}s")


def build_client() -> Path:
    src = ROOT / "benchmarks" / "loadclient" / "main.go"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    binary = CACHE / f"loadclient-{digest}"
    if not binary.exists():
        go = shutil.which("go") or "/usr/local/go/bin/go"
        if not Path(go).exists():
            sys.exit("benchmarks/loadclient needs Go (https://go.dev/dl/) to be built once")
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_name(binary.name + f".{os.getpid()}")
        subprocess.run([go, "build", "-o", str(tmp), str(src)], check=True, cwd=src.parent,
                       env={**os.environ, "GO111MODULE": "off"})
        os.replace(tmp, binary)
    return binary


def nginx(dir: Path, body: str) -> subprocess.Popen:
    dir.mkdir(parents=True, exist_ok=True)
    conf = dir / "nginx.conf"
    conf.write_text(_NGINX_COMMON.format(dir=dir, body=body))
    return subprocess.Popen([NGINX, "-c", str(conf), "-p", str(dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def refgateway_config(config: Path, pki: dict, backend: int) -> None:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    objs = [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "ref"},
         "spec": {"controllerName": "mtls-conformance.dev/refgateway"}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "server-cert", "namespace": "bench"},
         "data": {"tls.crt": b64(pki["server.crt"]), "tls.key": b64(pki["server.key"])}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "client-ca", "namespace": "bench"},
         "data": {"ca.crt": pki["client-ca.crt"].decode()}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "gw", "namespace": "bench"},
         "spec": {"gatewayClassName": "ref",
                  "listeners": [{"name": "https", "port": 443, "protocol": "HTTPS", "hostname": SNI,
                                 "tls": {"mode": "Terminate",
                                         "certificateRefs": [{"kind": "Secret", "name": "server-cert"}]}}],
                  "tls": {"frontend": {"default": {"validation": {
                      "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "client-ca"}]}}}}}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "echo", "namespace": "bench"},
         "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "bench"},
         "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "echo-1", "namespace": "bench", "labels": {"kubernetes.io/service-name": "echo"}},
         "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
         "ports": [{"name": "http", "port": backend, "protocol": "TCP"}]},
    ]
    for i, obj in enumerate(objs):
        ns = obj["metadata"].get("namespace", "_cluster")
        path = config / ns / obj["kind"] / f"{obj['metadata']['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(obj))


def make_pki(dir: Path) -> dict:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert(SNI)
    client = client_ca.issue_cert("client.example.com")
    files = {
        "server-ca.crt": server_ca.cert_pem.bytes(),
        "server.crt": b"".join(p.bytes() for p in server.cert_chain_pems),
        "server.key": server.private_key_pem.bytes(),
        "client-ca.crt": client_ca.cert_pem.bytes(),
        "client.crt": client.cert_chain_pems[0].bytes(),
        "client.key": client.private_key_pem.bytes(),
    }
    for name, data in files.items():
        (dir / name).write_bytes(data)
        (dir / name).chmod(0o600 if name.endswith(".key") else 0o644)
    return files


def measure(client: Path, pki_dir: Path, port: int, mode: str, conns: int, seconds: float) -> dict:
    out = subprocess.run([str(client), "-addr", f"127.0.0.1:{port}", "-sni", SNI,
                          "-ca", str(pki_dir / "server-ca.crt"), "-cert", str(pki_dir / "client.crt"),
                          "-key", str(pki_dir / "client.key"), "-mode", mode, "-conns", str(conns),
                          "-seconds", str(seconds)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    result["rate"] = result["ok"] / result["seconds"]
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (nginx: master and worker)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--handshake-conns", type=int, default=8)
    parser.add_argument("--keepalive-conns", type=int, default=16)
    parser.add_argument("--sweep", metavar="N,N,...",
                        help="diagnosis: kept-alive requests/s and CPU at each number of connections, then exit")
    parser.add_argument("--modes", default="handshake,resumed,keepalive",
                        help="comma-separated: handshake, resumed, keepalive")
    parser.add_argument("--profile", metavar="FILE",
                        help="run refgateway under cProfile and write its stats to FILE")
    args = parser.parse_args(argv)
    client = build_client()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="edge-vs-nginx-") as tmp:
        d = Path(tmp)
        (d / "pki").mkdir()
        make_pki(d / "pki")
        backend, nginx_port = free_port(), free_port()
        try:
            procs.append(nginx(d / "backend", _BACKEND.format(port=backend)))
            wait_port(backend, procs[-1], "backend nginx")
            gw_dir = d / "gateway"
            gw_dir.mkdir()
            for name in ("server.crt", "server.key", "client-ca.crt"):
                shutil.copy(d / "pki" / name, gw_dir / name)
            resume_port = free_port()
            servers = [_GATEWAY.format(port=p, sni=SNI, dir=gw_dir, session_cache=cache, tickets=tickets)
                       for p, cache, tickets in ((nginx_port, "off", "off"),
                                                 (resume_port, "shared:SSL:10m", "on"))]
            procs.append(nginx(gw_dir, _UPSTREAM.format(backend=backend) + "".join(servers)))
            wait_port(nginx_port, procs[-1], "nginx")
            wait_port(resume_port, procs[-1], "nginx")
            config, state = d / "config", d / "state"
            config.mkdir()
            refgateway_config(config, {k: (d / "pki" / k).read_bytes() for k in
                                       ("server.crt", "server.key", "client-ca.crt")}, backend)
            cmd = [sys.executable, "-m", "refgateway", "--config-dir", str(config), "--state-dir", str(state),
                   "--log-level", "WARNING"]
            if args.profile:  # CPU time, not wall time: on a busy machine waiting says nothing
                cmd = [sys.executable, "-c", _PROFILED, str(Path(args.profile).absolute()), *cmd[3:]]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, start_new_session=True))
            ports = state / "ports" / "bench" / "gw.yaml"
            deadline = time.monotonic() + 30
            while not (ports.exists() and (yaml.safe_load(ports.read_text()) or {}).get(443)):
                if time.monotonic() > deadline or procs[-1].poll() is not None:
                    sys.exit("refgateway did not come up")
                time.sleep(0.05)
            ref_port = yaml.safe_load(ports.read_text())[443]
            wait_port(ref_port, procs[-1], "refgateway")
            targets = {"nginx": nginx_port, "refgateway": ref_port}
            resume_targets = {"nginx": resume_port, "refgateway": ref_port}
            pids = {"nginx": procs[1].pid, "refgateway": procs[2].pid}
            modes = {m: {"handshake": args.handshake_conns, "resumed": args.handshake_conns,
                         "keepalive": args.keepalive_conns}[m]
                     for m in args.modes.split(",")}
            rates: dict[tuple[str, str], list[float]] = {(m, t): [] for m in modes for t in targets}
            errors: dict[tuple[str, str], int] = {k: 0 for k in rates}
            resumed: dict[tuple[str, str], int] = {k: 0 for k in rates}
            served: dict[tuple[str, str], int] = {k: 0 for k in rates}
            cpu: dict[tuple[str, str], list[float]] = {k: [] for k in rates}  # CPU ms per request
            if args.sweep:
                for conns in map(int, args.sweep.split(",")):
                    for name in targets:
                        before = cpu_seconds(pids[name])
                        res = measure(client, d / "pki", targets[name], "keepalive", conns, args.seconds)
                        used = cpu_seconds(pids[name]) - before
                        print(f"keepalive conns={conns:<4} {name:<11} {res['rate']:8.0f}/s  "
                              f"CPU {100 * used / res['seconds']:.0f}% of a core", flush=True)
                return
            for r in range(args.rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for mode, conns in modes.items():
                    for name in order:
                        before = cpu_seconds(pids[name])
                        port = (resume_targets if mode == "resumed" else targets)[name]
                        res = measure(client, d / "pki", port, mode, conns, args.seconds)
                        resumed[(mode, name)] += res.get("resumed", 0)
                        served[(mode, name)] += res["ok"]
                        cpu[(mode, name)].append(1000 * (cpu_seconds(pids[name]) - before) / max(1, res["ok"]))
                        rates[(mode, name)].append(res["rate"])
                        errors[(mode, name)] += res["errors"]
                        if res["errors"]:
                            print(f"  {name} {mode}: {res['errors']} errors, e.g. {res.get('first_error')}",
                                  file=sys.stderr)
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{m} {t} {rates[(m, t)][-1]:.0f}/s" for m in modes for t in targets), flush=True)
        finally:
            for p in reversed(procs):
                stop_process_group(p)
    labels = {"handshake": ("full mTLS handshakes/s (fresh connection, 1 request each)", 0.8),
              "resumed": ("resumed mTLS handshakes/s (fresh connection offering the session from before, "
                          "1 request each)", None),
              "keepalive": ("requests/s on kept-alive HTTP/1.1 connections", 0.25)}
    print()
    for mode, (label, target) in labels.items():
        if mode not in modes:
            continue
        print(label)
        for name in targets:
            values = rates[(mode, name)]
            share = ""
            if mode == "resumed":  # a gateway that resumed nothing measured full handshakes
                share = f"; resumed {resumed[(mode, name)]} of {served[(mode, name)]} connections"
            print(f"  {name:<11} median {statistics.median(values):8.0f}/s "
                  f"(min {min(values):.0f}, max {max(values):.0f}; errors {errors[(mode, name)]}{share}); "
                  f"CPU per request {statistics.median(cpu[(mode, name)]):.3f} ms")
        per_round = [a / b for a, b in zip(rates[(mode, "refgateway")], rates[(mode, "nginx")]) if b]
        ratio = statistics.median(rates[(mode, "refgateway")]) / statistics.median(rates[(mode, "nginx")])
        verdict = "no target" if target is None else f"target >= {target}x: {'met' if ratio >= target else 'NOT met'}"
        print(f"  ratio refgateway/nginx: {ratio:.2f}x (per round {min(per_round):.2f}..{max(per_round):.2f}; "
              f"{verdict})")
        cost = statistics.median(cpu[(mode, "nginx")]) / statistics.median(cpu[(mode, "refgateway")])
        print(f"  ratio of CPU per request nginx/refgateway: {cost:.2f}x (less sensitive to a busy machine)")


if __name__ == "__main__":
    main()
