"""docs/refgateway.md's fault table is `python -m refgateway --list-faults`, row for row.

Faults are added often (each is a deviation a real implementation could ship); the table
is regenerated from the list, never written by hand: a failure prints the table to paste.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def listed_faults() -> list[tuple[str, str]]:
    out = subprocess.run([sys.executable, "-m", "refgateway", "--list-faults"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [tuple(re.split(r"\s{2,}", line.strip(), maxsplit=1)) for line in out.splitlines() if line.strip()]


def documented_faults() -> list[tuple[str, str]]:
    doc = (ROOT / "docs" / "refgateway.md").read_text()
    section = doc.split("\n## Faults\n", 1)[1].split("\n## ", 1)[0]
    return [(m.group(1), m.group(2).strip()) for m in re.finditer(r"^\| `([a-z0-9-]+)` \| (.*) \|$", section, re.M)]


def markdown(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| fault | deviation |", "|---|---|", *(f"| `{n}` | {d} |" for n, d in rows)])


def test_fault_table_is_the_list_faults_output():
    listed = listed_faults()
    assert listed and all(len(row) == 2 for row in listed), listed
    assert documented_faults() == listed, (
        "docs/refgateway.md's fault table differs from `python -m refgateway --list-faults`; "
        "replace the table under '## Faults' with:\n\n" + markdown(listed))
