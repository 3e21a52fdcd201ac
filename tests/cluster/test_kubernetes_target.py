"""The kubernetes target against a real kube-apiserver (TestCluster), refgateway as its controller.

Most tests run the harness as a child pytest, as a user would, and then look for what
it could have left behind: namespaces with the harness label, processes (every child
run carries a tag in its environment, which all its descendants inherit), test hosts
(network namespaces and veth pairs, which hold the backends' listening sockets).

Backends use --backend-mode=local-process (there is no kubelet), which needs root.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import pytest
import yaml

from testkit import testcluster
from testkit.child_run import Child, parse_junit
from testkit.procs import stop_process_group
from testkit.testcluster import TestCluster
from testkit.testhost import TestHost

if not testcluster.go_available() and not testcluster._complete(testcluster.cache_dir()):
    pytest.skip(f"kube-apiserver/etcd are not built and Go is not installed ({testcluster.BUILD_COMMAND})",
                allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("--backend-mode=local-process makes network namespaces, which needs root",
                allow_module_level=True)

from kubernetes import dynamic  # noqa: E402

from mtls_conformance.kubernetes import (CRD_INSTALL, MANAGED_LABEL, RUN_LABEL, KubernetesTarget,  # noqa: E402
                                    echo_backend_manifests)
from mtls_conformance.target import NotListening, ObjectRef, TargetError  # noqa: E402
from mtls_conformance.fixtures.nginx import nginx_manifests  # noqa: E402

pytestmark = pytest.mark.xdist_group("testcluster")

ROOT = Path(__file__).resolve().parents[2]
GROUP = "gateway.networking.k8s.io"
REFGATEWAY = "mtls-conformance.dev/refgateway"


# --------------------------------------------------------------------------- helpers


def apply(dyn, *objects: dict) -> None:
    for obj in objects:
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.server_side_apply(obj, field_manager="kubernetes-target-test", force_conflicts=True)


def set_class_status(dyn, name: str, status: str, reason: str) -> None:
    """Answer for a GatewayClass as a controller would (there is none for these classes)."""
    classes = dyn.resources.get(api_version=f"{GROUP}/v1", kind="GatewayClass")
    generation = classes.get(name=name).metadata.generation
    dyn.request("patch", f"/apis/{GROUP}/v1/gatewayclasses/{name}/status",
                content_type="application/merge-patch+json",
                body={"status": {"conditions": [{
                    "type": "Accepted", "status": status, "reason": reason, "message": "set by the test",
                    "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})


def gateway_class(dyn, name: str, controller: str, *, accepted: str | None = None, reason: str = "Accepted"):
    apply(dyn, {"apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": name},
                "spec": {"controllerName": controller}})
    if accepted is not None:
        set_class_status(dyn, name, accepted, reason)


def labelled_namespaces(dyn) -> list[str]:
    namespaces = dyn.resources.get(api_version="v1", kind="Namespace")
    return [n.metadata.name for n in namespaces.get(label_selector=f"{MANAGED_LABEL}=true").items]


def labelled_cluster_trust_bundles(dyn) -> list[str]:
    """Cluster-scoped objects of the harness: no namespace deletion takes them away."""
    bundles = dyn.resources.get(api_version="certificates.k8s.io/v1beta1", kind="ClusterTrustBundle")
    return [b.metadata.name for b in bundles.get(label_selector=RUN_LABEL).items]


def test_host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return set(re.findall(r"^\d+: (mt[0-9a-f]{8}h)\b", out, re.M))


test_host_links.__test__ = False  # a helper, despite its name


def assert_nothing_left(child: Child, dyn, links_before: set[str]) -> None:
    assert labelled_namespaces(dyn) == [], child.output
    assert labelled_cluster_trust_bundles(dyn) == [], child.output
    assert child.processes() == [], child.output
    assert child.test_hosts() == [], child.output
    assert test_host_links() - links_before == set(), child.output


def exit_line(output: str) -> str:
    """The one line that carries the harness's error (pytest frames it with '!')."""
    lines = [line for line in output.splitlines() if "mtls conformance:" in line]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{output}"
    assert "Traceback" not in output, output
    return lines[0]


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dyn(cluster):
    return dynamic.DynamicClient(cluster.api_client())


