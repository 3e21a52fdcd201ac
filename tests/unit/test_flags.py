"""The upstream suite's flag spellings: the same meaning here, or one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtls_conformance.flags import parse_timeouts
from testkit.child_run import run_pytest

ROOT = Path(__file__).resolve().parents[2]


def test_timeout_overrides_in_upstreams_format():
    assert parse_timeouts("MaxTimeToConsistency:60;RequestTimeout:15") == {
        "max_time_to_consistency": 60.0, "request_timeout": 15.0}
    # Every status wait of upstream is our one condition timeout: the longest wins.
    assert parse_timeouts("GatewayMustHaveCondition:90; GWCMustBeAccepted:120;") == {"condition_timeout": 120.0}
    assert parse_timeouts("DeleteTimeout:30") == {}, "upstream fields with no wait here change nothing"


@pytest.mark.parametrize("bad", ["MaxTimeToConsistency", "MaxTimeToConsistency:soon", "MaxTimeToConsistency:0",
                                 "Consistency:60"])
def test_timeout_overrides_refuse_what_upstream_would_skip_silently(bad):
    with pytest.raises(pytest.UsageError, match="--timeout-config-overrides"):
        parse_timeouts(bad)


def test_a_run_with_upstreams_flags_writes_their_values_in_the_report(tmp_path):
    report = tmp_path / "report.yaml"
    proc = run_pytest(
        "mtls_conformance/scenarios/test_frontend_default.py", "-q",
        "--organization=Acme", "--project=acme-gw", "--url=https://acme.example", "--contact=@acme,@ops",
        "--implementation-version=v9", "--mode=default", "--conformance-profiles=GATEWAY-HTTP",
        "--timeout-config-overrides=MaxTimeToConsistency:20;RequestTimeout:5",
        "--cleanup-base-resources=false", f"--report-output={report}", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    implementation = yaml.safe_load(report.read_text())["implementation"]
    assert implementation == {"organization": "Acme", "project": "acme-gw", "url": "https://acme.example",
                              "version": "v9", "contact": ["@acme", "@ops"]}
    assert "--keep-objects=always: the local target cannot keep objects" in proc.stdout + proc.stderr
