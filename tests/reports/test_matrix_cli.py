"""``python -m mtls_conformance report``: the matrix from every report in a folder, or one clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from mtls_conformance import features, matrix
from mtls_conformance.__main__ import reference_run_argv
from mtls_conformance.local import REFGATEWAY_COMMAND

from ..selfcheck.runner import ROOT

REPORTS = ROOT / "reports"


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtls_conformance", "report", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_committed_reports_make_a_matrix(tmp_path):
    proc = report("reports/", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    columns = matrix.load(REPORTS)
    assert len(columns) >= 2
    assert proc.stdout.strip() == (f"wrote {tmp_path / 'index.html'} and {tmp_path / 'matrix.md'} "
                                   f"({len(columns)} reports)")
    md = (tmp_path / "matrix.md").read_text().splitlines()
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in md
            if line.startswith("| ") and not line.startswith("| feature")}
    assert set(rows) == set(features.FEATURES)
    by_label = {c.label: i for i, c in enumerate(columns)}
    correct = by_label["refgateway v0.1.0"]
    broken = by_label["refgateway v0.1.0+fault.accept-any-client-cert"]
    fe = "GatewayFrontendClientCertificateValidation"
    assert rows[fe][correct].strip(" |") == "passed"
    assert rows[fe][broken].strip(" |") == "failed"
    # The committed runs are as current as refgateway: its backend TLS features are tested.
    for feature in ("BackendTLSPolicy", "BackendTLSPolicySANValidation", "GatewayBackendClientCertificate"):
        assert rows[feature][correct].strip(" |") == "passed", (feature, rows[feature])


def test_reference_runs_give_refgateway_what_the_local_target_gives_it():
    """Without {system_ca_bundle} the wellKnownCACertificates: System scenarios would skip."""
    argv = reference_run_argv(Path("out"), faults=("accept-any-client-cert",), version=None)
    command = next(a.split("=", 1)[1] for a in argv if a.startswith("--gateway-command="))
    assert command == f"{REFGATEWAY_COMMAND} --fault accept-any-client-cert"
    assert "--system-ca-bundle {system_ca_bundle}" in command


def test_a_folder_without_reports_is_refused(tmp_path):
    proc = report(str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"python -m mtls_conformance report: no ConformanceReport (*-report.yaml) under {tmp_path}; "
        f"run the suite with --report-dir {tmp_path}/<implementation> first")
    assert list(tmp_path.iterdir()) == [], "nothing is left behind"
    proc = report(str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert f"{tmp_path / 'nope'} is not a folder" in proc.stderr


def test_the_committed_reports_claim_only_what_ran(tmp_path):
    """No feature passed and no profile half succeeded with zero executed tests."""
    proc = report("reports/", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    columns = matrix.load(REPORTS)
    md = (tmp_path / "matrix.md").read_text().splitlines()
    rows = {line.split(" | ")[0].removeprefix("| "): [c.strip(" |") for c in line.split(" | ")[1:]]
            for line in md if line.startswith("| ") and not line.startswith("| feature")}
    for index, column in enumerate(columns):
        path = REPORTS / column.source
        upstream = yaml.safe_load(path.read_text())
        for profile in upstream["profiles"]:
            assert "Rejection rule: " in profile["summary"], (column.source, profile["summary"])
            for half in ("core", "extended"):
                status = profile.get(half)
                if status and status["result"] == "success":
                    assert status["statistics"]["Passed"] > 0, (column.source, half, status)
            assert "Core tests succeeded" not in profile["summary"] or profile["core"]["statistics"]["Passed"]
        verdicts = yaml.safe_load(path.with_name(path.name.replace("-report.yaml", "-verdicts.yaml"))
                                  .read_text())
        for name, entry in verdicts["features"].items():
            if entry["verdict"] in ("passed", "partial"):
                assert entry["passed"] > 0, (column.source, name, entry)
            assert entry["verdict"] != "skipped", (column.source, name, entry)
            if rows[name][index] == "passed":
                assert entry["verdict"] == "passed" and entry["passed"] > 0, (column.source, name, entry)
