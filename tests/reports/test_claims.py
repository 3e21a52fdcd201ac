"""A report claims only what ran: verdicts, the ConformanceReport and the matrix.

Unit tests on recorded results (no gateway): a feature with no executed test is never
passed, a profile half with no executed test never succeeded, a test skipped for lacking
an extra feature is not held against the features it has, and the ConformanceReport
says which rejection rule and timeouts the run used.
"""

from __future__ import annotations

import yaml

from mtls_conformance import matrix
from mtls_conformance import report as r

from . import upstream_shape

FE = "GatewayFrontendClientCertificateValidation"
BTP = "BackendTLSPolicy"
SAN = "BackendTLSPolicySANValidation"
PIN = "FrontendClientCertificatePinning"

RUN = r.RunInfo(
    implementation=r.Implementation(organization="acme", project="gw", url="https://gw.invalid",
                                    version="v1.2.3", contact=("@acme/gw",)),
    supported_features=frozenset({"Gateway", "HTTPRoute", FE, BTP}),
    date="2026-11-23T00:00:00Z")


def results(*tests: tuple[str, list[str], str, str]) -> r.Results:
    out = r.Results()
    for nodeid, names, outcome, detail in tests:
        out.tests[nodeid] = r.TestResult(nodeid, names, outcome, detail)
    return out


def unsupported(*names: str) -> str:
    return f"{r.UNSUPPORTED_PREFIX} {', '.join(names)}"


# -- features ---------------------------------------------------------------------------
def test_a_feature_whose_tests_were_all_deselected_is_untested_never_passed():
    recorded = results(
        ("scenarios/test_a.py::test_1", [FE], "skipped", "not run: deselected by -k 'nothing'"),
        ("scenarios/test_a.py::test_2", [FE], "skipped", "not run: deselected by -k 'nothing'"),
        ("scenarios/test_b.py::test_3", ["HTTPRoute"], "skipped", "skipped by --skip-tests"),
    )
    verdicts = r.feature_verdicts(recorded, RUN)["features"]
    assert verdicts[FE]["verdict"] == "untested"
    assert verdicts["HTTPRoute"]["verdict"] == "untested"
    assert (verdicts[FE]["passed"], verdicts[FE]["failed"], verdicts[FE]["skipped"]) == (0, 0, 2)
    lines = r.verdict_lines(recorded, supported=RUN.claimed())
    assert [line.split()[:2] for line in lines[:2]] == [["HTTPRoute", "UNTESTED"], [FE, "UNTESTED"]]
    assert "no test ran" in lines[1] and "2 skipped" in lines[1]


def test_a_claimed_feature_without_any_collected_test_is_listed_as_untested():
    recorded = results(("scenarios/test_a.py::test_fe", [FE], "passed", ""))
    lines = r.verdict_lines(recorded, supported=RUN.claimed())
    assert [line.split()[:2] for line in lines] == [
        [FE, "PASSED"], ["Gateway", "UNTESTED"], ["HTTPRoute", "UNTESTED"], [BTP, "UNTESTED"]]
    assert lines[1].endswith("(no test collected)")


def test_zero_tests_is_never_passed():
    assert r.feature_verdict([], supported=True) == "untested"
    assert r.feature_verdict([], supported=False) == "unsupported"


def test_a_skip_for_an_extra_feature_does_not_make_a_passing_feature_partial():
    """Upstream counts a test whose features are not all supported nowhere (NOT_SUPPORTED)."""
    recorded = results(
        ("scenarios/test_btp.py::test_ok[1]", [BTP], "passed", ""),
        ("scenarios/test_btp.py::test_ok[2]", [BTP], "passed", ""),
        ("scenarios/test_btp.py::test_san[dns]", [BTP, SAN], "skipped", unsupported(SAN)),
        ("scenarios/test_btp.py::test_san[uri]", [BTP, SAN], "skipped", unsupported(SAN)),
        ("scenarios/test_fe.py::test_pin", [FE, PIN], "skipped", unsupported(PIN)),
        ("scenarios/test_fe.py::test_fe", [FE], "passed", ""),
    )
    verdicts = r.feature_verdicts(recorded, RUN)["features"]
    assert verdicts[BTP]["verdict"] == "passed"
    assert (verdicts[BTP]["passed"], verdicts[BTP]["skipped"], verdicts[BTP]["notSupported"]) == (2, 0, 2)
    assert verdicts[SAN]["verdict"] == "unsupported"
    assert verdicts[FE]["verdict"] == "passed"
    assert verdicts[PIN]["verdict"] == "unsupported"
    lines = {line.split()[0]: line for line in r.verdict_lines(recorded, supported=RUN.claimed())}
    assert lines[BTP].split()[1] == "PASSED"
    assert "(2 passed; 2 not run: need BackendTLSPolicySANValidation)" in lines[BTP]
    assert lines[SAN].split()[1] == "UNSUPPORTED"


