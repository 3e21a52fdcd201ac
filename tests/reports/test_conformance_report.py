"""Our ConformanceReport has the upstream shape, and its verdicts follow upstream's rules."""

from __future__ import annotations

from pathlib import Path

import yaml

from mtls_conformance import matrix
from mtls_conformance import report as r

from . import upstream_shape

DATA = Path(__file__).parent / "data"
PUBLISHED = DATA / "ngf-experimental-2.6.0-default-report.yaml"
FE = "GatewayFrontendClientCertificateValidation"
FB = "GatewayFrontendClientCertificateValidationInsecureFallback"

RUN = r.RunInfo(
    implementation=r.Implementation(organization="acme", project="gw", url="https://gw.invalid",
                                    version="v1.2.3", contact=("@acme/gw",)),
    supported_features=frozenset({"Gateway", "HTTPRoute", FE, "FrontendClientIdentityForwarding"}),
    date="2026-11-23T00:00:00Z")


def results(*tests: tuple[str, list[str], str, str]) -> r.Results:
    out = r.Results()
    for nodeid, names, outcome, detail in tests:
        out.tests[nodeid] = r.TestResult(nodeid, names, outcome, detail)
    return out


def test_the_checker_accepts_a_published_report_and_names_deviations():
    published = yaml.safe_load(PUBLISHED.read_text())
    assert upstream_shape.check(published) == []
    # ... and is not a checker that accepts anything.
    broken = yaml.safe_load(PUBLISHED.read_text())
    broken["profiles"][0]["core"]["statistics"] = {"passed": 1, "Skipped": 0, "Failed": 0}
    broken["implementation"]["contact"] = []
    del broken["gatewayAPIChannel"]
    broken["profiles"][0]["extended"]["supportedFeature"] = []
    assert upstream_shape.check(broken) == ["report: missing gatewayAPIChannel"]
    broken["gatewayAPIChannel"] = "standard"
    assert upstream_shape.check(broken) == [
        "implementation.contact: must not be empty (Implementation.Validate)",
        "profiles[0].core.statistics: expected exactly ['Failed', 'Passed', 'Skipped'], "
        "got {'passed': 1, 'Skipped': 0, 'Failed': 0}",
        "profiles[0].extended: unknown field supportedFeature"]


def test_a_passing_run_has_the_upstream_shape_and_succeeds():
    report = r.conformance_report(results(
        ("scenarios/test_a.py::test_core", ["Gateway", "HTTPRoute"], "passed", ""),
        ("scenarios/test_a.py::test_fe[1]", [FE], "passed", ""),
        ("scenarios/test_a.py::test_identity", [FE, "FrontendClientIdentityForwarding"], "passed", ""),
        ("scenarios/test_b.py::test_ours_only", ["FrontendClientIdentityForwarding"], "passed", ""),
    ), RUN)
    assert upstream_shape.check(yaml.safe_load(yaml.safe_dump(report))) == []
    assert list(report) == ["apiVersion", "kind", "date", "gatewayAPIVersion", "gatewayAPIChannel",
                            "mode", "implementation", "profiles"]
    profile = report["profiles"][0]
    assert profile["name"] == "GATEWAY-HTTP"
    assert profile["summary"] == ("Core tests succeeded. Extended tests succeeded. "
                                  "Rejection rule: upstream (transport-level only).")
    assert profile["core"] == {"result": "success",
                               "statistics": {"Failed": 0, "Passed": 1, "Skipped": 0}}
    # A test with only extensions of ours has no upstream name: it is not counted.
    assert profile["extended"]["statistics"] == {"Failed": 0, "Passed": 2, "Skipped": 0}
    assert profile["extended"]["supportedFeatures"] == [FE]
    assert FB in profile["extended"]["unsupportedFeatures"]
    assert "FrontendClientIdentityForwarding" not in profile["extended"]["unsupportedFeatures"]


def test_failures_fail_skips_are_partial_and_unsupported_tests_are_not_counted():
    report = r.conformance_report(results(
        ("scenarios/test_a.py::test_core", ["Gateway"], "skipped", "skipped by --skip-tests"),
        ("scenarios/test_a.py::test_fe[x]", [FE], "failed", "expected rejection, got HTTP 200"),
        ("scenarios/test_a.py::test_fe[y]", [FE], "passed", ""),
        ("scenarios/test_c.py::test_fb", [FE, FB], "skipped", f"{r.UNSUPPORTED_PREFIX} {FB}"),
    ), RUN)
    core, extended = report["profiles"][0]["core"], report["profiles"][0]["extended"]
    assert core == {"result": "partial", "statistics": {"Failed": 0, "Passed": 0, "Skipped": 1},
                    "skippedTests": ["test_a::test_core"]}
    assert extended["result"] == "failure"
    assert extended["statistics"] == {"Failed": 1, "Passed": 1, "Skipped": 0}
    assert extended["failedTests"] == ["test_a::test_fe[x]"]
    assert "skippedTests" not in extended
    # Nothing ran in the core half: not "partially succeeded".
    assert report["profiles"][0]["summary"] == (
        "Core tests did not run (0 executed, 1 skipped). Extended tests failed with 1 test failures. "
        "Rejection rule: upstream (transport-level only).")


def test_feature_verdicts_never_count_a_skip_as_a_pass():
    document = r.feature_verdicts(results(
        ("scenarios/test_a.py::test_1", [FE], "passed", ""),
        ("scenarios/test_a.py::test_2", [FE], "skipped", "skipped by --skip-tests"),
        ("scenarios/test_a.py::test_3", ["HTTPRoute"], "skipped", "skipped by --skip-tests"),
        ("scenarios/test_c.py::test_fb", [FB], "skipped", f"{r.UNSUPPORTED_PREFIX} {FB}"),
    ), RUN)
    verdicts = document["features"]
    assert verdicts[FE]["verdict"] == "partial"
    assert verdicts["HTTPRoute"]["verdict"] == "untested"  # none of its tests ran
    assert verdicts[FB]["verdict"] == "unsupported"
    assert verdicts["Gateway"]["verdict"] == "untested"
    assert verdicts["BackendTLSPolicy"]["verdict"] == "unsupported"
    assert document["tests"]["test_a::test_2"] == {
        "outcome": "skipped", "features": [FE], "reason": "skipped by --skip-tests"}
    assert document["tests"]["test_a::test_1"] == {"outcome": "passed", "features": [FE]}


def test_the_matrix_reads_a_published_report_without_verdicts(tmp_path):
    (tmp_path / "ngf").mkdir()
    (tmp_path / "ngf" / PUBLISHED.name).write_text(PUBLISHED.read_text())
    [column] = matrix.load(tmp_path)
    assert (column.project, column.version, column.channel, column.mode) == (
        "nginx-gateway-fabric", "v2.6.0", "experimental", "default")
    assert column.cells[FE] == "passed"
    assert column.cells["BackendTLSPolicySANValidation"] == "unsupported"
    assert column.cells["Gateway"] == "passed"
    assert column.cells["FrontendClientIdentityForwarding"] == "untested"


def test_short_names():
    assert r.short_name("scenarios/test_frontend_default.py::test_x[https-8443]") == \
        "test_frontend_default::test_x[https-8443]"
    assert r.without_params("test_frontend_default::test_x[a[b]]") == "test_frontend_default::test_x"
