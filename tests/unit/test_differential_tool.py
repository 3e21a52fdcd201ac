"""tools/upstream/differential.py: what a partial run (some faults, one side, some modules)
may leave out, and what the table must never hide."""

from __future__ import annotations

from testkit.procs import ROOT
from tests.selfcheck.expected_failures import EXPECTED_FAILURES
from tools.upstream import differential

TESTS = differential.run.TLS_TESTS


def row(up_failed=(), our_failed=(), modules=("scenarios",)):
    return {"upstream": {"verdicts": {t: "failed" if t in up_failed else "passed" for t in TESTS},
                         "exit_code": int(bool(up_failed)), "seconds": 1.0, "disagreements": [],
                         "commit": "abc", "date": "2026-12-01T00:00Z"},
            "ours": {"Gateway": "failed" if "Gateway" in our_failed else "passed"},
            "ours_run": {"commit": "abc", "date": "2026-12-01T00:00Z", "seconds": 1, "modules": list(modules),
                         "not_as_expected": {"missed": [], "unexpected": []}}}


def test_expected_scope_runs_existing_modules_and_none_runs_everything():
    assert differential.scenario_modules(None, "expected") == [differential.SCENARIOS]
    assert differential.scenario_modules("accept-no-client-cert", "all") == [differential.SCENARIOS]
    for fault in EXPECTED_FAILURES:
        modules = differential.scenario_modules(fault, "expected")
        assert modules and all((ROOT / m).is_file() for m in modules), (fault, modules)


def test_a_fault_only_upstream_catches_is_said_so():
    text = differential.render({"none": row(), "some-fault": row(up_failed=[TESTS[0]])}, ["Gateway"])
    assert "| `some-fault` | " + TESTS[0] + " | - | **upstream only** |" in text


def test_a_baseline_that_is_not_clean_is_said_so():
    text = differential.render({"none": row(our_failed=["Gateway"])}, ["Gateway"])
    assert "baseline: must be neither — **ours only!**" in text


def test_a_missing_side_reads_not_run_and_is_never_a_pass():
    half = row()
    del half["upstream"]
    text = differential.render({"none": half}, ["Gateway"])
    assert "| `none` | " + " | ".join("not run" for _ in TESTS) + " | - | - |" in text
    # Not run is not passed: the summary counts it as caught, never as a clean row.
    assert "baseline: must be neither — **upstream only!**" in text
