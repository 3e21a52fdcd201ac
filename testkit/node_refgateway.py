"""refgateway on a NodeCluster as users deploy it (deploy/refgateway), and the scenario
suite's run against it: README command 2's node run (tests/node/test_refgateway_on_node.py)
and the node tier of the flake check (benchmarks/flakes.py) start it the one same way.

The suite runs through the kubernetes target with --backend-mode=deployment (backends are
Deployments of upstream's echo-basic and of Debian's nginx, built here) and
--gateway-address-mode=port-forward (every probe streams through the kubelet), with the
node's kubectl first on PATH.
"""

from __future__ import annotations

import json
import os

from testkit.procs import ROOT
from testkit.testcluster import TestCluster

DEPLOY = ROOT / "deploy" / "refgateway"

kubectl = TestCluster.kubectl  # kubectl(node, *args): failing with kubectl's output


def deploy_refgateway(node, rbac: str | None = None) -> None:
    """kubectl apply deploy/refgateway as a user would (rbac: replacement for rbac.yaml)."""
    kubectl(node, "apply", "-f", "-", input=rbac if rbac is not None else (DEPLOY / "rbac.yaml").read_text())
    kubectl(node, "apply", "-f", str(DEPLOY / "gatewayclass.yaml"), "-f", str(DEPLOY / "deployment.yaml"))


def refgateway_pod(node) -> dict:
    pods = json.loads(kubectl(node, "-n", "refgateway-system", "get", "pods", "-l",
                              "app.kubernetes.io/name=refgateway", "-o", "json").stdout)["items"]
    return next(p for p in pods if not p["metadata"].get("deletionTimestamp"))


def start_refgateway(node) -> dict:
    """deploy/refgateway applied, rolled out and its GatewayClass accepted; its pod."""
    deploy_refgateway(node)
    kubectl(node, "-n", "refgateway-system", "rollout", "status", "deployment/refgateway", "--timeout=180s")
    kubectl(node, "wait", "--for=condition=Accepted", "gatewayclass/refgateway", "--timeout=60s")
    return refgateway_pod(node)


def suite_options(node) -> list[str]:
    """The suite's options for the node run (the backend images imported into the node first)."""
    echo = node.import_image("echo-basic")
    nginx = node.import_image("nginx")
    return ["--gateway-class=refgateway", f"--kubeconfig={node.kubeconfig}", "--backend-mode=deployment",
            f"--echo-image={echo}", f"--nginx-image={nginx}", "--gateway-address-mode=port-forward"]


def suite_env(node) -> dict[str, str]:
    """The suite's environment: the node's kubectl (port-forward) first on PATH, and none
    of an enclosing xdist run's worker identity."""
    assert node.bin_dir is not None
    env = {**os.environ, "PATH": f"{node.bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    return env