@pytest.fixture(scope="module")
def system_ca_bundle(tmp_path_factory) -> Path:
    """The file the controller reads as its system trust store; the harness writes it."""
    return tmp_path_factory.mktemp("system-roots") / "ca-bundle.pem"


@pytest.fixture(scope="module")
def controller(cluster, dyn, tmp_path_factory, system_ca_bundle):
    """refgateway as a controller of GatewayClass refgateway, with the cluster's admin identity."""
    log = tmp_path_factory.mktemp("refgateway") / "controller.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "refgateway", "controller", "--kubeconfig",
                                 str(cluster.kubeconfig), "--log-level", "WARNING",
                                 "--system-ca-bundle", str(system_ca_bundle)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    gateway_class(dyn, "refgateway", REFGATEWAY)
    try:
        yield proc
    finally:
        stop_process_group(proc)


@pytest.fixture
def links_before():
    return test_host_links()


# --------------------------------------------------------------------------- the errors of the preflight


def test_no_cluster_reachable_is_one_line_naming_the_server_and_kind(tmp_path, links_before, dyn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the child runs: nothing listens there
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{port}")
    child = Child("mtls_conformance/scenarios/test_frontend_default.py", "--gateway-class=refgateway",
                  f"--kubeconfig={kubeconfig}", "--backend-mode=local-process").wait()
    line = exit_line(child.output)
    assert child.returncode == 4, child.output
    assert f"no Kubernetes API server reachable at https://127.0.0.1:{port} (" in line
    assert line.rstrip("! ").endswith("start a cluster with `kind create cluster --config kind-config.yaml` or "
                                      "point --kubeconfig/--context at one"), line
    assert_nothing_left(child, dyn, links_before)


@pytest.fixture(scope="module")
def bare_cluster():
    """An API server without the Gateway API CRDs."""
    with TestCluster(crds=None) as c:
        yield c


def test_missing_crds_name_the_install_command(bare_cluster, links_before):
    child = Child("mtls_conformance/scenarios/test_frontend_default.py", "--gateway-class=refgateway",
                  f"--kubeconfig={bare_cluster.kubeconfig}", "--backend-mode=local-process").wait()
    line = exit_line(child.output)
    assert child.returncode == 4, child.output
    assert (f"the Gateway API CRDs are not installed at {bare_cluster.server} (missing "
            "gateways.gateway.networking.k8s.io, gatewayclasses.gateway.networking.k8s.io, "
            f"httproutes.gateway.networking.k8s.io); install v1.5.0 or later: {CRD_INSTALL}") in line
    assert_nothing_left(child, dynamic.DynamicClient(bare_cluster.api_client()), links_before)


def test_too_old_crds_name_their_version_and_the_install_command(bare_cluster, links_before):
    dyn = dynamic.DynamicClient(bare_cluster.api_client())
    crds = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    installed = []
    try:
        for path in sorted((bare_cluster.crd_dir / "standard").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition" and \
                        doc["spec"]["names"]["plural"] in ("gateways", "gatewayclasses", "httproutes"):
                    doc["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] = "v1.4.1"
                    crds.server_side_apply(doc, field_manager="kubernetes-target-test", force_conflicts=True)
                    installed.append(doc["metadata"]["name"])
        child = Child("mtls_conformance/scenarios/test_frontend_default.py", "--gateway-class=refgateway",
                      f"--kubeconfig={bare_cluster.kubeconfig}", "--backend-mode=local-process").wait()
    finally:
        for name in installed:  # the cluster is "bare" again for the other tests
            crds.delete(name=name)
    line = exit_line(child.output)
    assert child.returncode == 4, child.output
    assert (f"the Gateway API CRDs at {bare_cluster.server} are v1.4.1; the suite needs v1.5.0 or later "
            f"(Gateway v1 with spec.tls.frontend): {CRD_INSTALL}") in line
    assert_nothing_left(child, dyn, links_before)


def test_missing_gateway_class_lists_the_classes_there(cluster, dyn, links_before):
    gateway_class(dyn, "someone-elses", "example.com/other")
    child = Child("mtls_conformance/scenarios/test_frontend_default.py", "--gateway-class=no-such-class",
                  f"--kubeconfig={cluster.kubeconfig}", "--backend-mode=local-process").wait()
    line = exit_line(child.output)
    assert child.returncode == 4, child.output
    assert f"GatewayClass no-such-class does not exist at {cluster.server}; GatewayClasses there: " in line
    assert "someone-elses" in line and "install the implementation or pass the right --gateway-class" in line
    assert_nothing_left(child, dyn, links_before)


def test_gateway_class_not_accepted_shows_the_controllers_answer(cluster, dyn, links_before):
    gateway_class(dyn, "refused", "example.com/refuser", accepted="False", reason="InvalidParameters")
    child = Child("mtls_conformance/scenarios/test_frontend_default.py", "--gateway-class=refused",
                  f"--kubeconfig={cluster.kubeconfig}", "--backend-mode=local-process").wait()
    line = exit_line(child.output)
    assert child.returncode == 4, child.output
    assert ("GatewayClass refused (controllerName example.com/refuser) is not Accepted: "
            "Accepted=False (InvalidParameters: set by the test, observedGeneration 1)") in line
    assert_nothing_left(child, dyn, links_before)


def test_gateway_class_nobody_answers_for_is_a_bounded_wait(cluster, dyn):
    gateway_class(dyn, "unanswered", "example.com/nobody")
    started = time.monotonic()
    with pytest.raises(TargetError) as info:
        KubernetesTarget(gateway_class="unanswered", kubeconfig=str(cluster.kubeconfig), class_timeout=2)
    assert time.monotonic() - started < 10
    assert str(info.value) == ("GatewayClass unanswered (controllerName example.com/nobody) is not Accepted after "
                               "2 s: Accepted=Unknown (Pending: Waiting for controller); is its controller running?")


def test_unknown_controller_runs_with_the_generic_profile_and_says_so(cluster, dyn, tmp_path, links_before):
    gateway_class(dyn, "unprofiled", "example.com/unprofiled", accepted="True")
    (tmp_path / "test_profile.py").write_text(
        "def test_generic(mtls_profile):\n    assert mtls_profile.key == 'generic'\n")
    child = Child(str(tmp_path / "test_profile.py"), "--gateway-class=unprofiled",
                  f"--kubeconfig={cluster.kubeconfig}", "--backend-mode=local-process", cwd=tmp_path).wait()
    assert child.returncode == 0, child.output
    assert ("[mtls] no built-in profile for controllerName example.com/unprofiled: running with the "
            "generic profile (pass --profile FILE to describe it)") in child.output
    assert "1 passed" in child.output
    assert_nothing_left(child, dyn, links_before)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) drops the capabilities")
def test_local_process_backends_without_root_is_one_error_before_any_test(cluster, dyn, controller, links_before):
    # Root without CAP_NET_ADMIN and CAP_SYS_ADMIN is, for `ip netns`, an ordinary user.
    child = Child("mtls_conformance/scenarios/test_frontend_default.py", "--gateway-class=refgateway",
                  f"--kubeconfig={cluster.kubeconfig}", "--backend-mode=local-process",
                  prefix=("setpriv", "--bounding-set", "-net_admin,-sys_admin")).wait()
    line = exit_line(child.output)
    assert child.returncode == 4, child.output
    assert re.search(r"--backend-mode=local-process could not make a test host: `ip netns add mtls-\d+-[0-9a-f]+` "
                     r"failed: .*Operation not permitted; it needs root \(CAP_NET_ADMIN\), else use "
                     r"--backend-mode=deployment", line), line
    assert " passed" not in child.output and " error" not in child.output, child.output
    assert_nothing_left(child, dyn, links_before)


# --------------------------------------------------------------------------- the suite on this tier


def passed_tests(junit: Path) -> set[str]:
    """Node ids (mtls_conformance/scenarios/...) that passed, from a child run's JUnit XML: whole, where the
    ``-rA`` summary would cut a parameter id at its first space ("[no certificate]")."""
    outcomes = parse_junit(junit)[0] if junit.exists() else {}
    return {f"mtls_conformance/scenarios/{nodeid}" for nodeid, outcome in outcomes.items() if outcome == "passed"}


def skip_reasons(junit: Path) -> dict[str, str]:
    """node id (mtls_conformance/scenarios/...) -> skip message, from a child run's JUnit XML."""
    outcomes, messages = parse_junit(junit)
    return {f"mtls_conformance/scenarios/{nodeid}": messages[nodeid] for nodeid, outcome in outcomes.items() if outcome == "skipped"}


@pytest.fixture(scope="module")
def local_passes(tmp_path_factory) -> set[str]:
    """The scenario tests that pass against the local refgateway: what each tier must match
    (the self-check's run of the whole suite against a correct refgateway, shared)."""
    from tests.selfcheck.runner import correct_run

    local = correct_run(tmp_path_factory)
    assert local.returncode == 0, local.output
    assert local.with_outcome("passed"), local.output
    return {f"mtls_conformance/scenarios/{nodeid}" for nodeid in local.with_outcome("passed")}


def run_on_the_tier(cluster, tmp_path, *options: str) -> tuple[Child, dict[str, str]]:
    """The scenarios through the kubernetes target; the child and its skip reasons."""
    junit = tmp_path / "tier.xml"
    child = Child("mtls_conformance/scenarios", "-rA", "--gateway-class=refgateway", f"--kubeconfig={cluster.kubeconfig}",
                  *options, f"--junitxml={junit}").wait(timeout=900)
    return child, (skip_reasons(junit) if junit.exists() else {})


def test_scenarios_pass_on_the_api_server_tier_as_they_do_locally(cluster, dyn, controller, system_ca_bundle,
                                                                  local_passes, links_before, tmp_path):
    child, skipped = run_on_the_tier(cluster, tmp_path, "--backend-mode=local-process",
                                     f"--system-ca-bundle={system_ca_bundle}")
    assert child.returncode == 0, child.output
    missing = [f"{nodeid}: {skipped.get(nodeid, 'not skipped')}"
               for nodeid in sorted(local_passes - passed_tests(tmp_path / "tier.xml"))]
    assert not missing, "passed locally but not on the API server tier:\n" + "\n".join(missing)
    assert controller.poll() is None, "the refgateway controller died during the run"
    assert not system_ca_bundle.exists(), "the harness left its stand-in public CA in the gateway's trust store"
    assert_nothing_left(child, dyn, links_before)


@pytest.fixture
def kubelet(cluster):
    """Function scope: other tests here play the node side themselves."""
    from testkit.kubelet_standin import TestKubelet

    kubelet = TestKubelet(cluster.api_client()).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


@pytest.mark.skipif(not os.environ.get("MTLS_CLUSTER_FULL"),
                    reason="a second whole-suite run (minutes): README command 2 runs deployment backends on a "
                           "real kubelet instead (tests/node/test_refgateway_on_node.py); this stand-in run is "
                           "in `tox -e cluster` (MTLS_CLUSTER_FULL=1), the scheduled run")
def test_scenarios_pass_with_deployment_backends(cluster, dyn, controller, kubelet, system_ca_bundle,
                                                 local_passes, tmp_path):
    """--backend-mode=deployment, the mode of real clusters: Deployments of the echo and
    nginx backends, run by a stand-in kubelet (testkit/kubelet_standin.py), request logs
    read through the API server's pod log endpoint."""
    child, skipped = run_on_the_tier(cluster, tmp_path, "--backend-mode=deployment",
                                     f"--system-ca-bundle={system_ca_bundle}")
    assert child.returncode == 0, child.output + "\n".join(kubelet.errors)
    missing = []
    for nodeid in sorted(local_passes - passed_tests(tmp_path / "tier.xml")):
        # The one check this mode cannot make: echo-basic verifies a client certificate
        # only if one is sent, so the backend that must demand one is nginx alone.
        if "test_backend_client_certificate.py::" in nodeid and "echo" in nodeid and \
                "which the echo image cannot" in skipped.get(nodeid, ""):
            continue
        missing.append(f"{nodeid}: {skipped.get(nodeid, 'not skipped')}")
    assert not missing, "passed locally but not with deployment backends:\n" + "\n".join(missing)
    assert kubelet.errors == []
    assert kubelet.wait_idle() == [], "backends still running after the run deleted their Deployments"
    assert labelled_namespaces(dyn) == []
    assert labelled_cluster_trust_bundles(dyn) == []


def test_conditions_come_from_the_api_server(cluster, dyn, controller):
    """What the waits read was written by the controller, through the status subresource."""
    target = KubernetesTarget(gateway_class="refgateway", kubeconfig=str(cluster.kubeconfig),
                              backend_mode="local-process", process_host=TestHost(run_id=uuid.uuid4().hex[:8]))
    try:
        namespace = f"mtls-status-{uuid.uuid4().hex[:6]}"
        target.create_namespace(namespace)
        gateway = {"apiVersion": f"{GROUP}/v1", "kind": "Gateway",
                   "metadata": {"name": "plain", "namespace": namespace},
                   "spec": {"gatewayClassName": "refgateway",
                            "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}}
        target.apply(gateway)
        cond = target.wait_for_condition(ObjectRef.of(gateway), "Programmed", timeout=30)
        raw = dyn.resources.get(api_version=f"{GROUP}/v1", kind="Gateway").get(
            name="plain", namespace=namespace).to_dict()
        writers = {(m["manager"], m.get("subresource")) for m in raw["metadata"]["managedFields"]}
        assert ("mtls-conformance", None) in writers, writers
        status_writers = {manager for manager, sub in writers if sub == "status"}
        assert status_writers and "mtls-conformance" not in status_writers, writers
        assert cond["observedGeneration"] == raw["metadata"]["generation"]
        address, port = target.listener_address(ObjectRef.of(gateway), 8080)
        assert ipaddress.ip_address(address) == ipaddress.ip_address(raw["status"]["addresses"][0]["value"])
        assert port == 8080
    finally:
        target.close()
    assert labelled_namespaces(dyn) == []


#: Loaded into a child pytest: after each test's call, write what the harness reads of
#: the test's Gateway and hold the test there until the parent writes to the FIFO.
PAUSE_PLUGIN = """
import json, os, pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield
    gw, target = item.funcargs["gw"], item.funcargs["mtls_target"]
    seen = target.get(gw.gateway)
    with open(os.environ["PAUSE_READ"], "w") as out:
        json.dump({"namespace": gw.gateway.namespace, "name": gw.gateway.name, "status": seen["status"]}, out)
    capture = item.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("PAUSED", item.name, flush=True)
    with open(os.environ["PAUSE_FIFO"]) as fifo:  # blocks until the parent opens it
        fifo.read()
"""


def test_kubectl_shows_the_conditions_a_paused_scenario_read(cluster, dyn, controller, links_before, tmp_path):
    (tmp_path / "pause_plugin.py").write_text(PAUSE_PLUGIN)
    fifo, read = tmp_path / "resume", tmp_path / "read.json"
    os.mkfifo(fifo)
    child = Child("mtls_conformance/scenarios/test_frontend_default.py", "-p", "pause_plugin", "-k", "resolve_the_ca_reference",
                  "--gateway-class=refgateway", f"--kubeconfig={cluster.kubeconfig}", "--backend-mode=local-process",
                  prefix=("env", f"PYTHONPATH={tmp_path}", f"PAUSE_FIFO={fifo}", f"PAUSE_READ={read}"))
    try:
        child.read_until(r"^PAUSED test_listeners_resolve_the_ca_reference", timeout=120)
        seen = json.loads(read.read_text())
        shown = cluster.kubectl("get", "gateway", "-n", seen["namespace"], seen["name"], "-o", "json")
        status = json.loads(shown.stdout)["status"]
        # Conditions, listener conditions, addresses: what kubectl shows is what the test read.
        assert status == seen["status"]
        listener_conditions = {c["type"]: c["status"] for entry in status["listeners"] for c in entry["conditions"]}
        assert listener_conditions["ResolvedRefs"] == "True", status
        with open(fifo, "w") as resume:
            resume.write("go")
        child.wait(timeout=60)
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.wait()
    assert child.returncode == 0, child.output
    assert "1 passed" in child.output, child.output
    assert_nothing_left(child, dyn, links_before)


def test_echo_deployments_are_valid_manifests(cluster, dyn):
    """--backend-mode=deployment cannot run here (no kubelet): the API server checks the manifests."""
    from mtls_conformance.fixtures.echo import ServerTLS

    namespace = f"t-{uuid.uuid4().hex[:8]}"
    apply(dyn, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    tls = ServerTLS(cert_chain_pem=b"-----BEGIN CERTIFICATE-----\n", key_pem=b"-----BEGIN PRIVATE KEY-----\n",
                    client_ca_pem=b"-----BEGIN CERTIFICATE-----\n")
    for variant in (None, tls):
        objects = echo_backend_manifests(namespace=namespace, service="echo", port=443, image="example/echo:1",
                                         tls=variant)
        for obj in objects:
            resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            resource.server_side_apply(obj, field_manager="kubernetes-target-test", dry_run="All")
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        service = next(o for o in objects if o["kind"] == "Service")
        if variant is None:
            assert "TLS_SERVER_CERT" not in env
            assert service["spec"]["ports"][0]["targetPort"] == 3000
        else:
            mount = container["volumeMounts"][0]["mountPath"]
            for name in ("TLS_SERVER_CERT", "TLS_SERVER_PRIVKEY", "TLS_CLIENT_CACERTS"):
                assert env[name]["value"].startswith(mount + "/"), env[name]
            secret = next(o for o in objects if o["kind"] == "Secret")
            assert set(secret["stringData"]) == {"tls.crt", "tls.key", "ca.crt"}
            assert service["spec"]["ports"][0]["targetPort"] == 8443
    for require in (False, True):  # nginx, unlike echo-basic, can demand a client certificate
        objects = nginx_manifests(namespace=namespace, service="nginx", port=443, image="example/nginx:1",
                                  cert_chain_pem=tls.cert_chain_pem, key_pem=tls.key_pem,
                                  client_ca_pem=tls.client_ca_pem, require_client_cert=require)
        for obj in objects:
            resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            resource.server_side_apply(obj, field_manager="kubernetes-target-test", dry_run="All")
        conf = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["nginx.conf"]
        assert f"ssl_verify_client {'on' if require else 'optional'};" in conf
        assert "access_log /dev/stdout echo;" in conf
    required = ServerTLS(cert_chain_pem=tls.cert_chain_pem, key_pem=tls.key_pem, client_ca_pem=tls.client_ca_pem,
                         require_client_cert=True)
    with pytest.raises(TargetError, match="must require a client certificate, which the echo image cannot"):
        echo_backend_manifests(namespace=namespace, service="echo", port=443, image="example/echo:1", tls=required)


@pytest.fixture
def target(cluster, controller):
    target = KubernetesTarget(gateway_class="refgateway", kubeconfig=str(cluster.kubeconfig),
                              backend_mode="local-process", address_mode="port-forward",
                              process_host=TestHost(run_id=uuid.uuid4().hex[:8]))
    try:
        yield target
    finally:
        target.close()


def test_api_server_refusals_are_target_errors_with_its_message(target):
    namespace = f"mtls-refused-{uuid.uuid4().hex[:6]}"
    target.create_namespace(namespace)
    gateway = {"apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": "bad", "namespace": namespace},
               "spec": {"gatewayClassName": "refgateway",
                        "listeners": [{"name": "x", "port": 8080, "protocol": "HTTP S"}]}}
    with pytest.raises(TargetError) as info:
        target.apply(gateway)
    assert str(info.value).startswith(f"the API server refused Gateway {namespace}/bad: ")
    assert "protocol" in str(info.value)


def test_port_forward_needs_kubectl_and_a_service_of_the_gateway(target, dyn, monkeypatch, tmp_path):
    """Without a Service labelled with the Gateway's name, the harness forwards to whatever owns
    the Gateway's reported address (a shared data plane's Service or pod); here nothing does."""
    namespace = f"mtls-forward-{uuid.uuid4().hex[:6]}"
    target.create_namespace(namespace)
    apply(dyn, {"apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": "g", "namespace": namespace},
                "spec": {"gatewayClassName": "nobody-controls-this",
                         "listeners": [{"name": "h", "port": 80, "protocol": "HTTP"}]}})
    dyn.request("patch", f"/apis/{GROUP}/v1/namespaces/{namespace}/gateways/g/status",
                content_type="application/merge-patch+json",
                body={"status": {"addresses": [{"type": "IPAddress", "value": "192.0.2.7"}]}})
    gateway = ObjectRef("Gateway", "g", namespace)
    with pytest.raises(TargetError) as info:
        target.listener_address(gateway, 443)
    assert str(info.value) == (
        f"--gateway-address-mode=port-forward: no Service in namespace {namespace} carries label "
        "gateway.networking.k8s.io/gateway-name=g, and no Service or running pod owns the Gateway's address "
        "192.0.2.7, so there is nothing to forward to; use --gateway-address-mode=status")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TargetError) as info:
        target.listener_address(gateway, 443)
    assert str(info.value) == ("--gateway-address-mode=port-forward runs `kubectl port-forward` and kubectl is "
                               "not on PATH; install kubectl or use --gateway-address-mode=status")


def test_port_forward_to_a_starting_pod_or_a_missing_port_is_nothing_listening(target, dyn):
    """A proxy pod that is not running yet, or a listener port the implementation left off its
    Service, is what a client would see as connection refused: tried again within the
    consistency window, then judged (fails closed, does not serve), not an error of the test.
    Envoy Gateway makes a proxy Deployment per Gateway and leaves an unprogrammed listener's
    port off the Service (docs/implementations/envoy-gateway.md). No scheduler here: the pod
    stays Pending, and kubectl port-forward says so."""
    from mtls_conformance.client import GatewayClient, Settings, where_rejected
    from mtls_conformance.expect import ExpectationFailed, Timing

    namespace = f"mtls-forward-{uuid.uuid4().hex[:6]}"
    target.create_namespace(namespace)
    proxy = {"gateway.networking.k8s.io/gateway-name": "g"}
    apply(dyn, {"apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": "g", "namespace": namespace},
                "spec": {"gatewayClassName": "nobody-controls-this",
                         "listeners": [{"name": "h", "port": 443, "protocol": "HTTPS"}]}},
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "g-proxy", "namespace": namespace,
                                                                 "labels": proxy},
           "spec": {"selector": proxy, "ports": [{"name": "https-443", "port": 443, "targetPort": 10443}]}},
          {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "g-proxy-0", "namespace": namespace,
                                                             "labels": proxy},
           "spec": {"containers": [{"name": "envoy", "image": "example/envoy:1"}]}})
    gateway = ObjectRef("Gateway", "g", namespace)
    with pytest.raises(NotListening) as info:
        target.listener_address(gateway, 8443)
    assert str(info.value) == (f"kubectl port-forward to {namespace}/service/g-proxy port 8443: Service g-proxy "
                               "does not have a service port 8443")
    pending = (f"kubectl port-forward to {namespace}/service/g-proxy port 443: unable to forward port because "
               "pod is not running. Current status=Pending")
    with pytest.raises(NotListening) as info:
        target.listener_address(gateway, 443)
    assert str(info.value) == pending
    gw = GatewayClient(target, gateway, trust=None, profile=types.SimpleNamespace(rejection_statuses=frozenset()),
                       settings=Settings(timing=Timing(max_time_to_consistency=3, required_consecutive=1)))
    with pytest.raises(ExpectationFailed) as info:
        gw.expect_ok(443, sni="example.com", what="a proxy that is still starting")
    message = str(info.value)
    assert f"got connection refused on connect (nothing listens: {pending})" in message, message
    assert int(re.search(r"after (\d+) attempts", message).group(1)) >= 2, message  # tried again, not ended
    refused = gw.expect_rejected(8443, sni="example.com", listener_may_be_down=True,
                                 what="a listener left off the Service")
    assert where_rejected(refused) == (  # what the reports record (mtls_rejection)
        f"connect refused (nothing listens: kubectl port-forward to {namespace}/service/g-proxy port 8443: "
        "Service g-proxy does not have a service port 8443)")


