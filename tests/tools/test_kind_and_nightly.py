"""The kind flow (tools/kind/flow.py) and the nightly workflow, checked without Docker.

kind-config.yaml goes through kind's own loader and validator, the workflows through
actionlint (both built from the Go module proxy by tools/kind/build.sh), and the manifests
the flow applies through the API server's server-side dry run. The flow's own decisions
(which tool is missing, how a run is gated on its report) are tested as functions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testkit.procs import ROOT
from tools.kind import flow


@pytest.fixture(scope="module")
def tools_bin() -> Path:
    if shutil.which("go") is None:
        pytest.skip("Go is not installed: tools/kind/build.sh builds kind's config validator and actionlint")
    proc = subprocess.run(["bash", "tools/kind/build.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def validate(tools_bin: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools_bin / "mtls-validate-config"), str(config)], capture_output=True, text=True)


def test_kind_config_passes_kinds_own_validation(tools_bin):
    proc = validate(tools_bin, ROOT / "kind-config.yaml")
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    image = config["nodes"][0]["image"]
    assert "@sha256:" in image, "kind wants node images pinned by digest"
    assert image in (ROOT / ".github" / "workflows" / "nightly.yml").read_text(), \
        "the nightly matrix runs the node image kind-config.yaml pins"


def test_kind_validation_refuses_a_broken_config(tools_bin, tmp_path):
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    config["nodes"][0]["extraPortMappings"] = [{"containerPort": 30443, "hostPort": 99999}]
    broken = tmp_path / "kind.yaml"
    broken.write_text(yaml.safe_dump(config))
    proc = validate(tools_bin, broken)
    assert proc.returncode == 1 and "invalid hostPort" in proc.stderr


def test_workflows_pass_actionlint(tools_bin):
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    proc = subprocess.run([str(tools_bin / "actionlint"), "-no-color", "-oneline", *map(str, workflows)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tools_bin, tmp_path):
    text = (ROOT / ".github" / "workflows" / "nightly.yml").read_text()
    broken = tmp_path / ".github" / "workflows" / "nightly.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace("needs: cells", "needs: no-such-job"))
    proc = subprocess.run([str(tools_bin / "actionlint"), "-no-color", "-oneline", str(broken)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no-such-job" in proc.stdout


def test_nightly_covers_every_implementation_the_flow_installs():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    script = workflow["jobs"]["cells"]["steps"][0]["run"]
    listed = yaml.safe_load(script.split("all='", 1)[1].split("'", 1)[0])
    assert sorted(listed) == sorted(flow.IMPLEMENTATIONS)
    assert workflow["jobs"]["suite"]["strategy"]["fail-fast"] is False
    assert len(workflow["jobs"]["suite"]["strategy"]["matrix"]["kubernetes"]) == 2


def test_flow_names_the_missing_tool_and_touches_nothing(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no kind, kubectl, docker or podman
    proc = subprocess.run([sys.executable, "tools/kind/flow.py", "--reports", str(tmp_path / "r")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines() == [
        "[kind] kind, kubectl not found on PATH: install kind and kubectl "
        "(kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"]
    assert not (tmp_path / "r").exists()


def report(tmp_path: Path, *results: str) -> Path:
    profile = {"name": "GATEWAY-HTTP", "core": {"result": results[0]}}
    if len(results) > 1:
        profile["extended"] = {"result": results[1]}
    (tmp_path / "standard-v1-default-report.yaml").write_text(yaml.safe_dump({"profiles": [profile]}))
    return tmp_path


def test_gate_needs_both_the_exit_status_and_the_report(tmp_path):
    assert flow.gate(0, report(tmp_path, "success", "partial")) == 0
    assert flow.gate(1, report(tmp_path, "failure")) == 1
    assert flow.gate(0, report(tmp_path, "success", "failure")) == 3  # the report disagrees with pytest
    assert flow.gate(0, tmp_path / "nothing") == 3  # no report is not a pass


def test_refgateway_manifests_pass_server_side_dry_run(tmp_path):
    """What the flow applies for refgateway (deploy/refgateway, image replaced) is valid for a
    real API server; the one-node tier applies the same objects for real."""
    from testkit import testcluster

    if not testcluster.go_available() and not testcluster._complete(testcluster.cache_dir()):
        pytest.skip(f"kube-apiserver/etcd are not built and Go is not installed ({testcluster.BUILD_COMMAND})")
    docs = flow.refgateway_manifests("localhost/refgateway:test")
    assert {d["kind"] for d in docs} >= {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                         "Deployment", "GatewayClass"}
    assert all(c["image"] == "localhost/refgateway:test" for d in docs if d["kind"] == "Deployment"
               for c in d["spec"]["template"]["spec"]["containers"])
    with testcluster.TestCluster() as cluster:
        kubectl = flow.Kubectl(cluster.kubeconfig, binary=str(cluster.kubectl_path))
        namespaces = [d for d in docs if d["kind"] == "Namespace"]
        kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(namespaces))
        rest = [d for d in docs if d["kind"] != "Namespace"]
        out = kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(rest))
        assert out.count("serverside-applied (server dry run)") == len(rest), out
