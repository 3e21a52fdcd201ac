"""The self-check's own judgement, without running the suite: per test, not per pattern."""

from __future__ import annotations

from .runner import judge_fault_run

OUTCOMES = {
    "test_a.py::test_rejected[TLSv1.2]": "passed",  # stopped failing under its fault
    "test_a.py::test_rejected[TLSv1.3]": "failed",
    "test_a.py::test_accepted": "passed",
    "test_b.py::test_other": "failed",
    "test_c.py::test_real_host": "skipped",
}


def test_a_parametrised_case_that_stops_failing_is_a_miss():
    verdict = judge_fault_run(["test_a.py::test_rejected[*]", "test_b.py::test_other"], OUTCOMES)
    assert verdict.missed == ("test_a.py::test_rejected[TLSv1.2]",)
    assert verdict.unexpected == () and verdict.stale == ()
    assert not verdict.exact


def test_a_failure_no_pattern_names_is_unexpected():
    verdict = judge_fault_run(["test_a.py::test_rejected[TLSv1.3]"], OUTCOMES)
    assert verdict.unexpected == ("test_b.py::test_other",)
    assert verdict.missed == ()


def test_a_pattern_that_matches_nothing_is_stale():
    verdict = judge_fault_run(["test_a.py::test_rejected[TLSv1.3]", "test_b.py::test_other",
                               "test_a.py::test_renamed"], OUTCOMES)
    assert verdict.stale == ("test_a.py::test_renamed",)


def test_exact_run_and_opt_in_skips():
    verdict = judge_fault_run(["test_a.py::test_rejected[TLSv1.3]", "test_b.py::test_other", "test_c.py::*"],
                              OUTCOMES, {"test_c.py::test_real_*": "--external-backend-host"})
    assert verdict.stale == ("test_c.py::*",)  # the opt-in test did not run: nothing to expect of it
    verdict = judge_fault_run(["test_a.py::test_rejected[TLSv1.3]", "test_b.py::test_other"], OUTCOMES,
                              {"test_c.py::test_real_*": "--external-backend-host"})
    assert verdict.exact
