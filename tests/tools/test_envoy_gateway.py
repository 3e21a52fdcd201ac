"""tools/envoy_gateway and deploy/envoy-gateway agree with each other and with the profile.

The run itself (tox -e envoy-gateway) needs root, a node and about half an hour; these
checks catch the drift that would make it run something other than what it says.
"""

from __future__ import annotations

import re

import yaml

from mtls_conformance import profiles
from testkit.procs import ROOT



def run_module():
    from tools.envoy_gateway import run

    return run


def build_default(name: str) -> str:
    text = (ROOT / "tools" / "envoy_gateway" / "build.sh").read_text()
    return re.search(rf'^{name}="\$\{{{name}:-([^}}]+)\}}"', text, re.M).group(1)


def test_the_gateway_class_points_at_the_envoy_image_build_sh_makes():
    proxy, gateway_class = yaml.safe_load_all((ROOT / "deploy" / "envoy-gateway" / "gatewayclass.yaml").read_text())
    container = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]
    assert container["image"] == f"localhost/envoyproxy/envoy:v{build_default('ENVOY_VERSION')}"
    ref = gateway_class["spec"]["parametersRef"]
    assert (ref["kind"], ref["name"], ref["namespace"]) == \
        ("EnvoyProxy", proxy["metadata"]["name"], proxy["metadata"]["namespace"])
    assert gateway_class["metadata"]["name"] == run_module().GATEWAY_CLASS
    assert gateway_class["spec"]["controllerName"] in profiles.ENVOY_GATEWAY.controller_names


def test_the_upstream_run_claims_what_the_profile_claims():
    """Both come from EG's v1.9.0 report: the upstream run's list holds every feature the profile has."""
    assert set(profiles.ENVOY_GATEWAY.supported_features) <= set(run_module().EG_REPORT_FEATURES)
    assert "GatewayHTTPSListenerDetectMisdirectedRequests" not in run_module().EG_REPORT_FEATURES
