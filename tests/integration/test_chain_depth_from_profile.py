"""The chain-depth scenario works for any max_chain_depth a profile states.

The PKI factory's roots used to allow at most nine intermediates below them, so a
profile stating 9 or more made the test crash before it contacted the gateway
(``ValueError ... path length is 0``), reported as a failure of the implementation.
Here refgateway is started with the depth a user profile states (12): the chain at the
limit must be accepted and the one below it rejected, by the gateway; with refgateway's
default depth (4) the same profile must fail on the gateway's answer, not on the PKI.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.selfcheck.runner import FAST
from testkit.child_run import refgateway_command, run_pytest
from testkit.procs import ROOT

TEST = "test_frontend_bad_client_certs.py::test_chain_deeper_than_the_limit_is_rejected"
DEPTH = 12


def run(tmp_path: Path, *gateway_args: str) -> tuple[str, str, str]:
    profile = {"key": "refgateway-deep-chains", "name": "refgateway with a deeper verify depth",
               "controller_names": ["mtls-conformance.dev/refgateway"], "max_chain_depth": DEPTH,
               "supported_features": ["Gateway", "HTTPRoute", "GatewayFrontendClientCertificateValidation",
                                      "FrontendClientCertificateChainDepth"]}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    run = run_pytest(str(ROOT / "mtls_conformance/scenarios" / TEST), "-p", "no:xdist", "-q", f"--profile={path}",
                     f"--gateway-command={refgateway_command(extra=gateway_args)}", *FAST,
                     junit=tmp_path / "junit.xml", timeout=600)
    return run.outcomes.get(TEST, "not run"), run.messages.get(TEST, ""), run.output


def test_a_profile_deeper_than_nine_is_tested(tmp_path):
    outcome, message, output = run(tmp_path, "--max-client-chain-depth", str(DEPTH))
    assert outcome == "passed", output[-3000:]


def test_a_gateway_with_a_shallower_limit_fails_on_its_answer(tmp_path):
    outcome, message, output = run(tmp_path)
    assert outcome == "failed", output[-3000:]
    assert "path length" not in message, message
    assert f"{DEPTH} intermediate CAs, the profile's max_chain_depth" in message, message
