"""A failure reads once: the scenario's line, the message with its evidence, its feature; no PEM."""

from __future__ import annotations

import os
import re
from pathlib import Path
from testkit.child_run import refgateway_command, run_pytest

ROOT = Path(__file__).resolve().parents[2]


def run_failing(*args: str) -> str:
    command = refgateway_command(faults=["accept-any-client-cert"], system_ca_bundle=None)
    proc = run_pytest("mtls_conformance/scenarios/test_frontend_default.py", "-k", "untrusted and 8443 and TLSv1.3",
                      f"--gateway-command={command}", "--max-time-to-consistency=3", "-rf", *args, timeout=300,
                      env={**os.environ, "COLUMNS": "400"})  # the summary line is cut to the width
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stdout


def test_a_failure_is_short_and_names_its_feature():
    out = run_failing()
    failure = out.split(" FAILURES ", 1)[1]
    assert "BEGIN CERTIFICATE" not in out, "fixture values with PEM in the failure"
    assert "mtls_conformance/client.py" not in failure, "the harness's own frames in the default traceback"
    assert "mtls_conformance/scenarios/test_frontend_default.py:" in failure and "reproduce: curl " in failure
    assert "feature GatewayFrontendClientCertificateValidation" in failure
    assert "[feature GatewayFrontendClientCertificateValidation]" in out.split("short test summary", 1)[1]
    # The progress line while the failing check waits: which check, what it saw so far.
    assert re.search(r"\[mtls\] waiting up to 3 s for listener port 8443 .*the connection to be rejected; "
                     r"so far (got|the backend answered) HTTP 200 .*\(--max-time-to-consistency shortens this wait\)", out), out


def test_tb_long_still_gives_the_whole_traceback():
    out = run_failing("--tb=long")
    assert "mtls_conformance/client.py" in out.split(" FAILURES ", 1)[1]
    assert "BEGIN CERTIFICATE" not in out, "a Credential's repr must not carry its PEM"


def normalised_error_lines(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.startswith("E   ")]
    return [re.sub(r"\d+(\.\d+)?", "N", re.sub(r"/\S*/mtls-pki\d+/", "PKI/", line)) for line in lines]


def test_the_failure_example_in_docs_reports_is_what_a_run_prints():
    doc = (ROOT / "docs" / "reports.md").read_text().split("## Failure messages", 1)[1]
    example = doc.split("```", 2)[1]
    failure = run_failing().split(" FAILURES ", 1)[1].split(" verdicts per feature ", 1)[0]
    assert normalised_error_lines(example) == normalised_error_lines(failure), \
        "docs/reports.md 'Failure messages' differs from a real failure; paste the real one"
