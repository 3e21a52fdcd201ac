"""The flake check (benchmarks/flakes.py): a small number of rounds in every CI run.

Twenty rounds on both tiers are run by hand and committed under benchmarks/; here two
rounds of the local suite must agree test by test.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.flakes import BOTH, TIERS, burners, changed, workdir
from testkit.procs import ROOT

pytestmark = pytest.mark.xdist_group("interrupts")  # whole-suite runs: not beside each other


def test_changed_lists_every_test_whose_outcome_differs():
    runs = [{"a": "passed", "b": "passed", "c": "skipped"},
            {"a": "passed", "b": "failed", "c": "skipped", "d": "passed"}]
    assert changed(runs) == {"b": ["passed", "failed"], "d": ["absent", "passed"]}
    assert changed([runs[0], dict(runs[0])]) == {}


def test_keep_gives_each_tier_a_directory_that_stays(tmp_path):
    with workdir(tmp_path / "keep", "node") as kept:
        (kept / "run-1.xml").write_text("<testsuites/>")
    assert (tmp_path / "keep" / "node" / "run-1.xml").is_file()
    with workdir(None, "local") as temporary:
        assert temporary.is_dir()
    assert not temporary.exists()


def test_the_node_tier_is_asked_for_by_name():
    # --tier both keeps meaning the two tiers it always ran; the node tier's cluster is
    # started once for all its rounds, like the API server's (it needs a node: not here).
    assert set(TIERS) == {"local", "apiserver", "node"} and BOTH == ("local", "apiserver")


def test_the_loaded_mode_burns_cpu_beside_the_runs_and_stops_its_burners():
    import os
    import time

    def own_burners() -> set[int]:
        found = set()
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"time.monotonic() < end" in cmdline:
                found.add(int(pid))
        return found

    with burners(2, 60):
        time.sleep(0.5)
        running = own_burners()
        assert len(running) == 2
        cpu = sum(int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[11]) for pid in running)
        assert cpu > 0, "the burners used no CPU"
    assert not own_burners()


def test_two_rounds_of_the_local_suite_agree(tmp_path):
    out = tmp_path / "flakes.md"
    proc = subprocess.run([sys.executable, "benchmarks/flakes.py", "--runs", "2", "--tier", "local",
                           "--output", str(out), "--keep", str(tmp_path / "keep")], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ", 0 changed" in proc.stdout
    assert "## local" in out.read_text() and "Code: " in out.read_text()
    # --keep: each run's JUnit and output stay, to trace a changed result with.
    assert {p.name for p in (tmp_path / "keep" / "local").iterdir()} >= {"run-1.xml", "run-1.log", "run-2.xml",
                                                                         "run-2.log"}
