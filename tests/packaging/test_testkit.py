"""testkit, the project's own test tooling (README "Layout"): importable by one name from
anywhere in a clone's dev install (README command 2), as ``python tools/...`` scripts run;
never loaded by file path or through ``sys.path`` edits. That it is not in the wheel:
test_wheel.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from testkit.procs import ROOT

#: What tests, tools and benchmarks must not do to import each other (issue 22).
FILE_LOADS = re.compile(r"spec_from_file_location|sys\.path\.(insert|append)|sys\.path\s*\[")


def test_testkit_and_the_clone_s_folders_import_by_one_name_from_any_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    code = ("import testkit.testcluster, testkit.nodecluster, testkit.child_run, tools.mutants, "
            "tests.selfcheck.runner, benchmarks.flakes; print(testkit.testcluster.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(ROOT / "testkit" / "testcluster.py")
    cli = subprocess.run([sys.executable, "-m", "testkit.testcluster", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert cli.returncode == 0 and "python -m testkit.testcluster" in cli.stdout, cli.stderr


def test_nothing_loads_a_module_by_file_or_edits_sys_path():
    found = []
    for folder in ("testkit", "tests", "tools", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "tests" / "packaging" / "test_testkit.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if FILE_LOADS.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "import testkit, tools.* or benchmarks.* by name instead:\n" + "\n".join(found)
