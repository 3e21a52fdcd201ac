"""Every scenario fails against a deliberately broken refgateway, and only where it should.

Each refgateway fault flag is one targeted deviation from the specification, and
expected_failures.py lists, per fault, the scenario tests it must fail. With no fault,
everything passes. Two depths, chosen with ``--selfcheck``:

- ``quick`` (README command 2, every commit): each scenario test runs once, in a child
  pytest under the most targeted fault that must fail it, and must fail; every fault gets
  at least one of its tests. That shows, test by test, that no check is one that cannot
  fail, in about one pass over the suite.
- ``exact`` (``tox -e selfcheck``, the nightly workflow): the whole suite runs under every
  fault and must fail exactly the listed tests, no more and no fewer; 53 passes over the
  suite, which is why it is not in every commit's run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from testkit.child_run import run_pytest

from .expected_failures import EXPECTED_FAILURES, NOT_YET_COVERED, OPT_IN
from .runner import SCENARIOS, assign_tests, correct_run, judge_fault_run, matches, run_suite


def refgateway_faults() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "refgateway", "--list-faults"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def collected_scenarios() -> list[str]:
    out = run_pytest(str(SCENARIOS), "--collect-only", "-q").stdout
    return [line.split("/", 1)[-1].removeprefix("scenarios/") for line in out.splitlines()
            if "::" in line]


def test_every_fault_is_accounted_for():
    faults = set(refgateway_faults())
    listed = set(EXPECTED_FAILURES) | set(NOT_YET_COVERED)
    assert faults - listed == set(), f"faults with no expected failures: {sorted(faults - listed)}"
    assert listed - faults == set(), f"expected_failures.py names unknown faults: {sorted(listed - faults)}"
    assert not set(EXPECTED_FAILURES) & set(NOT_YET_COVERED)


def test_every_scenario_can_fail():
    """A scenario test that no fault makes fail is a check that cannot fail."""
    patterns = [p for ps in EXPECTED_FAILURES.values() for p in ps]
    nodeids = collected_scenarios()
    assert nodeids, "no scenario was collected"
    never = [n for n in nodeids if not any(matches(n, p) for p in [*patterns, *OPT_IN])]
    assert never == [], "scenario tests that no refgateway fault makes fail:\n" + "\n".join(never)


def test_suite_passes_against_a_correct_gateway(tmp_path_factory):
    run = correct_run(tmp_path_factory)
    assert run.outcomes, f"the child run collected nothing:\n{run.output[-3000:]}"
    failed = sorted(run.with_outcome("failed"))
    skipped = sorted(n for n in run.with_outcome("skipped") if not any(matches(n, p) for p in OPT_IN))
    opt_in = [n for n in run.with_outcome("skipped") if n not in skipped]
    for nodeid in opt_in:  # skipped, and saying which option runs them
        option = next(o for p, o in OPT_IN.items() if matches(nodeid, p))
        assert option in run.messages.get(nodeid, ""), (
            f"{nodeid} was skipped without naming {option}")
    assert not failed, "scenarios failed against the correct refgateway:\n" + "\n\n".join(
        f"{n}\n{run.messages[n][:1500]}" for n in failed)
    assert not skipped, f"refgateway supports every feature, yet these were skipped: {skipped}"
    assert run.returncode == 0, run.output[-3000:]


@pytest.fixture(scope="module")
def assigned() -> dict[str, list[str]]:
    return assign_tests(collected_scenarios(), EXPECTED_FAILURES, OPT_IN)


def test_the_quick_self_check_runs_every_scenario_and_every_fault():
    nodeids = collected_scenarios()
    runs = assign_tests(nodeids, EXPECTED_FAILURES, OPT_IN)
    runnable = [n for n in nodeids if not any(matches(n, p) for p in OPT_IN)]
    once = sorted(n for tests in runs.values() for n in tests)
    assert set(once) == set(runnable), sorted(set(runnable) - set(once))
    assert [fault for fault, tests in runs.items() if not tests] == []
    # Each test once, plus one for each fault whose tests all went to a more targeted one.
    assert len(once) <= len(runnable) + len(EXPECTED_FAILURES)


@pytest.mark.parametrize("fault", sorted(EXPECTED_FAILURES))
def test_fault_fails_the_tests_assigned_to_it(fault, tmp_path, assigned, request):
    if request.config.getoption("--selfcheck") != "quick":
        pytest.skip("--selfcheck=exact runs the whole suite under this fault instead")
    only = assigned[fault]
    run = run_suite(tmp_path, fault, only=only)
    assert run.outcomes, f"the child run collected nothing:\n{run.output[-3000:]}"
    missing = [n for n in only if n not in run.outcomes]
    assert not missing, f"--fault {fault}: these tests did not run:\n" + "\n".join(missing)
    missed = [n for n in only if run.outcomes[n] != "failed"]
    assert not missed, (f"--fault {fault}: these tests did not fail, so they cannot catch it:\n"
                        + "\n".join(f"{n} ({run.outcomes[n]})" for n in missed))
    assert run.returncode == 1


@pytest.mark.parametrize("fault", sorted(EXPECTED_FAILURES))
def test_fault_fails_exactly_the_intended_scenarios(fault, tmp_path, request):
    if request.config.getoption("--selfcheck") != "exact":
        pytest.skip("runs with --selfcheck=exact (tox -e selfcheck, nightly): the whole suite under this fault")
    patterns = EXPECTED_FAILURES[fault]
    run = run_suite(tmp_path, fault)
    assert run.outcomes, f"the child run collected nothing:\n{run.output[-3000:]}"
    verdict = judge_fault_run(patterns, run.outcomes, OPT_IN)
    assert not verdict.stale, (f"--fault {fault}: these expected-failure patterns match no test that ran:\n"
                               + "\n".join(verdict.stale))
    assert not verdict.missed, (f"--fault {fault}: these tests did not fail, so they cannot catch it:\n"
                                + "\n".join(f"{n} ({run.outcomes[n]})" for n in verdict.missed))
    assert not verdict.unexpected, (f"--fault {fault}: tests failed that should not depend on it:\n"
                                    + "\n\n".join(f"{n}\n{run.messages[n][:800]}" for n in verdict.unexpected))
    assert run.returncode == 1
