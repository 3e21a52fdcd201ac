"""Option values never change what is collected, whatever the form of the option.

pytest finds its rootdir and ini file before it loads this plugin, so in ``--profile
FILE`` (space form) it took FILE, an existing path outside the checkout, for a test path:
testpaths was lost and the whole checkout was collected, the project's own tests too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from testkit.child_run import run_pytest

ROOT = Path(__file__).resolve().parents[2]

#: Every option whose value is a path, with what the path is (a file or a directory).
PATH_OPTIONS = [("--profile", "file"), ("--report-dir", "dir"), ("--report-output", "file"),
                ("--kubeconfig", "file"), ("--system-ca-bundle", "file"), ("--junitxml", "file"),
                ("--alluredir", "dir")]
PROFILE = "key: mygw\nname: My gateway\nsupported_features: [GatewayFrontendClientCertificateValidation]\n"


def collected(*args: str) -> int:
    proc = run_pytest("--collect-only", "-q", *args, timeout=120)
    match = re.search(r"^(\d+) tests? collected", proc.stdout, re.M)
    assert match and proc.returncode == 0, proc.stdout + proc.stderr
    return int(match.group(1))


@pytest.fixture(scope="module")
def baseline() -> int:
    return collected()


@pytest.mark.parametrize("form", ["--option=VALUE", "--option VALUE"])
@pytest.mark.parametrize("option, kind", PATH_OPTIONS, ids=[o for o, _ in PATH_OPTIONS])
def test_a_path_option_never_changes_what_is_collected(tmp_path, baseline, option, kind, form):
    # An existing path outside the checkout: the case that moved the rootdir.
    path = tmp_path / "out"
    if kind == "dir":
        path.mkdir()
    else:
        path.write_text(PROFILE if option == "--profile" else "")
    args = [f"{option}={path}"] if "=" in form else [option, str(path)]
    assert collected(*args) == baseline, f"`pytest {' '.join(args)}` collects other tests than `pytest`"
