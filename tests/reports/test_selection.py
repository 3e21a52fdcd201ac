"""Tests left out by -k, -m or node ids are reported as not run, in a real run of the suite.

Each test runs one scenario module in a child pytest, as a user does, against the
bundled refgateway, and reads the terminal verdicts and the files of --report-dir.
"""

from __future__ import annotations

import yaml

from .test_run_outputs import FE, MODULE, run

ACCEPTED = "test_frontend_default::test_valid_client_certificate_is_accepted"
IDENTITY = "FrontendClientIdentityForwarding"


def read(folder):
    report = yaml.safe_load(next(folder.glob("*-report.yaml")).read_text())
    verdicts = yaml.safe_load(next(folder.glob("*-verdicts.yaml")).read_text())
    return report, verdicts


def verdict_line(output: str, feature: str) -> str:
    after = output.split("verdicts per feature", 1)[1]
    return next(line for line in after.splitlines() if line.startswith(feature + " "))


def check_k_selection(tmp_path, *, workers: int) -> None:
    proc = run("-k", "valid_client_certificate_is_accepted", f"--report-dir={tmp_path}", workers=workers)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    # Not "PASSED (2 passed)": 10 tests of the feature did not run.
    # (the other scenario modules did not run either: they count as skipped too).
    report, verdicts = read(tmp_path)
    fe_tests = [e for e in verdicts["tests"].values() if FE in e["features"]]
    line = verdict_line(proc.stdout, FE)
    assert line.split()[1:] == ["PARTIAL", "(2", "passed,", f"{len(fe_tests) - 2}", "skipped)"], line
    assert len(fe_tests) > 12
    assert verdict_line(proc.stdout, IDENTITY).split()[1] == "UNTESTED"

    profile = report["profiles"][0]
    assert "succeeded." not in profile["summary"].replace("partially succeeded", ""), profile["summary"]
    assert profile["core"]["result"] == "partial"
    assert profile["extended"]["result"] == "partial"
    stats = profile["extended"]["statistics"]
    assert (stats["Failed"], stats["Passed"]) == (0, 2) and stats["Skipped"] >= 10
    assert "test_frontend_default::test_no_client_certificate_is_rejected[https-8443]" in \
        profile["extended"]["skippedTests"]
    assert verdicts["features"][FE]["verdict"] == "partial"
    assert verdicts["features"][IDENTITY]["verdict"] == "untested"
    left_out = verdicts["tests"]["test_frontend_default::test_expired_client_certificate_is_rejected[https-8443]"]
    assert left_out == {"outcome": "skipped", "features": [FE],
                        "reason": "not run: deselected by -k 'valid_client_certificate_is_accepted'"}
    assert verdicts["tests"][f"{ACCEPTED}[https-8443]"]["outcome"] == "passed"
    siblings = {e["reason"] for name, e in verdicts["tests"].items() if name.startswith("test_backend_")}
    assert siblings == {"not run: its module was not given on the command line"}


def test_k_deselection_is_not_run(tmp_path):
    check_k_selection(tmp_path, workers=0)


def test_k_deselection_is_not_run_under_xdist(tmp_path):
    check_k_selection(tmp_path, workers=1)


def test_m_deselection_of_everything_claims_nothing(tmp_path):
    # No test runs, so no gateway starts: nothing may read as success.
    proc = run("-m", "not features", f"--report-dir={tmp_path}")
    assert proc.returncode == 5, (proc.stdout + proc.stderr)[-3000:]
    assert verdict_line(proc.stdout, FE).split()[1:4] == ["UNTESTED", "(no", "test"]
    report, verdicts = read(tmp_path)
    profile = report["profiles"][0]
    assert "succeeded" not in profile["summary"], profile["summary"]
    assert profile["extended"]["result"] == "partial"
    stats = profile["extended"]["statistics"]
    assert (stats["Failed"], stats["Passed"]) == (0, 0) and stats["Skipped"] >= 12
    assert {v["verdict"] for v in verdicts["features"].values()} <= {"untested", "unsupported"}
    assert verdicts["tests"][f"{ACCEPTED}[https-8444]"]["reason"] == "not run: deselected by -m 'not features'"