def test_deployment_backends_wait_for_a_ready_endpoint(cluster, dyn, controller):
    """No kubelet here: the test plays the endpoint-slice controller for the Deployment's pods."""
    import threading

    target = KubernetesTarget(gateway_class="refgateway", kubeconfig=str(cluster.kubeconfig),
                              backend_mode="deployment", echo_image="example/echo:1")
    try:
        namespace = f"mtls-deploy-{uuid.uuid4().hex[:6]}"
        target.create_namespace(namespace)
        result: dict = {}

        def start() -> None:
            try:
                result["backend"] = target.start_backend(namespace=namespace, service="echo", port=8080)
            except Exception as exc:
                result["error"] = exc

        thread = threading.Thread(target=start)
        thread.start()
        deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
        slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": "echo-abcde", "namespace": namespace,
                               "labels": {"kubernetes.io/service-name": "echo"}},
                  "addressType": "IPv4", "ports": [{"name": "http", "port": 3000, "protocol": "TCP"}],
                  "endpoints": [{"addresses": ["10.244.0.7"], "conditions": {"ready": False}}]}
        apply(dyn, slice_)
        thread.join(timeout=2)
        assert thread.is_alive(), f"an endpoint that is not ready must not end the wait: {result}"
        slice_["endpoints"][0]["conditions"]["ready"] = True
        apply(dyn, slice_)
        thread.join(timeout=10)
        assert not thread.is_alive() and "backend" in result, result
        deployment = deployments.get(name="echo", namespace=namespace).to_dict()
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "example/echo:1"
        # Its requests are its pods' logs. There is no controller-manager to make pods and no
        # kubelet to run them: without a pod it says so; a pod that never ran has an empty log.
        with pytest.raises(TargetError, match=f"no pod with label app.kubernetes.io/name=echo in namespace "
                                              f"{namespace}: its log is the backend's request log"):
            result["backend"].requests
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "echo-0", "namespace": namespace, "labels": {"app.kubernetes.io/name": "echo"}},
               "spec": {"containers": [{"name": "echo", "image": "example/echo:1"}]}}
        apply(dyn, pod)
        assert result["backend"].requests == [], "a pod that never started answered nothing"
    finally:
        target.close()
    assert labelled_namespaces(dyn) == []


