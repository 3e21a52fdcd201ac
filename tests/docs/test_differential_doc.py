"""docs/differential.md (issue 13): every refgateway fault has both suites' verdicts, no
fault is caught by upstream alone, and the doc is what tools/upstream/differential.py
renders from the committed JSON (reports/differential/differential.json), not a hand edit.

Running the two suites per fault takes most of an hour (tox -e upstream); these checks
only read what that run committed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "differential.md"
RAW = ROOT / "reports" / "differential" / "differential.json"


def faults() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "refgateway", "--list-faults"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def summary_rows() -> dict[str, str]:
    """fault -> its 'who catches' cell, from the doc's summary table."""
    rows = {}
    for line in DOC.read_text().split("## Upstream, per test")[0].splitlines():
        m = re.match(r"^\| `([^`]+)` \|.*\| ([^|]+) \|$", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def test_every_fault_has_both_suites_verdicts():
    rows = json.loads(RAW.read_text())
    missing = {f: sorted({"ours", "upstream"} - set(rows.get(f, {}))) for f in ["none", *faults()]}
    missing = {f: sides for f, sides in missing.items() if sides}
    assert not missing, ("faults without both sides in reports/differential/differential.json "
                         f"(run python tools/upstream/differential.py --fault NAME): {missing}")
    assert set(summary_rows()) == {"none", *faults()}


def test_no_fault_is_caught_by_upstream_alone_and_the_baseline_by_nobody():
    rows = summary_rows()
    assert rows.get("none") == "baseline: must be neither", rows.get("none")
    upstream_only = sorted(f for f, who in rows.items() if "upstream only" in who)
    assert not upstream_only, f"upstream catches these faults and this suite does not: {upstream_only}"


def test_the_doc_is_rendered_from_the_committed_json(tmp_path):
    out = tmp_path / "differential.md"
    proc = subprocess.run([sys.executable, "tools/upstream/differential.py", "--render", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_text() == DOC.read_text(), "docs/differential.md differs from its rendering: re-render it"
