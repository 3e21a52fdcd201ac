"""Traefik, judged by both suites on the API server tier.

    python tools/traefik/run.py [--out reports/traefik] [--skip-ours] [--skip-upstream]

Starts a throwaway API server (testkit/testcluster.py) with the upstream suite's v1.7.0
CRDs, the stand-in kubelet (testkit/kubelet_standin.py: every Deployment runs as a
process in a network namespace; the upstream suite's echo-basic image as the locally built
echo-basic, other images as our echo backend or Debian's nginx), and Traefik
(tools/traefik/build.sh) as a process with a kubeconfig: its Kubernetes Gateway provider,
GatewayClass ``traefik`` (controllerName ``traefik.io/gateway-controller``), entrypoints on
``ADDRESS`` for every listener port the two suites use, and that address as every Gateway's
status address. Then:

1. ``pytest mtls_conformance/scenarios --gateway-class=traefik`` (kubernetes target, deployment backends),
   report in OUT (the matrix reads it);
2. the upstream suite's TLS tests (tools/upstream/run.py) with the features Traefik
   publishes in its GatewayClass status, report and log in OUT/upstream.

Needs root (network namespaces). ADDRESS is outside 127.0.0.0/16, the pool refgateway
controllers take addresses from, so that other gateways on this machine cannot collide.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from testkit import upstream as run
from testkit.procs import ROOT, run_build, stop_process_group

ADDRESS = "127.77.0.1"
#: Listener ports of our scenarios and of the upstream TLS tests -> entrypoint names.
ENTRYPOINTS = {80: "web", 443: "websecure", 8443: "websecure8443", 8080: "web8080",
               6443: "websecure6443", 7443: "websecure7443"}
GATEWAY_CLASS = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                 "metadata": {"name": "traefik"},
                 "spec": {"controllerName": "traefik.io/gateway-controller"}}


def build() -> Path:
    return run_build("tools/traefik/build.sh", what="Traefik", error=SystemExit) / "bin" / "traefik"


def start_traefik(binary: Path, kubeconfig: Path, log: Path) -> subprocess.Popen:
    argv = [str(binary), "--log.level=DEBUG", "--providers.kubernetesgateway=true",
            f"--providers.kubernetesgateway.statusaddress.ip={ADDRESS}",
            "--providers.kubernetesgateway.throttleDuration=0s"]
    for port, name in ENTRYPOINTS.items():
        argv.append(f"--entrypoints.{name}.address={ADDRESS}:{port}")
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=dict(os.environ, KUBECONFIG=str(kubeconfig)), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def published_features(api) -> list[str]:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        gc = custom.get_cluster_custom_object("gateway.networking.k8s.io", "v1", "gatewayclasses", "traefik")
        status = gc.get("status") or {}
        accepted = any(c["type"] == "Accepted" and c["status"] == "True" for c in status.get("conditions") or [])
        if accepted and status.get("supportedFeatures"):
            return sorted(f["name"] for f in status["supportedFeatures"])
        time.sleep(0.5)
    raise SystemExit("GatewayClass traefik was not Accepted with supportedFeatures within 60 s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/traefik/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "traefik")
    p.add_argument("--work", type=Path, default=None, help="logs (default: a temporary directory)")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-upstream", action="store_true")
    p.add_argument("pytest_args", nargs="*", help="more arguments for pytest (after --)")
    args = p.parse_args(argv)
    run.exit_on_sigterm()
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="traefik-run-"))
    work.mkdir(parents=True, exist_ok=True)
    traefik = build()
    cache = run.build()
    summary: dict = {"work": str(work)}
    with run.refgateway_tier(cache, work, gateway_class=GATEWAY_CLASS) as (cluster, kubelet, _start_refgateway):
        proc = start_traefik(traefik, cluster.kubeconfig, work / "traefik.log")
        try:
            features = published_features(cluster.api_client())
            summary["published_features"] = features
            if not args.skip_ours:
                t0 = time.monotonic()
                argv = [sys.executable, "-m", "pytest", "mtls_conformance/scenarios", "-p", "no:cacheprovider", "-rA",
                        "--gateway-class=traefik", f"--kubeconfig={cluster.kubeconfig}",
                        "--backend-mode=deployment", f"--report-dir={args.out}",
                        # The version that ran: build.sh's cache dir is traefik-<version>.
                        f"--implementation-version={traefik.parents[1].name.removeprefix('traefik-')}",
                        f"--junitxml={work / 'ours.xml'}", *args.pytest_args]
                with open(work / "ours.log", "w") as log:
                    ours = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=3600)
                summary["ours"] = {"exit_code": ours.returncode, "seconds": round(time.monotonic() - t0),
                                   "log": str(work / "ours.log")}
            if not args.skip_upstream:
                result = run.run_suite(cache, cluster.kubeconfig, "traefik", features, args.out / "upstream",
                                       run.TLS_TESTS)
                result.disagreements += [f"stand-in kubelet: {e}" for e in kubelet.errors]
                summary["upstream"] = result.as_dict()
        finally:
            stop_process_group(proc)
    summary["kubelet_errors"] = kubelet.errors
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
