"""refgateway as users deploy it (deploy/refgateway), on a real node, and the whole suite against it.

- refgateway runs as a pod of deploy/refgateway's Deployment with its ServiceAccount's
  token and nothing else: the least-privilege ClusterRole of deploy/refgateway/rbac.yaml;
- the scenario suite runs through the kubernetes target with --backend-mode=deployment
  (backends are Deployments of upstream's echo-basic and of Debian's nginx, built here),
  --gateway-address-mode=port-forward (every probe streams through the kubelet);
- the RBAC is sufficient (that run passes) and least-privilege: without any one rule
  the controller says which permission it lacks.

Skipped, saying why, on a machine that cannot run a node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from testkit import nodecluster, procs
from testkit.child_run import parse_junit
from testkit.node_refgateway import (DEPLOY, deploy_refgateway, kubectl, refgateway_pod, start_refgateway,
                                     suite_env, suite_options)

if nodecluster.prerequisites():
    pytest.skip("this machine cannot run a node: it lacks " + "; ".join(nodecluster.prerequisites()),
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("node")

#: Why a scenario that passes against the local refgateway may skip on this node. Each is
#: a fact about where the gateway runs, not about the harness.
NODE_SKIPS = {
    # The gateway's system trust store is a file in its pod's image, which the harness
    # cannot write: the wellKnownCACertificates: System checks need --system-ca-bundle.
    "cannot add roots to the gateway's system trust store": "system roots",
    # echo-basic verifies a client certificate only if one is sent; the backend that must
    # demand one is nginx alone (mtls_conformance/_kubernetes_backends.py says so in the skip).
    "which the echo image cannot": "echo-basic does not demand client certificates",
    # Opt-in checks against a real public host: this machine has no internet (they skip
    # the same way against the local refgateway).
    "needs --external-backend-host": "no public host",
}


@pytest.fixture(scope="module")
def refgateway(node):
    return start_refgateway(node)


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """test id (module.py::name) -> (passed|skipped|failed, message)."""
    found, messages = parse_junit(junit)
    return {test: (outcome, messages.get(test, "")) for test, outcome in found.items()}


def run_suite(node, tmp_path: Path, timeout: float = 1800) -> tuple[subprocess.CompletedProcess, dict]:
    """The scenarios as a user runs them on the node (testkit.node_refgateway); the run and outcomes()."""
    junit = tmp_path / "node.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "--durations=15", "mtls_conformance/scenarios",
                           *suite_options(node), f"--junitxml={junit}"], cwd=ROOT, env=suite_env(node),
                          capture_output=True, text=True, timeout=timeout)
    return proc, (outcomes(junit) if junit.exists() else {})


def test_refgateway_runs_as_its_service_account(node, refgateway):
    spec = refgateway["spec"]
    assert spec["serviceAccountName"] == "refgateway"
    assert refgateway["status"]["phase"] == "Running"
    assert any(v.get("projected") for v in spec.get("volumes") or []), "no ServiceAccount token volume"
    # It answered for the GatewayClass with that token (the fixture waited for Accepted).
    logs = kubectl(node, "-n", "refgateway-system", "logs", refgateway["metadata"]["name"]).stdout
    assert "HTTP 403" not in logs, logs


def managed_services(node) -> list[dict]:
    """The Services refgateway made for Gateways (one each)."""
    return json.loads(kubectl(node, "-n", "refgateway-system", "get", "services", "-l",
                              "app.kubernetes.io/managed-by=refgateway", "-o", "json").stdout)["items"]


def wait_until(what: str, condition, timeout: float = 60):
    return procs.wait_until(condition, timeout=timeout, what=what, interval=0.5)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_gateways_on_one_port_each_get_a_service_of_their_own(node, refgateway):
    """What one pod serving every Gateway on its one address could not do: two Gateways
    listening on port 80 at once are both programmed, each on the ClusterIP of a Service
    of its own (labelled with its name, GEP-1762), which sends the port to the pod; the
    Service goes with its Gateway."""
    ns = f"two-{uuid.uuid4().hex[:6]}"
    kubectl(node, "create", "namespace", ns)
    gateways = [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                 "metadata": {"name": name, "namespace": ns},
                 "spec": {"gatewayClassName": "refgateway",
                          "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}} for name in ("a", "b")]
    kubectl(node, "apply", "-f", "-", input=yaml.safe_dump_all(gateways))
    try:
        kubectl(node, "-n", ns, "wait", "--for=condition=Programmed", "gateway/a", "gateway/b", "--timeout=60s")
        addresses = {}
        for name in ("a", "b"):
            gw = json.loads(kubectl(node, "-n", ns, "get", "gateway", name, "-o", "json").stdout)
            addresses[name] = [a["value"] for a in gw["status"]["addresses"]]
        assert addresses["a"] != addresses["b"] and all(len(v) == 1 for v in addresses.values()), addresses
        services = {s["spec"]["clusterIP"]: s for s in managed_services(node)}
        pod_ip = refgateway_pod(node)["status"]["podIP"]
        for name in ("a", "b"):
            svc = services[addresses[name][0]]
            assert svc["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == name
            assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "refgateway"}
            (port,) = svc["spec"]["ports"]
            assert port["port"] == 80 and port["targetPort"] != 80
            # The internal port is the Gateway's listener: with no route attached, refgateway's 404.
            assert http_status(f"http://{pod_ip}:{port['targetPort']}/") == 404, name
    finally:
        kubectl(node, "-n", ns, "delete", "gateway/a")
    deleted = time.monotonic()
    wait_until("gateway a's Service deleted with it", lambda: [
        s for s in managed_services(node)
        if s["metadata"]["labels"].get("gateway.networking.k8s.io/gateway-name") == "a"] == [])
    # refgateway's reaction time to a Gateway's deletion: the measurement beside the bounds
    # on it (here and in the suite test below; benchmarks/results-2026-12-06.md, section 3).
    print(f"gateway a's Service went {time.monotonic() - deleted:.1f} s after `kubectl delete` returned")
    kubectl(node, "delete", "namespace", ns, "--wait=false")


def test_the_suite_with_deployment_backends_and_port_forward_passes(node, refgateway, tmp_path):
    """README command 2's run on a real node: echo-basic and nginx backends built here,
    every probe through `kubectl port-forward` (a kubelet stream) to the Service that
    refgateway gives each Gateway. Everything passes; what does not run is skipped for a
    fact about the node (NODE_SKIPS)."""
    proc, results = run_suite(node, tmp_path)
    assert results, proc.stdout[-20000:] + proc.stderr[-5000:]
    passed = [t for t, (outcome, _) in results.items() if outcome == "passed"]
    assert len(passed) > 100, proc.stdout[-5000:]
    unexplained_skips = {t: why for t, (outcome, why) in results.items()
                         if outcome == "skipped" and not any(fact in why for fact in NODE_SKIPS)}
    assert not unexplained_skips, "skipped on the node for no fact about the node:\n" + "\n".join(
        f"{t}: {w}" for t, w in sorted(unexplained_skips.items()))
    failed = {t: why for t, (outcome, why) in results.items() if outcome == "failed"}
    assert not failed, "failed on the node:\n" + "\n".join(
        f"{t}: {w[:500]}" for t, w in sorted(failed.items())) + "\n" + proc.stdout[-20000:]
    assert proc.returncode == 0, proc.stdout[-5000:]
    print(f"{len(passed)} passed, {len(results) - len(passed)} skipped; the slowest:")
    print(proc.stdout[proc.stdout.find("slowest"):][:3000])
    # Nothing of the run is left on the node: its namespaces go, and with their
    # Gateways the Services refgateway made for them.
    leftover = json.loads(kubectl(node, "get", "namespaces", "-l", "mtls-conformance.dev/managed=true", "-o",
                                  "json").stdout)["items"]
    assert all(n["status"].get("phase") == "Terminating" for n in leftover), [n["metadata"]["name"] for n in leftover]
    log = kubectl(node, "-n", "refgateway-system", "logs", refgateway["metadata"]["name"]).stdout
    assert "Address already in use" not in log, log[-5000:]
    # What this checks is refgateway's part: once a Gateway is gone, so is its Service. The
    # Gateways themselves are the harness's to delete (conformance/kubernetes.py deletes a
    # namespace's content kind by kind), but a delete that failed is left to the cluster's
    # namespace controller, whose pace on a loaded machine this test does not control (CI
    # failed here, under load, after 180 s). So the test deletes whatever Gateway of the run
    # is left itself, and waits only for refgateway.
    gateways = json.loads(kubectl(node, "get", "gateways", "-A", "-o", "json").stdout)["items"]
    left = sorted({g["metadata"]["namespace"] for g in gateways if g["metadata"]["namespace"].startswith("mtls-")})
    for ns in left:
        kubectl(node, "-n", ns, "delete", "gateways", "--all", "--wait=true", "--timeout=120s")

    def run_services() -> list[dict]:
        return [s for s in managed_services(node)
                if s["metadata"]["labels"]["refgateway.mtls-conformance.dev/gateway-namespace"].startswith("mtls-")]

    try:
        # refgateway's own reaction to Gateways that are gone: one reload and a DELETE per
        # Service (test_gateways_on_one_port_each_get_a_service_of_their_own waits 60 s for
        # one). CI stop 23 failed here, and not because refgateway was slow: the Service of
        # Gateway mtls-invalid-ca was still there after 180 s because a status write's answer
        # had put the deleted Gateway back into refgateway's cache (fixed: Cache.refresh;
        # tests/cluster's status_write_answered_after_the_delete test). The earlier loaded
        # failure (issue 21) kept no log of which Service stayed; the same cause is likely,
        # not shown.
        # In that run's log every other Service went in the reload that closed its Gateway's
        # ports (tens of ms after); the bound stays 180 s.
        # Measured under load, 2026-12-06 (two CPU burners beside this test, and an API server
        # flake run with two burners of its own: load average 5.8 to 8.8; the suite took
        # 650 s): no Service of the run was left when this wait began, which took 0.2 s; in
        # the one-port test above, with two burners, gateway a's Service went 0.1 s after its
        # delete (benchmarks/results-2026-12-06.md, section 3). One sample each: the bound
        # stays, far above them.
        waited_for = [s["metadata"]["name"] for s in run_services()]
        start = time.monotonic()
        wait_until("refgateway deletes the Services of the run's Gateways", lambda: not run_services(), timeout=180)
        # The measurement the bound is checked against (benchmarks/results-2026-12-06.md, section 3).
        print(f"refgateway deleted the run's Services in {time.monotonic() - start:.1f} s of this wait "
              f"({len(waited_for)} left when it began: {waited_for}; Gateways the test deleted itself: "
              f"namespaces {left or 'none'})")
    except AssertionError:
        still = [s["metadata"]["name"] for s in run_services()]
        log = kubectl(node, "-n", "refgateway-system", "logs", refgateway["metadata"]["name"]).stdout
        raise AssertionError(f"refgateway did not delete the Services {still} of the run's Gateways within 180 s "
                             f"of their deletion (Gateways of the run the test deleted itself: namespaces "
                             f"{left or 'none'}); refgateway's log ends:\n{log[-5000:]}") from None
    assert refgateway_pod(node)["metadata"]["name"] == refgateway["metadata"]["name"], "refgateway restarted"


#: The echo-basic references in the upstream suite's v1.7.0 manifests (conformance/base and
#: its tests' manifests); the node cannot pull them, so the echo-basic built here gets them.
UPSTREAM_ECHO_REFS = ("registry.k8s.io/gateway-api/conformance/echo-basic:v0.1.0",
                      "registry.k8s.io/gateway-api/conformance/echo-basic:v0.2.0")


def upstream_tool():
    """tools/upstream/run.py as a module, or a skip saying what is missing."""
    from testkit import upstream as run

    if not run.built() and not shutil.which("go"):
        pytest.skip("the upstream suite is not built and Go is not installed (bash tools/upstream/build.sh)")
    return run


def test_upstream_tls_tests_pass_against_refgateway_on_the_node(node, refgateway, tmp_path):
    """The upstream Go conformance suite (v1.7.0, its 14 TLS tests: tools/upstream/run.py)
    against refgateway deployed from deploy/refgateway, with the suite's echo-basic backends
    as pods of the image built here. The suite runs in the node's network namespace: the
    Gateways' addresses are their Services' ClusterIPs, which only kube-proxy's rules there
    reach, as from a pod."""
    run = upstream_tool()
    cache = run.build()
    node.import_image("echo-basic", *UPSTREAM_ECHO_REFS)
    try:
        result = run.run_suite(cache, node.node_kubeconfig, "refgateway", list(run.REFGATEWAY_FEATURES),
                               tmp_path, prefix=tuple(node.in_node([])))
        verdicts = {t: result.verdict(t) for t in result.requested}
        assert set(result.requested) == set(run.TLS_TESTS)
        assert result.ok, (f"{verdicts}\ndisagreements: {result.disagreements}\n"
                           f"{Path(result.log).read_text(errors='replace')[-20000:]}")
        # The backends were pods of the node, from the image built here.
        pods = json.loads(kubectl(node, "-n", "gateway-conformance-infra", "get", "pods", "-o", "json").stdout)["items"]
        images = {c["image"] for p in pods for c in p["spec"]["containers"]}
        assert pods and images <= set(UPSTREAM_ECHO_REFS), images
        assert all(p["status"].get("phase") == "Running" for p in pods), [p["metadata"]["name"] for p in pods]
    finally:
        # The run leaves its base resources for a look by hand (--cleanup-base-resources=false).
        names = [n["metadata"]["name"] for n in json.loads(kubectl(node, "get", "namespaces", "-o", "json").stdout)["items"]
                 if n["metadata"]["name"].startswith("gateway-conformance-")]
        if names:
            kubectl(node, "delete", "namespace", *names, "--wait=false")


def rbac_without(kind: str, rule_index: int) -> tuple[str, dict]:
    """deploy/refgateway/rbac.yaml with one rule of its ClusterRole or Role removed; (yaml, the rule)."""
    docs = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == kind)
    rule = role["rules"].pop(rule_index)
    return yaml.safe_dump_all(docs), rule


def restart_refgateway(node, previous: str) -> str:
    kubectl(node, "-n", "refgateway-system", "delete", "pod", previous, "--wait=false")
    deadline = time.monotonic() + 120
    while True:
        pod = refgateway_pod(node)
        if pod["metadata"]["name"] != previous and pod["status"].get("phase") == "Running" and \
                all(c.get("ready") for c in pod["status"].get("containerStatuses") or [{}]):
            return pod["metadata"]["name"]
        assert time.monotonic() < deadline, f"refgateway did not come back after deleting {previous}"
        time.sleep(0.5)


@pytest.mark.skipif(not os.environ.get("MTLS_NODE_FULL"),
                    reason="ten controller restarts (minutes): runs in `tox -e node` (MTLS_NODE_FULL=1), "
                           "the scheduled run, to keep README command 2 inside its time budget")
def test_each_rbac_rule_is_needed_and_its_absence_is_a_clear_error(node, refgateway):
    """Least privilege: remove any one rule of deploy/refgateway's ClusterRole or Role and
    the controller, restarted, logs the API server's refusal naming the verb and resource
    it lacks. The GatewayClass, a Gateway and an attached HTTPRoute are made anew each time
    (after the restart), so that every status write happens, not only the changed ones;
    then the Gateway gets a second listener (its Service's ports change) and is deleted
    (its Service goes), so that every write to Services happens too."""
    ns = f"rbac-{uuid.uuid4().hex[:6]}"
    kubectl(node, "create", "namespace", ns)

    def gateway(*ports: int) -> dict:
        return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "g", "namespace": ns},
                "spec": {"gatewayClassName": "refgateway", "listeners": [
                    {"name": f"http-{p}", "port": p, "protocol": "HTTP"} for p in ports]}}

    objects = yaml.safe_dump_all([gateway(80), {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": ns},
        "spec": {"parentRefs": [{"name": "g"}], "rules": [{"backendRefs": [{"name": "none", "port": 80}]}]}}])
    docs = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
    rules = [(d["kind"], i) for d in docs if d["kind"] in ("ClusterRole", "Role") for i in range(len(d["rules"]))]
    user = "system:serviceaccount:refgateway-system:refgateway"
    pod = refgateway["metadata"]["name"]
    unclear = []

    def fresh_objects(rbac: str | None) -> None:
        nonlocal pod
        kubectl(node, "-n", ns, "delete", "httproute/r", "gateway/g", "--ignore-not-found", "--wait=true")
        kubectl(node, "delete", "gatewayclass/refgateway", "--ignore-not-found", "--wait=true")
        deploy_refgateway(node, rbac=rbac)  # the (reduced) RBAC and the GatewayClass again
        pod = restart_refgateway(node, pod)
        kubectl(node, "apply", "-f", "-", input=objects)

    def service_ports() -> list[int] | None:
        found = [s for s in managed_services(node)
                 if s["metadata"]["labels"]["refgateway.mtls-conformance.dev/gateway-namespace"] == ns]
        return sorted(p["port"] for p in found[0]["spec"]["ports"]) if found else None

    try:
        for kind, index in rules:
            reduced, rule = rbac_without(kind, index)
            fresh_objects(reduced)
            wanted = re.compile(
                rf'HTTP 403: .*User "{re.escape(user)}" cannot ({"|".join(rule["verbs"])}) resource '
                rf'"({"|".join(re.escape(r) for r in rule["resources"])})"')
            logs = ""

            def refused_or(condition) -> bool:
                nonlocal logs
                logs = kubectl(node, "-n", "refgateway-system", "logs", pod, check=False).stdout
                return bool(wanted.search(logs)) or condition()

            # The Service's create, patch and delete, each once the one before is done (or
            # refused: then the refusal is what this rule's check looks for).
            steps = [(lambda: service_ports() == [80], lambda: kubectl(
                         node, "apply", "-f", "-", input=yaml.safe_dump(gateway(80, 8080)))),
                     (lambda: service_ports() == [80, 8080], lambda: kubectl(node, "-n", ns, "delete", "gateway/g")),
                     (lambda: service_ports() is None, lambda: None)]
            for done, then in steps:
                deadline = time.monotonic() + 30
                while not refused_or(done) and time.monotonic() < deadline:
                    time.sleep(1)
                if wanted.search(logs):
                    break
                then()
            deadline = time.monotonic() + 30
            while not wanted.search(logs) and time.monotonic() < deadline:
                time.sleep(1)
                refused_or(lambda: False)
            if not wanted.search(logs):
                unclear.append(f"without {kind} rule {rule}: no refusal naming it; log:\n{logs[-3000:]}")
    finally:
        fresh_objects(None)
    assert not unclear, "\n\n".join(unclear)
    # With every rule back, the controller does its job and says nothing of permissions.
    kubectl(node, "-n", ns, "wait", "--for=condition=Programmed", "gateway/g", "--timeout=60s")
    kubectl(node, "wait", "--for=condition=Accepted", "gatewayclass/refgateway", "--timeout=60s")
    assert "HTTP 403" not in kubectl(node, "-n", "refgateway-system", "logs", pod).stdout