def test_a_skip_for_the_feature_itself_or_another_reason_still_counts():
    recorded = results(
        ("scenarios/test_btp.py::test_ok", [BTP], "passed", ""),
        ("scenarios/test_btp.py::test_external", [BTP], "skipped", "needs --external-backend-host HOST"),
        ("scenarios/test_btp.py::test_broken", [BTP, SAN], "failed", "expected a rejection"),
    )
    verdicts = r.feature_verdicts(recorded, RUN)["features"]
    assert verdicts[BTP]["verdict"] == "failed"
    # A claimed feature whose own test failed is failed, even if SAN is unclaimed.
    del recorded.tests["scenarios/test_btp.py::test_broken"]
    assert r.feature_verdicts(recorded, RUN)["features"][BTP]["verdict"] == "partial"


def test_a_test_not_run_that_the_implementation_could_not_run_is_not_supported():
    """As upstream, not supported wins over every other reason a test did not run."""
    recorded = r.Results()
    recorded.not_run("scenarios/test_a.py::test_fe", [FE], "deselected by -k 'x'")
    recorded.not_run("scenarios/test_b.py::test_san", [BTP, SAN], "its module was not given")
    recorded.tests["scenarios/test_b.py::test_btp"] = r.TestResult(
        "scenarios/test_b.py::test_btp", [BTP], "passed")
    recorded.not_run("scenarios/test_b.py::test_btp", [BTP], "deselected")  # a real outcome wins
    verdicts = r.feature_verdicts(recorded, RUN)
    assert verdicts["tests"]["test_a::test_fe"]["reason"] == "not run: deselected by -k 'x'"
    assert verdicts["tests"]["test_b::test_san"]["reason"] == f"{r.UNSUPPORTED_PREFIX} {SAN}"
    assert verdicts["features"][BTP]["verdict"] == "passed"
    assert verdicts["features"][FE]["verdict"] == "untested"
    extended = r.conformance_report(recorded, RUN)["profiles"][0]["extended"]
    assert extended["statistics"] == {"Failed": 0, "Passed": 1, "Skipped": 1}
    assert extended["skippedTests"] == ["test_a::test_fe"]


# -- the ConformanceReport --------------------------------------------------------------
def test_a_profile_half_with_no_executed_test_never_succeeded():
    report = r.conformance_report(results(
        ("scenarios/test_a.py::test_fe", [FE], "passed", ""),
    ), RUN)
    assert upstream_shape.check(yaml.safe_load(yaml.safe_dump(report))) == []
    profile = report["profiles"][0]
    assert profile["core"]["statistics"] == {"Failed": 0, "Passed": 0, "Skipped": 0}
    assert profile["core"]["result"] == "partial"
    assert profile["extended"]["result"] == "success"
    assert profile["summary"].startswith("Core tests did not run (0 executed). Extended tests succeeded.")
    assert "Core tests succeeded" not in profile["summary"]

    # Everything deselected: neither half succeeded.
    report = r.conformance_report(results(
        ("scenarios/test_a.py::test_core", ["Gateway"], "skipped", "not run: deselected by -m x"),
        ("scenarios/test_a.py::test_fe", [FE], "skipped", "not run: deselected by -m x"),
    ), RUN)
    profile = report["profiles"][0]
    assert (profile["core"]["result"], profile["extended"]["result"]) == ("partial", "partial")
    assert profile["extended"]["skippedTests"] == ["test_a::test_fe"]
    assert profile["summary"].startswith(
        "Core tests did not run (0 executed, 1 skipped). Extended tests did not run (0 executed, 1 skipped).")
    assert "succeeded" not in profile["summary"]


