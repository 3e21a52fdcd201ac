"""The flake check (benchmarks/flakes.py): a small number of rounds in every CI run.

Twenty rounds on both tiers are run by hand and committed under benchmarks/; here two
rounds of the local suite must agree test by test.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.flakes import changed
from testkit.procs import ROOT

pytestmark = pytest.mark.xdist_group("interrupts")  # whole-suite runs: not beside each other


def test_changed_lists_every_test_whose_outcome_differs():
    runs = [{"a": "passed", "b": "passed", "c": "skipped"},
            {"a": "passed", "b": "failed", "c": "skipped", "d": "passed"}]
    assert changed(runs) == {"b": ["passed", "failed"], "d": ["absent", "passed"]}
    assert changed([runs[0], dict(runs[0])]) == {}


def test_two_rounds_of_the_local_suite_agree(tmp_path):
    out = tmp_path / "flakes.md"
    proc = subprocess.run([sys.executable, "benchmarks/flakes.py", "--runs", "2", "--tier", "local",
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ", 0 changed" in proc.stdout
    assert "## local" in out.read_text()
