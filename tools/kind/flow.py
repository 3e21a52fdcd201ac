"""The suite against a gateway in kind, in one command: create, install, run, report, delete.

    tox -e kind                                     # refgateway, built from this checkout
    tox -e kind -- --implementation=nginx-gateway-fabric
    python tools/kind/flow.py --implementation=kgateway --node-image=kindest/node:v1.36.4@sha256:...

On a machine with Docker or podman, kind, kubectl and (for third-party implementations)
helm. Steps, each printed as it starts:

1. create the cluster from kind-config.yaml (its node image pinned there; --node-image
   overrides it, as the nightly workflow's Kubernetes matrix does);
2. refgateway only: build its image from this checkout and load it into the node
   (``kind load``; there is no registry); backends are upstream's echo-basic image;
3. install the Gateway API CRDs of the pinned version;
4. install the implementation its documented way (refgateway: deploy/refgateway), and
   wait for its GatewayClass to be Accepted;
5. run the suite against it, writing the ConformanceReport, verdicts, JUnit and allure
   results under --reports (default reports/kind/IMPLEMENTATION);
6. save the cluster's events and the gateway's logs beside them;
7. delete the cluster, also when a step failed (--keep-cluster keeps it for a look).

The exit status is the suite's (1 when a test failed), or 3 when the report says
failure although pytest passed, or 4 when a step before the suite failed.

Steps 3 to 6 are plain functions of a kubeconfig; the project's own tests run them on
the one-node cluster tier (tests/node), so everything but creating the cluster and
loading images runs in README command 2 as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

#: The Gateway API release whose CRDs are installed (and whose conformance semantics the
#: suite follows), and the channel: experimental is a superset of standard.
GATEWAY_API_VERSION = "v1.7.0"
CRD_URL = "https://github.com/kubernetes-sigs/gateway-api/releases/download/{version}/{channel}-install.yaml"
CLUSTER_NAME = "mtls-conformance"
REFGATEWAY_IMAGE = "refgateway:dev"


class StepFailed(RuntimeError):
    """A step before the suite failed; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Kubectl:
    """kubectl against one cluster (a kubeconfig file), as every step below uses it."""

    kubeconfig: Path
    binary: str = "kubectl"

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--kubeconfig", str(self.kubeconfig), *args]

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(self.argv(*args), input=input, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise StepFailed(f"`kubectl {shlex.join(args)}` failed: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout


@dataclasses.dataclass(frozen=True)
class Implementation:
    gateway_class: str
    #: How the harness reaches listeners from this machine: refgateway reports a ClusterIP
    #: (a Service per Gateway), which only a port-forward reaches from outside kind; the others get a
    #: LoadBalancer address from cloud-provider-kind, reachable from the host.
    address_mode: str
    install: Callable[[Kubectl], None]
    #: (namespace, label selector) of the pods whose logs are saved after the run.
    logs: tuple[tuple[str, str], ...]
    version: str = ""


def helm(kubectl: Kubectl, *args: str) -> None:
    proc = subprocess.run(["helm", "--kubeconfig", str(kubectl.kubeconfig), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StepFailed(f"`helm {shlex.join(args)}` failed: {(proc.stderr or proc.stdout).strip()}")


# -- steps 3 to 6: the same code on kind and on the project's one-node tier --------------

def install_crds(kubectl: Kubectl, source: str | Path) -> None:
    """Step 3: the Gateway API CRDs, from a release URL or a directory of CRD files."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(source))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")


def refgateway_manifests(image: str = REFGATEWAY_IMAGE) -> list[dict]:
    """deploy/refgateway as applied: every document, the Deployment's image replaced."""
    docs = []
    for path in sorted((ROOT / "deploy" / "refgateway").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc["kind"] == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    container["image"] = image
            docs.append(doc)
    return docs


def install_refgateway(kubectl: Kubectl, *, image: str = REFGATEWAY_IMAGE, timeout: float = 180) -> None:
    """Step 4 for refgateway: deploy/refgateway, then its rollout and GatewayClass."""
    kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(refgateway_manifests(image)))
    kubectl("rollout", "status", "-n", "refgateway-system", "deployment/refgateway", f"--timeout={timeout:.0f}s")
    wait_for_gateway_class(kubectl, "refgateway", timeout)


def wait_for_gateway_class(kubectl: Kubectl, name: str, timeout: float) -> None:
    kubectl("wait", f"gatewayclass/{name}", "--for=condition=Accepted", f"--timeout={timeout:.0f}s")


def run_suite(kubectl: Kubectl, implementation: Implementation, reports: Path, extra: Sequence[str] = ()) -> int:
    """Step 5: the suite, as a user runs it; its exit status."""
    reports.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pytest", f"--gateway-class={implementation.gateway_class}",
            f"--kubeconfig={kubectl.kubeconfig}", f"--gateway-address-mode={implementation.address_mode}",
            f"--report-dir={reports}", f"--junitxml={reports / 'junit.xml'}",
            f"--alluredir={reports / 'allure'}", *extra]
    print(f"[kind] {shlex.join(argv)}", flush=True)
    return subprocess.run(argv, cwd=ROOT).returncode


def report_results(reports: Path) -> list[str]:
    """The ``result`` of every profile section of the ConformanceReport(s) under reports."""
    results = []
    for path in sorted(reports.glob("*-report.yaml")):
        report = yaml.safe_load(path.read_text())
        for profile in report.get("profiles") or []:
            for section in ("core", "extended"):
                if section in profile:
                    results.append(profile[section]["result"])
    return results


def gate(exit_status: int, reports: Path) -> int:
    """Pass only when pytest passed and the report, written from what ran, agrees."""
    results = report_results(reports)
    if exit_status != 0:
        return exit_status
    if not results:
        print(f"[kind] no ConformanceReport under {reports}", file=sys.stderr)
        return 3
    if "failure" in results:
        print(f"[kind] pytest passed but the report says failure: {results}", file=sys.stderr)
        return 3
    return 0


def collect_diagnostics(kubectl: Kubectl, implementation: Implementation, out: Path) -> None:
    """Step 6: the cluster's events and the gateway's logs, for a failure read later."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "events.yaml").write_text(kubectl("get", "events", "-A", "-o", "yaml", check=False))
    for namespace, selector in implementation.logs:
        text = kubectl("logs", "-n", namespace, "-l", selector, "--all-containers", "--prefix",
                       "--tail=-1", check=False)
        (out / f"logs-{namespace}.txt").write_text(text)


# -- the implementations, each installed its documented way ------------------------------

def install_ngf(kubectl: Kubectl) -> None:
    helm(kubectl, "install", "ngf", "oci://ghcr.io/nginx/charts/nginx-gateway-fabric", "--version",
         IMPLEMENTATIONS["nginx-gateway-fabric"].version, "--create-namespace", "-n", "nginx-gateway", "--wait")
    wait_for_gateway_class(kubectl, "nginx", 300)


def install_kgateway(kubectl: Kubectl) -> None:
    version = IMPLEMENTATIONS["kgateway"].version
    helm(kubectl, "install", "kgateway-crds", "oci://cr.kgateway.dev/kgateway-dev/charts/kgateway-crds",
         "--version", version, "--create-namespace", "-n", "kgateway-system", "--wait")
    helm(kubectl, "install", "kgateway", "oci://cr.kgateway.dev/kgateway-dev/charts/kgateway",
         "--version", version, "-n", "kgateway-system", "--wait")
    wait_for_gateway_class(kubectl, "kgateway", 300)


def install_envoy_gateway(kubectl: Kubectl) -> None:
    # The Gateway API CRDs are ours (step 3): the chart's own copy stays out.
    helm(kubectl, "install", "eg", "oci://docker.io/envoyproxy/gateway-helm", "--version",
         IMPLEMENTATIONS["envoy-gateway"].version, "--create-namespace", "-n", "envoy-gateway-system",
         "--skip-crds", "--wait")
    kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "eg"},
        "spec": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"}}))
    wait_for_gateway_class(kubectl, "eg", 300)


def install_istio(kubectl: Kubectl) -> None:
    version = IMPLEMENTATIONS["istio"].version
    repo = "https://istio-release.storage.googleapis.com/charts"
    helm(kubectl, "install", "istio-base", "base", "--repo", repo, "--version", version,
         "-n", "istio-system", "--create-namespace", "--wait")
    helm(kubectl, "install", "istiod", "istiod", "--repo", repo, "--version", version, "-n", "istio-system", "--wait")
    wait_for_gateway_class(kubectl, "istio", 300)


def install_traefik(kubectl: Kubectl) -> None:
    impl = IMPLEMENTATIONS["traefik"]
    helm(kubectl, "install", "traefik", "traefik", "--repo", "https://traefik.github.io/charts", "--version",
         TRAEFIK_CHART, "--set", f"image.tag={impl.version}", "--set", "providers.kubernetesGateway.enabled=true",
         "--set", "gateway.enabled=false", "--create-namespace", "-n", "traefik", "--wait")
    kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "traefik"},
        "spec": {"controllerName": "traefik.io/gateway-controller"}}))
    wait_for_gateway_class(kubectl, "traefik", 300)


#: Traefik's Helm chart release that states support for the v3.6 line.
TRAEFIK_CHART = "39.0.9"

#: Pinned: the versions of each implementation's newest published conformance report
#: with the TLS features (Traefik: the newest that builds from the Go module proxy, so the
#: same version runs in this project's own tests).
IMPLEMENTATIONS: dict[str, Implementation] = {
    "refgateway": Implementation("refgateway", "port-forward", install_refgateway,
                                 (("refgateway-system", "app.kubernetes.io/name=refgateway"),)),
    "nginx-gateway-fabric": Implementation("nginx", "status", install_ngf,
                                           (("nginx-gateway", "app.kubernetes.io/instance=ngf"),), "2.7.0"),
    "kgateway": Implementation("kgateway", "status", install_kgateway,
                               (("kgateway-system", "app.kubernetes.io/name=kgateway"),), "v2.4.0-rc.1"),
    "envoy-gateway": Implementation("eg", "status", install_envoy_gateway,
                                    (("envoy-gateway-system", "app.kubernetes.io/name=envoy"),), "v1.9.0"),
    "istio": Implementation("istio", "status", install_istio, (("istio-system", "app=istiod"),), "1.30.0"),
    "traefik": Implementation("traefik", "status", install_traefik,
                              (("traefik", "app.kubernetes.io/name=traefik"),), "v3.6.12"),
}


# -- steps 1, 2 and 7: only in kind ------------------------------------------------------

def container_engine() -> str:
    for engine in ("docker", "podman"):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True).returncode == 0:
            return engine
    raise StepFailed("neither Docker nor podman answers (`docker info` / `podman info`): kind needs one of them")


def preflight(implementation: str) -> str:
    needed = ["kind", "kubectl"] + ([] if implementation == "refgateway" else ["helm"])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise StepFailed(f"{', '.join(missing)} not found on PATH: install {' and '.join(missing)} "
                         "(kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation)")
    return container_engine()


def step(name: str) -> None:
    print(f"[kind] {time.strftime('%H:%M:%S')} {name}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--implementation", choices=sorted(IMPLEMENTATIONS), default="refgateway")
    parser.add_argument("--node-image", help="kind node image (default: the one pinned in kind-config.yaml)")
    parser.add_argument("--name", default=CLUSTER_NAME, help="kind cluster name")
    parser.add_argument("--reports", type=Path, help="where the reports go (default reports/kind/IMPLEMENTATION)")
    parser.add_argument("--crd-channel", choices=["standard", "experimental"], default="experimental")
    parser.add_argument("--keep-cluster", action="store_true", help="do not delete the cluster at the end")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    implementation = IMPLEMENTATIONS[args.implementation]
    reports = args.reports or ROOT / "reports" / "kind" / args.implementation
    try:
        engine = preflight(args.implementation)
    except StepFailed as exc:
        print(f"[kind] {exc}", file=sys.stderr)
        return 4
    env = {**os.environ, **({"KIND_EXPERIMENTAL_PROVIDER": "podman"} if engine == "podman" else {})}
    kubeconfig = reports.parent / f".{args.name}.kubeconfig"
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    kubectl = Kubectl(kubeconfig)
    created = False
    try:
        step(f"1. create kind cluster {args.name}")
        create = ["kind", "create", "cluster", "--name", args.name, "--config", str(ROOT / "kind-config.yaml"),
                  "--kubeconfig", str(kubeconfig), "--wait", "120s"]
        if args.node_image:
            create += ["--image", args.node_image]
        if subprocess.run(create, env=env).returncode != 0:
            raise StepFailed("kind create cluster failed (its output is above)")
        created = True
        if args.implementation == "refgateway":
            step(f"2. build {REFGATEWAY_IMAGE} and load it into the node")
            if subprocess.run([engine, "build", "-f", "deploy/refgateway/Containerfile", "-t", REFGATEWAY_IMAGE, "."],
                              cwd=ROOT).returncode:
                raise StepFailed(f"{engine} build -f deploy/refgateway/Containerfile failed (its output is above)")
            load = (["kind", "load", "docker-image", REFGATEWAY_IMAGE, "--name", args.name] if engine == "docker"
                    else ["sh", "-c", f"podman save {REFGATEWAY_IMAGE} | kind load image-archive /dev/stdin "
                                      f"--name {shlex.quote(args.name)}"])
            if subprocess.run(load, env=env).returncode:
                raise StepFailed(f"loading {REFGATEWAY_IMAGE} into kind failed (its output is above)")
        step(f"3. Gateway API CRDs {GATEWAY_API_VERSION} ({args.crd_channel})")
        install_crds(kubectl, CRD_URL.format(version=GATEWAY_API_VERSION, channel=args.crd_channel))
        step(f"4. install {args.implementation} {implementation.version}".rstrip())
        implementation.install(kubectl)
        step("5. run the suite")
        status = run_suite(kubectl, implementation, reports, args.pytest_args)
        step("6. save events and gateway logs")
        collect_diagnostics(kubectl, implementation, reports / "diagnostics")
        return gate(status, reports)
    except StepFailed as exc:
        print(f"[kind] {exc}", file=sys.stderr)
        if created:
            collect_diagnostics(kubectl, implementation, reports / "diagnostics")
        return 4
    finally:
        if created and not args.keep_cluster:
            step(f"7. delete kind cluster {args.name}")
            subprocess.run(["kind", "delete", "cluster", "--name", args.name], env=env)
            kubeconfig.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