def test_node_ids_leave_the_rest_of_the_module_not_run(tmp_path):
    proc = run(f"--report-dir={tmp_path}", nodeids=[f"{MODULE}::test_valid_client_certificate_is_accepted"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert verdict_line(proc.stdout, FE).split()[1] == "PARTIAL"
    _, verdicts = read(tmp_path)
    left_out = verdicts["tests"]["test_frontend_default::test_listeners_resolve_the_ca_reference"]
    assert left_out["reason"] == "not run: not among the tests named on the command line"
    assert verdicts["features"][IDENTITY]["verdict"] == "untested"


def test_report_output_uses_the_upstream_rejection_rule_unless_told_otherwise(tmp_path):
    proc = run(f"--run-test={ACCEPTED}[https-8443]", f"--report-output={tmp_path / 'up.yaml'}",
               f"--report-dir={tmp_path / 'dir'}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = yaml.safe_load((tmp_path / "up.yaml").read_text())
    assert "Rejection rule: upstream (transport-level only)." in report["profiles"][0]["summary"]
    assert "MaxTimeToConsistency=1s" in report["profiles"][0]["summary"]
    _, verdicts = read(tmp_path / "dir")
    assert verdicts["rejectionRule"] == "upstream (transport-level only)"

    # --no-strict-rejection: the profile's statuses count again, and the report says so.
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({
        "key": "refgateway-lenient", "name": "refgateway", "controller_names": ["x.invalid/none"],
        "organization": "o", "project": "refgateway", "url": "https://x.invalid", "version": "v0",
        "contact": ["@o"], "supported_features": [FE], "rejection_statuses": [400]}))
    proc = run(f"--run-test={ACCEPTED}[https-8443]", f"--report-output={tmp_path / 'ours.yaml'}",
               "--no-strict-rejection", f"--profile={profile}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = yaml.safe_load((tmp_path / "ours.yaml").read_text())
    assert report["mode"] == "default+status-rejection"
    assert "Rejection rule: transport-level, or HTTP status 400 (not upstream's)." in \
        report["profiles"][0]["summary"]


def test_a_gateway_lacking_only_san_validation_passes_backend_tls_policy(tmp_path):
    """The SAN tests need BackendTLSPolicy too; skipped for lacking SAN validation, they are
    held against neither feature (upstream: NOT_SUPPORTED, in no statistic)."""
    modules = sorted(str(p) for p in MODULE.parent.glob("test_*.py")  # all BackendTLSPolicy tests
                     if "BackendTLSPolicy" in p.read_text())
    proc = run(f"--report-dir={tmp_path}", "--exempt-features=BackendTLSPolicySANValidation",
               nodeids=modules)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    line = verdict_line(proc.stdout, "BackendTLSPolicy")
    assert line.split()[1] == "PASSED", line
    assert "not run: need BackendTLSPolicySANValidation)" in line
    assert verdict_line(proc.stdout, "BackendTLSPolicySANValidation").split()[1] == "UNSUPPORTED"
    report, verdicts = read(tmp_path)
    btp = verdicts["features"]["BackendTLSPolicy"]
    assert (btp["verdict"], btp["failed"], btp["skipped"]) == ("passed", 0, 0)
    assert btp["passed"] > 0 and btp["notSupported"] > 0
    extended = report["profiles"][0]["extended"]
    assert "BackendTLSPolicySANValidation" in extended["unsupportedFeatures"]
    # The SAN tests are not counted at all: not skipped, not passed.
    assert not [t for t in extended.get("skippedTests", []) if t.startswith("test_backend_tls_in_cluster")]
