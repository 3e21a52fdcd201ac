"""The pinning scenario takes its option keys from the implementation profile, nothing else.

Run against refgateway (which accepts its own keys and kgateway's) with three user
profiles: kgateway's keys pass; keys of a domain refgateway ignores make exactly the
rejection checks fail (so the scenario really sent the profile's keys); a profile
without pinning skips every test with the reason.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.selfcheck.runner import FAST
from testkit.child_run import run_pytest
from testkit.procs import ROOT

MODULE = ROOT / "mtls_conformance" / "scenarios" / "test_frontend_pinning.py"
FEATURES = ["Gateway", "HTTPRoute", "GatewayFrontendClientCertificateValidation",
            "FrontendClientCertificatePinning"]


def run_with_profile(tmp_path: Path, pinning: dict | None) -> tuple[dict[str, str], str, str]:
    profile = {"key": "refgateway-as-other", "name": "refgateway with another profile",
               "controller_names": ["mtls-conformance.dev/refgateway"], "supported_features": FEATURES}
    if pinning is not None:
        profile["pinning"] = pinning
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    junit = tmp_path / "junit.xml"
    run = run_pytest(str(MODULE), "-p", "no:xdist", "-q", f"--profile={path}", *FAST, junit=junit, timeout=600)
    # The JUnit file keeps skip reasons; the terminal summary of -q does not.
    return run.outcomes, junit.read_text() if junit.exists() else "", run.output


def test_kgateway_keys_pin_on_refgateway(tmp_path):
    outcomes, _, output = run_with_profile(tmp_path, {
        "subject_alt_names": "kgateway.dev/verify-subject-alt-names",
        "certificate_hash": "kgateway.dev/verify-certificate-hash"})
    assert outcomes and set(outcomes.values()) == {"passed"}, output[-3000:]


def test_keys_the_gateway_ignores_make_the_rejections_fail(tmp_path):
    outcomes, _, output = run_with_profile(tmp_path, {
        "subject_alt_names": "pinning.example.invalid/verify-subject-alt-names",
        "certificate_hash": "pinning.example.invalid/verify-certificate-hash"})
    failed = sorted(n for n, o in outcomes.items() if o == "failed")
    assert failed and all("rejected" in n or "must_both_match" in n or "per_port" in n for n in failed), output[-3000:]
    assert outcomes["test_frontend_pinning.py::test_matching_san_is_accepted"] == "passed"


def test_profile_without_pinning_skips_with_the_reason(tmp_path):
    outcomes, junit, output = run_with_profile(tmp_path, None)
    assert outcomes and set(outcomes.values()) == {"skipped"}, output[-3000:]
    assert "names no listener option for subject-alt-name or certificate-hash pinning" in junit, junit[-3000:]
