"""docs/refgateway.md's fault table is `python -m refgateway --list-faults`, row for row, and
its "acts in" column names the functions that test each fault.

Faults are added often (each is a deviation a real implementation could ship); the table
is regenerated from the list and the code, never written by hand: a failure prints the
table to paste.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from refgateway import faults

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "refgateway"


def listed_faults() -> list[tuple[str, str]]:
    out = subprocess.run([sys.executable, "-m", "refgateway", "--list-faults"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [tuple(re.split(r"\s{2,}", line.strip(), maxsplit=1)) for line in out.splitlines() if line.strip()]


def documented_faults() -> list[tuple[str, str, str]]:
    doc = (ROOT / "docs" / "refgateway.md").read_text()
    section = doc.split("\n## Faults\n", 1)[1].split("\n## ", 1)[0]
    return [(m.group(1), m.group(2).strip(), m.group(3).strip())
            for m in re.finditer(r"^\| `([a-z0-9-]+)` \|([^|]*)\|([^|]*)\|$", section, re.M)]


def fault_constants() -> dict[str, str]:
    """constant name -> fault name, as refgateway/faults.py defines them."""
    return {name: value for name, value in vars(faults).items()
            if name.isupper() and isinstance(value, str) and value in faults.FAULTS}


def functions_naming_faults(source: str, constants: Mapping[str, str]) -> dict[str, list[str]]:
    """fault -> the functions of a module that name its constant, in source order.

    A method is ``Class.method``; a nested function counts as the function it is in. A
    module-level table of faults (``_RULE_FAULTS = {IGNORE_PATH_LENGTH: ...}``) counts as
    the functions that read it, or as itself when none does.
    """
    def named(node: ast.AST) -> set[str]:
        return {constants[n.id] for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in constants}

    def reads(node: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}

    functions: list[tuple[str, ast.AST]] = []
    tables: dict[str, set[str]] = {}
    for stmt in ast.parse(source).body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append((stmt.name, stmt))
        elif isinstance(stmt, ast.ClassDef):
            for inner in stmt.body:
                functions.append((f"{stmt.name}.{inner.name}" if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef))
                                  else stmt.name, inner))
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and named(stmt):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            tables.update({t.id: named(stmt) for t in targets if isinstance(t, ast.Name)})
        elif named(stmt):
            functions.append(("(module level)", stmt))
    found: dict[str, list[str]] = {}
    unread = dict(tables)
    for name, node in functions:
        used = reads(node)
        for fault in named(node).union(*(tables[t] for t in used & tables.keys())):
            if name not in found.setdefault(fault, []):
                found[fault].append(name)
        for table in used:
            unread.pop(table, None)
    for table, table_faults in unread.items():
        for fault in table_faults:
            found.setdefault(fault, []).append(table)
    return found


def acts_in() -> dict[str, str]:
    """fault -> its "acts in" cell: `_module.py` `function`, ...; `_other.py` `...`."""
    constants = fault_constants()
    cells: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "faults.py":
            continue
        for fault, names in functions_naming_faults(path.read_text(), constants).items():
            cells.setdefault(fault, []).append(f"`{path.name}` " + ", ".join(f"`{n}`" for n in names))
    return {fault: "; ".join(parts) for fault, parts in cells.items()}


def markdown(rows: list[tuple[str, str, str]]) -> str:
    return "\n".join(["| fault | deviation | acts in |", "|---|---|---|",
                      *(f"| `{n}` | {d} | {a} |" for n, d, a in rows)])


def test_fault_table_is_the_list_faults_output_and_the_code():
    listed = listed_faults()
    assert listed and all(len(row) == 2 for row in listed), listed
    where = acts_in()
    expected = [(name, text, where.get(name, "")) for name, text in listed]
    assert documented_faults() == expected, (
        "docs/refgateway.md's fault table differs from `python -m refgateway --list-faults` and the "
        "functions that name each fault's constant; replace the table under '## Faults' with:\n\n"
        + markdown(expected))


def test_every_fault_acts_somewhere():
    where = acts_in()
    idle = [name for name in faults.FAULTS if not where.get(name)]
    assert not idle, f"faults whose constant no refgateway function names (they change nothing): {idle}"


def test_acts_in_follows_methods_nested_functions_and_tables():
    constants = {"A": "fault-a", "B": "fault-b", "C": "fault-c", "D": "fault-d"}
    source = '''
from .faults import A, B, C, D
TABLE = {B: 1}
UNREAD = frozenset({D})
def top(faults):
    def inner():
        return A in faults
    return inner
class Gateway:
    def apply(self):
        return TABLE.get(next(iter(self.faults)))
    def other(self):
        return C in self.faults or A in self.faults
'''
    assert functions_naming_faults(source, constants) == {
        "fault-a": ["top", "Gateway.other"], "fault-b": ["Gateway.apply"],
        "fault-c": ["Gateway.other"], "fault-d": ["UNREAD"]}
