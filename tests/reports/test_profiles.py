"""Implementation profiles, the feature registry, and where supported features come from.

Precedence, highest first: --supported-features, the --profile file's supported_features,
the GatewayClass status.supportedFeatures, the built-in profile for the controllerName.
"""

from __future__ import annotations


import pytest
import yaml

from mtls_conformance import features, profiles

from .test_run_outputs import FE, run
from testkit.child_run import run_pytest

FB = "GatewayFrontendClientCertificateValidationInsecureFallback"


def test_builtin_profiles_name_known_features_and_distinct_controllers():
    seen: dict[str, str] = {}
    for profile in profiles.BUILTIN.values():
        for name in profile.supported_features:
            features.lookup(name)
        for controller in profile.controller_names:
            assert controller not in seen, f"{controller} in both {seen.get(controller)} and {profile.key}"
            seen[controller] = profile.key
    assert profiles.for_controller("gateway.nginx.org/nginx-gateway-controller").key == "nginx-gateway-fabric"
    assert profiles.for_controller("kgateway.dev/kgateway").pinning.certificate_hash == \
        "kgateway.dev/verify-certificate-hash"
    assert profiles.for_controller("traefik.io/gateway-controller").supported_features.isdisjoint({FE, FB})
    assert {400, 495, 496} <= profiles.NGINX_GATEWAY_FABRIC.rejection_statuses
    for key in ("refgateway", "kgateway", "nginx-gateway-fabric", "envoy-gateway", "istio",
                "agentgateway", "traefik"):
        profile = profiles.BUILTIN[key]
        assert profile.organization and profile.project and profile.url and profile.contact, key


def test_a_profile_file_is_read_and_its_mistakes_named(tmp_path):
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump({
        "key": "acme", "name": "Acme Gateway", "controller_names": ["acme.io/gateway"],
        "organization": "acme", "project": "acme-gw", "url": "https://acme.invalid",
        "version": "v2.0.0", "contact": ["@acme"], "supported_features": ["Gateway", FE],
        "rejection_statuses": [400], "pinning": {"subject_alt_names": "acme.io/sans"}}))
    profile = profiles.load(path)
    assert profile.supported_features == {"Gateway", FE}
    assert profile.contact == ("@acme",) and profile.rejection_statuses == {400}
    assert profile.features_source == f"--profile {path}"

    path.write_text(yaml.safe_dump({"key": "acme", "name": "x", "supported_features": ["Gateway"],
                                    "supported_feature": []}))
    with pytest.raises(profiles.ProfileError, match=r"unknown fields \['supported_feature'\]"):
        profiles.load(path)
    path.write_text(yaml.safe_dump({"key": "acme", "name": "x",
                                    "supported_features": ["gatewayfrontendclientcertificatevalidation"]}))
    with pytest.raises(profiles.ProfileError, match=f"did you mean {FE}"):
        profiles.load(path)
    for depth in (-1, "ten", True):
        path.write_text(yaml.safe_dump({"key": "acme", "name": "x", "max_chain_depth": depth}))
        with pytest.raises(profiles.ProfileError, match="max_chain_depth must be a whole number"):
            profiles.load(path)
    path.write_text(yaml.safe_dump({"key": "acme", "name": "x", "max_chain_depth": 12}))
    assert profiles.load(path).max_chain_depth == 12  # deeper than a default PKI root allows
    for weak in ("sha1-signatures", ["md5-signatures"]):
        path.write_text(yaml.safe_dump({"key": "acme", "name": "x", "refused_weak_crypto": weak}))
        with pytest.raises(profiles.ProfileError, match=r"refused_weak_crypto must be a list of \['rsa-1024-keys', "):
            profiles.load(path)
    path.write_text(yaml.safe_dump({"key": "acme", "name": "x", "refused_weak_crypto": ["rsa-1024-keys"]}))
    assert profiles.load(path).refused_weak_crypto == {"rsa-1024-keys"}


