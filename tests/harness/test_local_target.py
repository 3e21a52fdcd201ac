"""The local target against the real refgateway: generations, bad input, clean teardown."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mtls_conformance.local import LocalTarget
from mtls_conformance.target import ObjectRef, TargetError
from testkit.child_run import PytestRun, run_pytest

ROOT = Path(__file__).resolve().parents[2]


def leftover_dirs(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.glob("mtls-local-*"))


@pytest.fixture
def target():
    t = LocalTarget(gateway_class="harness-tests")
    yield t
    t.close()


def test_generation_follows_spec_changes_only(target):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"},
          "data": {"a": "1"}}
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "g", "namespace": "ns"},
          "spec": {"gatewayClassName": "harness-tests",
                   "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}
    target.create_namespace("ns")
    target.apply(cm, gw)
    ref = ObjectRef.of(gw)
    assert target.get(ref)["metadata"]["generation"] == 1
    target.apply({**gw, "metadata": {**gw["metadata"], "labels": {"x": "y"}}})
    assert target.get(ref)["metadata"]["generation"] == 1, "a label change must not bump generation"
    changed = {**gw, "spec": {**gw["spec"], "listeners": [{"name": "http", "port": 81, "protocol": "HTTP"}]}}
    target.apply(changed)
    assert target.get(ref)["metadata"]["generation"] == 2
    condition = target.wait_for_condition(ref, "Programmed", timeout=10)
    assert condition["observedGeneration"] == 2


@pytest.mark.parametrize("manifest, message", [
    ({"kind": "Gateway", "metadata": {"name": "g", "namespace": "n"}}, "has no apiVersion"),
    ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "n"}}, "has no metadata.name"),
    ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}, "ConfigMap c has no metadata.namespace"),
])
def test_malformed_manifest_is_refused_with_the_missing_field(target, manifest, message):
    with pytest.raises(TargetError, match=message):
        target.apply(manifest)


def test_gateway_command_that_exits_is_one_clear_error_and_leaves_nothing(tmp_path):
    command = f"{sys.executable} -c 'import sys; print(\"boom\"); sys.exit(3)'"
    with pytest.raises(TargetError) as info:
        LocalTarget(gateway_class="x", command=command, parent=tmp_path)
    message = str(info.value)
    assert "exited with status 3 before writing ready" in message
    assert "boom" in message, "the gateway's own output must be in the error"
    assert leftover_dirs(tmp_path) == []


def run_child(*args: str, tmpdir: Path | None = None) -> PytestRun:
    env = {**os.environ, "TMPDIR": str(tmpdir)} if tmpdir else None
    return run_pytest("mtls_conformance/scenarios", "-q", *args, timeout=120, env=env)


def test_unstartable_gateway_command_is_a_usage_error_before_any_test():
    proc = run_child("--gateway-command=/nonexistent/gateway {config_dir}")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert ("ERROR: --gateway-command '/nonexistent/gateway {config_dir}': '/nonexistent/gateway' "
            "is not an executable file or a command on PATH") in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_system_ca_bundle_option_is_refused_on_the_local_target(tmp_path):
    proc = run_child(f"--system-ca-bundle={tmp_path / 'bundle.pem'}")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert ("--system-ca-bundle is for the kubernetes target; a local gateway gets its trust store from "
            "{system_ca_bundle} in --gateway-command (docs/local-target.md)") in proc.stdout + proc.stderr
    assert not (tmp_path / "bundle.pem").exists()


def test_gateway_that_dies_at_start_stops_the_run_with_its_output(tmp_path):
    proc = run_child(f"--gateway-command={sys.executable} -c 'raise SystemExit(\"no config for you\")'",
                     tmpdir=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out
    assert "exited with status 1 before writing ready" in out and "no config for you" in out
    assert " passed" not in out
    assert leftover_dirs(tmp_path) == []


def test_apply_yaml_takes_a_kubectl_style_file(target, tmp_path):
    setup = tmp_path / "setup.yaml"
    setup.write_text("""
apiVersion: v1
kind: Namespace
metadata: {name: guide}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ca-cert, namespace: guide}
data: {ca.crt: x}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: in-default}
  data: {a: "1"}
""")
    applied = target.apply_yaml(setup)
    assert [o["kind"] for o in applied] == ["Namespace", "ConfigMap", "ConfigMap"]
    assert target.get(ObjectRef("ConfigMap", "ca-cert", "guide", api_version="v1"))["data"] == {"ca.crt": "x"}
    assert target.get(ObjectRef("ConfigMap", "in-default", "default", api_version="v1")) is not None
