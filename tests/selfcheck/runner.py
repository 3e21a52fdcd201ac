"""Run the scenario suite in a child pytest against refgateway, and read what happened.

The child is a separate process on purpose: it is exactly what a user runs (plain
``pytest mtls_conformance/scenarios``, the plugin loaded through its entry point), and a fault in the
gateway cannot leak into the parent's session.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from pathlib import Path

from testkit.child_run import refgateway_command, run_pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "mtls_conformance" / "scenarios"

#: A local gateway converges in milliseconds; a check that is going to fail needs only
#: enough time to prove it is not still converging (traffic, and status conditions).
FAST = ["--max-time-to-consistency=1", "--condition-timeout=5"]


@dataclasses.dataclass
class SuiteRun:
    returncode: int
    outcomes: dict[str, str]  # node id relative to mtls_conformance/scenarios/ -> passed | failed | skipped
    messages: dict[str, str]  # node id -> failure (or skip) message
    output: str

    def with_outcome(self, outcome: str) -> set[str]:
        return {nodeid for nodeid, o in self.outcomes.items() if o == outcome}


@functools.cache
def _pattern(pattern: str) -> re.Pattern:
    # Only "*" is a wildcard: node ids are full of brackets, which fnmatch would take as sets.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")) + r"\Z")


def matches(nodeid: str, pattern: str) -> bool:
    return _pattern(pattern).match(nodeid) is not None


@dataclasses.dataclass(frozen=True)
class FaultVerdict:
    """How one fault's run compares with its expected failures, test by test."""

    expected: frozenset[str]  # node ids the patterns expand to (among the tests that ran)
    missed: tuple[str, ...]  # expected to fail, did not: a check that cannot catch the fault
    unexpected: tuple[str, ...]  # failed, not expected: a check that depends on something else
    stale: tuple[str, ...]  # patterns that match no test that ran

    @property
    def exact(self) -> bool:
        return not (self.missed or self.unexpected or self.stale)


def judge_fault_run(patterns: list[str], outcomes: dict[str, str],
                    opt_in: dict[str, str] | None = None) -> FaultVerdict:
    """Expand ``patterns`` against the node ids that ran (``outcomes``: node id -> passed |
    failed | skipped): every test they match must have failed, and no other test may.

    Per test, not per pattern: a parametrised case that stops failing under its fault is
    a miss even when its siblings, matched by the same pattern, still fail. Opt-in tests
    skipped for want of their option are not expected to fail.
    """
    opt_in = opt_in or {}
    ran = {n for n, o in outcomes.items()
           if not (o == "skipped" and any(matches(n, p) for p in opt_in))}
    expected = frozenset(n for n in ran if any(matches(n, p) for p in patterns))
    failed = {n for n, o in outcomes.items() if o == "failed"}
    return FaultVerdict(
        expected=expected,
        missed=tuple(sorted(expected - failed)),
        unexpected=tuple(sorted(failed - expected)),
        stale=tuple(p for p in patterns if not any(matches(n, p) for n in ran)))


def assign_tests(nodeids: list[str], expected: dict[str, list[str]],
                 opt_in: dict[str, str] | None = None) -> dict[str, list[str]]:
    """For the quick self-check: which scenario tests to run under each fault.

    Each test goes to the most targeted fault that must make it fail (the one whose
    expected failures are fewest; ties by name), and a fault left with none gets the
    first of its own, so that every test and every fault is shown live in one pass over
    the suite. Opt-in tests (skipped without their option) are left out.
    """
    opt_in = opt_in or {}
    runnable = [n for n in nodeids if not any(matches(n, p) for p in opt_in)]
    failing = {fault: [n for n in runnable if any(matches(n, p) for p in patterns)]
               for fault, patterns in expected.items()}
    assigned: dict[str, list[str]] = {fault: [] for fault in expected}
    for nodeid in runnable:
        faults = sorted((len(tests), fault) for fault, tests in failing.items() if nodeid in tests)
        if faults:
            assigned[faults[0][1]].append(nodeid)
    for fault, tests in assigned.items():
        if not tests and failing[fault]:
            tests.append(failing[fault][0])
    return assigned


def run_suite(tmp_path: Path, *faults: str, args: list[str] = (), only: list[str] = (),
              timeout: float = 900) -> SuiteRun:
    """The scenario suite (or only the node ids ``only``, relative to mtls_conformance/scenarios/) in a
    child pytest against refgateway with ``faults``."""
    selection = [str(SCENARIOS / nodeid) for nodeid in only] or [str(SCENARIOS)]
    run = run_pytest(*selection, "-p", "no:xdist", "-q", f"--gateway-command={refgateway_command(faults=faults)}",
                     *FAST, *args, junit=tmp_path / "junit.xml", timeout=timeout)
    return SuiteRun(run.returncode, run.outcomes, run.messages, run.output)


def correct_run(tmp_path_factory) -> SuiteRun:
    """The whole suite against a correct refgateway, run once per session and shared by
    the tests that need it (the self-check's baseline, the API server tier's comparison),
    across xdist workers too: each whole-suite run costs a minute of README command 2."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this session's directory, which its workers share
    cache = root / "correct-run"
    with FileLock(str(root / "correct-run.lock")):
        saved = cache / "run.json"
        if saved.exists():
            return SuiteRun(**json.loads(saved.read_text()))
        cache.mkdir(exist_ok=True)
        run = run_suite(cache)
        saved.write_text(json.dumps(dataclasses.asdict(run)))
        return run
