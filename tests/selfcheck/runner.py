"""Run the scenario suite in a child pytest against refgateway, and read what happened.

The child is a separate process on purpose: it is exactly what a user runs (plain
``pytest scenarios``, the plugin loaded through its entry point), and a fault in the
gateway cannot leak into the parent's session.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"

#: A local gateway converges in milliseconds; a check that is going to fail needs only
#: enough time to prove it is not still converging (traffic, and status conditions).
FAST = ["--max-time-to-consistency=1", "--condition-timeout=5"]


@dataclasses.dataclass
class SuiteRun:
    returncode: int
    outcomes: dict[str, str]  # node id relative to scenarios/ -> passed | failed | skipped
    messages: dict[str, str]  # node id -> failure (or skip) message
    output: str

    def with_outcome(self, outcome: str) -> set[str]:
        return {nodeid for nodeid, o in self.outcomes.items() if o == outcome}


def gateway_command(*faults: str) -> str:
    argv = [sys.executable, "-m", "refgateway", "--config-dir", "{config_dir}",
            "--state-dir", "{state_dir}", "--system-ca-bundle", "{system_ca_bundle}"]
    for fault in faults:
        argv += ["--fault", fault]
    return shlex.join(argv)


def run_suite(tmp_path: Path, *faults: str, args: list[str] = (), timeout: float = 900) -> SuiteRun:
    junit = tmp_path / "junit.xml"
    argv = [sys.executable, "-m", "pytest", str(SCENARIOS), "-p", "no:cacheprovider", "-p", "no:xdist",
            "-q", f"--junitxml={junit}", f"--gateway-command={gateway_command(*faults)}", *FAST, *args]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    outcomes, messages = parse_junit(junit) if junit.exists() else ({}, {})
    return SuiteRun(proc.returncode, outcomes, messages, proc.stdout + proc.stderr)


def parse_junit(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        nodeid = f"{module}.py::{case.get('name')}"
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            outcomes[nodeid] = "failed"
            messages[nodeid] = (failure.get("message") or "") + "\n" + (failure.text or "")
        elif case.find("skipped") is not None:
            outcomes.setdefault(nodeid, "skipped")
            messages.setdefault(nodeid, case.find("skipped").get("message") or "")
        else:
            outcomes.setdefault(nodeid, "passed")
    return outcomes, messages
