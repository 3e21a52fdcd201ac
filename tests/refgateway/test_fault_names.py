"""Fault names are constants of refgateway/faults.py, and only that module spells them out.

Every other refgateway module tests ``CONSTANT in faults``: a search for the constant finds
every place a fault acts (docs/refgateway.md's fault table lists them), and a misspelt
name fails at import instead of turning a fault silently off.
"""

from __future__ import annotations

import ast
from pathlib import Path

from refgateway import faults

PACKAGE = Path(faults.__file__).parent


def constant_name(fault: str) -> str:
    return fault.upper().replace("-", "_")


def fault_literals(source: str) -> list[tuple[int, str]]:
    """(line, name) of every string literal in ``source`` that is exactly a fault name."""
    return sorted((node.lineno, node.value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in faults.FAULTS)


def test_every_fault_is_a_constant_of_its_own_name():
    constants = {name: value for name, value in vars(faults).items()
                 if name.isupper() and isinstance(value, str)}
    assert {constant_name(f): f for f in faults.FAULTS} == constants


def test_no_other_refgateway_module_spells_a_fault_name():
    modules = sorted(p for p in PACKAGE.glob("*.py") if p.name != "faults.py")
    assert len(modules) > 10, modules
    found = [f"refgateway/{p.name}:{line}: {name!r} (use faults.{constant_name(name)})"
             for p in modules for line, name in fault_literals(p.read_text())]
    assert not found, "fault names spelt out instead of imported from refgateway/faults.py:\n" + "\n".join(found)


def test_the_literal_check_sees_a_spelt_out_name():
    # The forms the refgateway modules used before the constants: a test, and a set of names.
    source = 'if "ignore-per-port" in faults:\n    pass\nRULES = {"ignore-path-length": 1}\n'
    assert fault_literals(source) == [(1, "ignore-per-port"), (3, "ignore-path-length")]
    # A docstring that mentions a fault in a sentence is not a name spelt out.
    assert fault_literals('"""Fault ``ignore-per-port``: the default applies."""') == []
