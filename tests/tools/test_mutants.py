"""tools/mutants.py without a suite run: its mutants are real changes, and the gateway it
starts imports the mutated copy, not this checkout's refgateway."""

from __future__ import annotations

import ast
import shutil

import pytest

from testkit.procs import ROOT
from tools import mutants


@pytest.fixture(scope="module")
def mutants_tool():
    return mutants


def test_every_mutant_compiles_and_differs_from_the_source(mutants_tool):
    file = "refgateway/_listeners.py"
    original = ast.unparse(ast.parse((ROOT / file).read_text()))
    found = mutants_tool.mutants(file, ["_uses_fallback", "_frontend_for_port"])
    assert len(found) > 10
    assert {m.function for m in found} == {"_uses_fallback", "_frontend_for_port"}
    for m in found:
        compile(m.source, file, "exec")
        assert m.source != original, f"{m.description} on line {m.line} changed nothing"
    assert len({m.source for m in found}) == len(found), "two mutants are the same change"


def test_the_gateway_imports_the_copy(mutants_tool, tmp_path):
    shutil.copytree(ROOT / "refgateway", tmp_path / "refgateway", ignore=shutil.ignore_patterns("__pycache__"))
    mutants_tool.check_copy_is_imported(tmp_path)  # raises SystemExit when it would not
    other = tmp_path / "empty"
    other.mkdir()
    with pytest.raises(SystemExit, match="not the mutated copy"):
        mutants_tool.check_copy_is_imported(other)


def test_groups_name_existing_functions_and_tests(mutants_tool):
    for name, (targets, tests) in mutants_tool.GROUPS.items():
        for target in targets:
            file, function = mutants_tool._split_target(target)
            mutants_tool.find_function(ast.parse((ROOT / file).read_text()), function)
        for test in tests:
            assert (ROOT / test).is_file(), f"group {name}: {test} does not exist"
