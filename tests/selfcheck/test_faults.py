"""Every scenario fails against a deliberately broken refgateway, and only where it should.

Each refgateway fault flag is one targeted deviation from the specification. The suite
runs once per fault (in a child pytest, exactly as a user runs it) and must fail exactly
the tests listed for that fault in expected_failures.py; with no fault, everything passes.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import pytest

from .expected_failures import EXPECTED_FAILURES, NOT_YET_COVERED, OPT_IN
from .runner import SCENARIOS, run_suite


@functools.cache
def _pattern(pattern: str) -> re.Pattern:
    # Only "*" is a wildcard: node ids are full of brackets, which fnmatch would take as sets.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")) + r"\Z")


def matches(nodeid: str, pattern: str) -> bool:
    return _pattern(pattern).match(nodeid) is not None


def refgateway_faults() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "refgateway", "--list-faults"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def collected_scenarios() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", str(SCENARIOS), "--collect-only", "-q",
                          "-p", "no:cacheprovider"], capture_output=True, text=True).stdout
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


def test_suite_passes_against_a_correct_gateway(tmp_path):
    run = run_suite(tmp_path)
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


@pytest.mark.parametrize("fault", sorted(EXPECTED_FAILURES))
def test_fault_fails_exactly_the_intended_scenarios(fault, tmp_path):
    patterns = EXPECTED_FAILURES[fault]
    run = run_suite(tmp_path, fault)
    assert run.outcomes, f"the child run collected nothing:\n{run.output[-3000:]}"
    failed = run.with_outcome("failed")
    unexpected = sorted(n for n in failed if not any(matches(n, p) for p in patterns))
    missed = [p for p in patterns if not any(matches(n, p) for n in failed)]
    assert not missed, (f"--fault {fault}: these checks did not fail, so they cannot catch it:\n"
                        + "\n".join(missed))
    assert not unexpected, (f"--fault {fault}: tests failed that should not depend on it:\n"
                            + "\n\n".join(f"{n}\n{run.messages[n][:800]}" for n in unexpected))
    assert run.returncode == 1