def test_list_features_prints_the_registry():
    out = run_pytest("--list-features", check=True).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["FEATURE", "PROFILE", "SUPPORT", "ORIGIN", "CHANNEL", "DESCRIPTION"]
    rows = {line.split()[0]: line.split()[1:5] for line in lines[1:]}
    assert rows[FE] == ["GATEWAY-HTTP", "extended", "upstream", "standard"]
    assert rows["Gateway"] == ["GATEWAY-HTTP", "core", "upstream", "standard"]
    assert rows["FrontendClientIdentityForwarding"] == ["GATEWAY-HTTP", "extended", "extension", "-"]
    assert set(rows) == set(features.FEATURES)


def test_unsupported_features_are_skipped_never_passed(tmp_path):
    """--supported-features beats every other source; what it leaves out is skipped."""
    proc = run("--supported-features=Gateway,HTTPRoute", f"--report-dir={tmp_path}", "-rs")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert " passed" not in output.splitlines()[-1], output[-500:]
    assert f"implementation does not support {FE}" in output
    verdicts = yaml.safe_load(next(tmp_path.glob("*-verdicts.yaml")).read_text())
    assert verdicts["featuresSource"] == "--supported-features"
    assert verdicts["features"][FE]["verdict"] == "unsupported"
    assert verdicts["features"][FE]["passed"] == 0
    report = yaml.safe_load(next(tmp_path.glob("*-report.yaml")).read_text())
    extended = report["profiles"][0]["extended"]
    # As upstream: a test the implementation cannot run is not counted, its feature is listed.
    assert extended["statistics"] == {"Failed": 0, "Passed": 0, "Skipped": 0}
    assert FE in extended["unsupportedFeatures"]


def test_a_profile_file_beats_the_gateway_class_status(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"key": "mine", "name": "mine", "project": "mine",
                                    "supported_features": ["Gateway", "HTTPRoute", FE]}))
    proc = run(f"--profile={path}", f"--report-dir={tmp_path / 'out'}",
               "--run-test=test_frontend_default::test_valid_client_certificate_is_accepted")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    verdicts = yaml.safe_load(next((tmp_path / "out").glob("*-verdicts.yaml")).read_text())
    assert verdicts["featuresSource"] == f"--profile {path}"
    assert verdicts["implementation"]["project"] == "mine"
    # refgateway's status claims the fallback feature; the file does not.
    assert verdicts["features"][FB]["verdict"] == "unsupported"
    assert ("[mtls] before submitting this ConformanceReport, rerun with --implementation-organization, "
            "--implementation-url, --implementation-version, --implementation-contact: upstream refuses "
            "it without them") in proc.stdout


#: Upstream feature names this suite uses, with their channel and their level in the
#: GATEWAY-HTTP conformance profile. Copied from sigs.k8s.io/gateway-api v1.7.0 (and
#: sigs.k8s.io/gateway-api/conformance v1.7.0): pkg/features/{gateway,httproute,
#: referencegrant,backendtlspolicy}.go (Name, Channel) and conformance/utils/suite/
#: profiles.go GatewayHTTPConformanceProfile (CoreFeatures: Gateway, ReferenceGrant,
#: HTTPRoute; ExtendedFeatures: the Gateway and HTTPRoute extended features, and
#: BackendTLSPolicy's core and extended features). ClusterTrustBundle is new in v1.7.0,
#: in both GatewayExtendedFeatures and BackendTLSPolicyExtendedFeatures.
UPSTREAM = {
    "Gateway": ("standard", "core"),
    "HTTPRoute": ("standard", "core"),
    "ReferenceGrant": ("standard", "core"),
    "GatewayFrontendClientCertificateValidation": ("standard", "extended"),
    "GatewayFrontendClientCertificateValidationInsecureFallback": ("standard", "extended"),
    "GatewayHTTPSListenerDetectMisdirectedRequests": ("standard", "extended"),
    "GatewayBackendClientCertificate": ("standard", "extended"),
    "BackendTLSPolicy": ("standard", "extended"),
    "BackendTLSPolicySANValidation": ("standard", "extended"),
    "ClusterTrustBundle": ("experimental", "extended"),
}


def test_upstream_features_keep_their_upstream_name_channel_and_level():
    ours = {f.name: (f.channel, f.support) for f in features.FEATURES.values() if f.upstream}
    assert ours == UPSTREAM
    for feature in features.FEATURES.values():
        assert feature.profile == "GATEWAY-HTTP"
        assert feature.description and "\n" not in feature.description
        if not feature.upstream:
            assert feature.name not in UPSTREAM