# --------------------------------------------------------------------------- interrupted runs


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_during_a_wait_leaves_nothing_behind(cluster, dyn, links_before, sig):
    # A class that is Accepted but has no controller: the Gateway never gets a condition,
    # so the run sits in a watch with a namespace, a backend process and a test host made.
    gateway_class(dyn, "stalled", "example.com/stalled", accepted="True")
    child = Child("mtls_conformance/scenarios/test_frontend_default.py", "--gateway-class=stalled",
                  f"--kubeconfig={cluster.kubeconfig}", "--backend-mode=local-process")
    try:
        child.read_until(r"\[mtls\] waiting up to \d+ s for Gateway", timeout=60)
        assert labelled_namespaces(dyn), "the run should have made its namespace by now"
        assert child.processes(), "the run should have started a backend by now"
        hosts = child.test_hosts()
        assert hosts, "the run should have made a test host by now"
        listening = subprocess.run(["ip", "netns", "exec", hosts[0], "ss", "-ltnH"], capture_output=True,
                                   text=True).stdout
        assert listening.strip(), "the backend should be listening in the test host by now"
        os.killpg(child.proc.pid, sig)  # what Ctrl-C in a terminal does, or CI's `timeout`
        child.wait(timeout=60)
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.wait()
    assert child.returncode == 2, child.output  # pytest's "interrupted"
    assert "KeyboardInterrupt" in child.output
    assert_nothing_left(child, dyn, links_before)