def test_the_report_names_the_rejection_rule_and_the_timeouts():
    strict = r.RunInfo(implementation=RUN.implementation, supported_features=RUN.supported_features,
                       strict_rejection=True, rejection_statuses=(400, 495, 496),
                       timeouts={"MaxTimeToConsistency": 30.0, "ConditionTimeout": 60.0,
                                 "RequestTimeout": 10.0})
    lenient = r.RunInfo(implementation=RUN.implementation, supported_features=RUN.supported_features,
                        strict_rejection=False, rejection_statuses=(400, 495, 496),
                        timeouts={"MaxTimeToConsistency": 3.0, "ConditionTimeout": 60.0,
                                  "RequestTimeout": 10.0})
    recorded = results(("scenarios/test_a.py::test_fe", [FE], "passed", ""))
    upstream = r.conformance_report(recorded, strict)
    assert upstream_shape.check(yaml.safe_load(yaml.safe_dump(upstream))) == []
    assert upstream["mode"] == "default"
    summary = upstream["profiles"][0]["summary"]
    assert "Rejection rule: upstream (transport-level only)." in summary
    assert "Timeouts: MaxTimeToConsistency=30s, ConditionTimeout=60s, RequestTimeout=10s." in summary

    ours = r.conformance_report(recorded, lenient)
    assert upstream_shape.check(yaml.safe_load(yaml.safe_dump(ours))) == []
    # The mode is what a reader of the upstream file sees first, and what the file is named by.
    assert ours["mode"] == "default+status-rejection"
    assert r.file_stem(lenient) == "standard-v1.2.3-default+status-rejection"
    summary = ours["profiles"][0]["summary"]
    assert "Rejection rule: transport-level, or HTTP status 400, 495 or 496 (not upstream's)." in summary
    assert "MaxTimeToConsistency=3s" in summary
    verdicts = r.feature_verdicts(recorded, lenient)
    assert verdicts["mode"] == "default+status-rejection"
    assert verdicts["rejection"] == {"upstream": False, "statuses": [400, 495, 496]}
    assert verdicts["timeouts"]["MaxTimeToConsistency"] == 3.0

    # Without statuses in the profile the lenient rule is upstream's: nothing to flag.
    plain = r.RunInfo(implementation=RUN.implementation, supported_features=RUN.supported_features,
                      strict_rejection=False)
    assert r.conformance_report(recorded, plain)["mode"] == "default"


# -- the matrix -------------------------------------------------------------------------
def test_the_matrix_never_shows_passed_for_zero_executed_tests(tmp_path):
    # An upstream v1.6-style report: "success" with nothing run in the core half.
    report = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "ConformanceReport",
        "date": "2026-08-01T00:00:00Z", "gatewayAPIVersion": "v1.6.1",
        "gatewayAPIChannel": "standard", "mode": "default",
        "implementation": {"organization": "a", "project": "p", "url": "https://x.invalid",
                           "version": "v1", "contact": ["@a"]},
        "profiles": [{"name": "GATEWAY-HTTP", "summary": "Core tests succeeded. Extended tests succeeded.",
                      "core": {"result": "success",
                               "statistics": {"Passed": 0, "Failed": 0, "Skipped": 0}},
                      "extended": {"result": "success",
                                   "statistics": {"Passed": 3, "Failed": 0, "Skipped": 0},
                                   "supportedFeatures": [FE]}}],
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "standard-v1-default-report.yaml").write_text(yaml.safe_dump(report))
    # A verdicts file written before this rule: "passed" with nothing passed.
    (tmp_path / "b").mkdir()
    report["implementation"]["project"] = "q"
    (tmp_path / "b" / "standard-v1-default-report.yaml").write_text(yaml.safe_dump(report))
    (tmp_path / "b" / "standard-v1-default-verdicts.yaml").write_text(yaml.safe_dump({
        "features": {FE: {"verdict": "passed", "passed": 0, "failed": 0, "skipped": 2},
                     BTP: {"verdict": "passed", "passed": 4, "failed": 0, "skipped": 0}}}))
    columns = {c.project: c for c in matrix.load(tmp_path)}
    assert columns["p"].cells["Gateway"] == "untested"
    assert columns["p"].cells[FE] == "passed"
    assert columns["q"].cells[FE] == "untested"
    assert columns["q"].cells[BTP] == "passed"


def test_a_verdict_note_joins_its_own_features_line_only_from_passed_tests():
    """E.g. "resumption not offered": a pass that exercised less than it could says so."""
    feature = "FrontendResumptionScopedToValidation"
    note = f"{feature}: TLS 1.3 ticket resumption not offered (the resumed path was not exercised)"
    passed = r.TestResult("s/t.py::a", [feature, "GatewayFrontendClientCertificateValidation"], "passed",
                          notes=[note])
    failed = r.TestResult("s/t.py::b", [feature], "failed", notes=[f"{feature}: TLS 1.2 ticket resumed"])
    line = r.verdict_line(feature, [passed, failed])
    assert "TLS 1.3 ticket resumption not offered" in line and "TLS 1.2 ticket resumed" not in line
    assert "not offered" not in r.verdict_line("GatewayFrontendClientCertificateValidation", [passed])
