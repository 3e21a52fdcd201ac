"""tools/upstream/run.py judges the upstream suite by three sources that must agree:
go test's exit status, the per-test lines of -test.v, and the ConformanceReport."""

from __future__ import annotations

import pytest

from testkit import upstream as run

VERBOSE = """\
=== RUN   TestConformance
=== RUN   TestConformance/BackendTLSPolicy
=== PAUSE TestConformance/BackendTLSPolicy
=== RUN   TestConformance/HTTPRouteSimpleSameNamespace
    conformanceconfig.go:12: Skipping HTTPRouteSimpleSameNamespace: test explicitly skipped
=== CONT  TestConformance/BackendTLSPolicy
=== RUN   TestConformance/BackendTLSPolicy/hostname_mismatch
--- FAIL: TestConformance (40.00s)
    --- SKIP: TestConformance/HTTPRouteSimpleSameNamespace (0.00s)
    --- FAIL: TestConformance/BackendTLSPolicy (30.00s)
        --- FAIL: TestConformance/BackendTLSPolicy/hostname_mismatch (30.00s)
        --- PASS: TestConformance/BackendTLSPolicy/sni (1.00s)
    --- PASS: TestConformance/BackendTLSPolicySANValidation (3.00s)
FAIL
"""


def test_per_test_lines_are_read_for_tests_not_their_subtests():
    assert run.parse_verbose(VERBOSE) == {
        "HTTPRouteSimpleSameNamespace": "skipped",
        "BackendTLSPolicy": "failed",
        "BackendTLSPolicySANValidation": "passed",
    }


def report(failed=(), skipped=(), passed=0) -> dict:
    return {"profiles": [{"name": "GATEWAY-HTTP", "core": {"result": "success", "statistics": {"Passed": 0}},
                          "extended": {"statistics": {"Passed": passed, "Failed": len(failed)},
                                       "failedTests": list(failed), "skippedTests": list(skipped)}}]}


def result(outcomes, rep, exit_code, tests=("A", "B")):
    claims = run.parse_report(rep)
    return run.Result(exit_code, outcomes, rep, {t: claims.get(t, "passed") for t in tests}, [], list(tests), 1.0,
                      "log")


def test_a_test_the_report_calls_passed_but_that_failed_in_the_output_is_not_passed():
    # v1.6.x recorded parallel tests as passed before they ran (facts file s.8).
    r = result({"A": "failed", "B": "passed"}, report(passed=2), 1)
    assert r.verdict("A") == "failed"
    assert not r.ok


def test_a_test_the_output_passes_but_the_report_fails_is_disputed():
    r = result({"A": "passed", "B": "passed"}, report(failed=["A"], passed=1), 0)
    assert r.verdict("A") == "disputed"
    assert not r.ok


@pytest.mark.parametrize("outcomes", [{"A": "passed"}, {"A": "passed", "B": "skipped"}])
def test_a_requested_test_that_did_not_pass_is_never_ok(outcomes):
    r = result(outcomes, report(skipped=["B"], passed=1), 0)
    assert r.verdict("B") in ("not run", "skipped")
    assert not r.ok


def test_all_three_agreeing_is_ok():
    assert result({"A": "passed", "B": "passed"}, report(passed=2), 0).ok


def test_the_tls_tests_and_out_of_scope_ones_are_disjoint():
    assert not set(run.TLS_TESTS) & set(run.OUT_OF_SCOPE)
    assert len(set(run.TLS_TESTS)) == len(run.TLS_TESTS) == 14


def test_a_test_of_an_unsupported_feature_is_absent_from_the_report_not_passed(tmp_path):
    # v1.7.0 lists only explicitly skipped tests; unsupported ones are left out.
    claims = run.parse_report(report(passed=1))
    assert "B" not in claims
    r = result({"A": "passed", "B": "skipped"}, report(passed=1), 0)
    assert r.verdict("B") == "skipped" and not r.ok