def test_keep_objects_failed_keeps_the_namespace_of_a_failing_module_only(cluster, dyn, controller, tmp_path):
    """--keep-objects=failed: the objects of a failed module stay for a look by hand, the rest go."""
    for name, body in (("test_keep_fails.py", "assert False, 'on purpose'"), ("test_keep_passes.py", "pass")):
        (tmp_path / name).write_text(
            "def test_it(mtls_target, mtls_namespace):\n"
            "    mtls_target.apply({'apiVersion': 'v1', 'kind': 'ConfigMap',\n"
            "                       'metadata': {'name': 'look-at-me', 'namespace': mtls_namespace}})\n"
            f"    {body}\n")
    before = set(labelled_namespaces(dyn))
    child = Child(str(tmp_path), "--gateway-class=refgateway", f"--kubeconfig={cluster.kubeconfig}",
                  "--keep-objects=failed", "-p", "no:xdist", cwd=tmp_path).wait()
    kept = sorted(set(labelled_namespaces(dyn)) - before)
    try:
        assert child.returncode == 1, child.output
        assert len(kept) == 1 and "keep-fails" in kept[0], (kept, child.output)
        assert f"[mtls] kept namespace {kept[0]} (--keep-objects=failed): kubectl get" in child.output
        configmaps = dyn.resources.get(api_version="v1", kind="ConfigMap")
        assert configmaps.get(name="look-at-me", namespace=kept[0]).metadata.name == "look-at-me"
    finally:
        # As the harness deletes them (this API server has no namespace controller).
        target = KubernetesTarget(gateway_class="refgateway", kubeconfig=str(cluster.kubeconfig))
        try:
            for name in kept:
                target._namespaces.append(name)
                target.delete_namespace(name)
        finally:
            target.close()
        assert not set(labelled_namespaces(dyn)) - before
