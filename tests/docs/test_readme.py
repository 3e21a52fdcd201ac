"""The README's promises: two commands first, CI runs the second, documented options exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def first_commands() -> list[str]:
    block = re.search(r"```\n(.*?)```", README, re.S)
    assert block, "README.md has no code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands():
    head = README.split("```", 1)[0]
    assert len(head.splitlines()) <= 4, "the two commands must come first in README.md"
    commands = first_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("python -m pytest"), "command 1 runs the suite (testpaths: scenarios)"
    assert " tests " in commands[1] + " "


def test_ci_runs_readme_command_two_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert first_commands()[1] in ci.splitlines(), ".ci/run must run README command 2 as written"
    assert '"$status" -eq 5' in ci, ".ci/run must not let pytest's 'no tests' exit code pass"


def test_every_documented_option_exists():
    help_text = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    options = set(re.findall(r"`(--[a-z][a-z-]+)", README))
    assert options, "no options documented"
    missing = sorted(o for o in options if o not in help_text)
    assert not missing, f"README documents options pytest does not know: {missing}"


def test_every_documented_fixture_exists():
    out = subprocess.run([sys.executable, "-m", "pytest", "--fixtures", "scenarios", "-q"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    fixtures = re.findall(r"^\| `(mtls_[a-z_]+)` \|", README, re.M)
    assert fixtures
    missing = [f for f in fixtures if not re.search(rf"^{f}\b", out, re.M)]
    assert not missing, f"README documents fixtures that do not exist: {missing}"
