"""Every dependency in pyproject.toml is used by the code that ships, and the README says why.

A dependency nobody imports is weight a vendor installs for nothing (httpx was one); one
the code imports but pyproject.toml does not declare breaks an install from the wheel.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("mtls_conformance", "refgateway")

#: Distribution name -> the module the code imports. pytest-xdist is a pytest plugin the
#: code never imports: it is used through its hooks (pytest_xdist_*, workerinput).
IMPORT_NAME = {"pytest": "pytest", "pytest-xdist": "xdist", "trustme": "trustme",
               "cryptography": "cryptography", "pyOpenSSL": "OpenSSL", "allure-pytest": "allure",
               "kubernetes": "kubernetes", "PyYAML": "yaml", "h11": "h11", "h2": "h2"}
USED_THROUGH_HOOKS = {"xdist": r"pytest_xdist_\w+|workerinput"}
#: Modules of a declared dependency's own dependencies, used only together with it.
PART_OF = {"urllib3": "kubernetes",  # the kubernetes client's HTTP layer: its exceptions
           "_pytest": "pytest"}  # pytest's own rootdir search (plugin.py)


def declared() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.match(r"[A-Za-z0-9_.-]+", spec).group(0) for spec in project["dependencies"]]


def shipped_source() -> str:
    return "\n".join(p.read_text() for top in SHIPPED for p in sorted((ROOT / top).rglob("*.py")))


def test_every_declared_dependency_is_used_by_shipped_code():
    source = shipped_source()
    unknown = [d for d in declared() if d not in IMPORT_NAME]
    assert not unknown, f"add the import name of {unknown} to IMPORT_NAME (or drop them from pyproject.toml)"
    unused = []
    for dist in declared():
        module = IMPORT_NAME[dist]
        pattern = USED_THROUGH_HOOKS.get(module) or \
            rf"^\s*(import|from) {module}\b|import_module\(\"{module}\"\)"
        if not re.search(pattern, source, re.M):
            unused.append(dist)
    assert not unused, f"declared in pyproject.toml but used by no shipped module: {unused}"


def test_every_third_party_import_is_declared():
    imported = set()
    for top in SHIPPED:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    imported.add(node.module.split(".")[0])
    ours = set(SHIPPED)
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    third_party = {PART_OF.get(name, name) for name in imported - ours - stdlib}
    undeclared = sorted(third_party - {IMPORT_NAME[d] for d in declared() if d in IMPORT_NAME})
    assert not undeclared, f"imported by shipped code but not declared in pyproject.toml: {undeclared}"


def test_readme_says_what_each_dependency_is_for():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Dependencies", 1)[-1].split("\n## ", 1)[0]
    assert section != readme, "README.md has no 'Dependencies' section"
    missing = [d for d in declared() if not re.search(rf"^- `{re.escape(d)}`", section, re.M)]
    assert not missing, f"README 'Dependencies' does not say what these are for: {missing}"


def imported_modules(folder: str, *, leave_out: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Every absolute module name each file of ``folder`` imports (lazy imports included),
    but for the files under its subfolders ``leave_out``."""
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        if any((ROOT / folder / sub) in path.parents for sub in leave_out):
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_layers_import_one_way():
    # fixtures/ and scenarios/ build on the harness; the harness never imports them
    # (it did: target.py and kubernetes.py took the echo server from fixtures/).
    # refgateway is tested only through the network and the API: it imports neither.
    forbidden = {"mtls_conformance": ("mtls_conformance.fixtures", "mtls_conformance.scenarios"),
                 "mtls_conformance/fixtures": ("mtls_conformance.scenarios",),
                 "refgateway": ("mtls_conformance",)}
    wrong = [f"{path} imports {name}" for folder, prefixes in forbidden.items()
             for path, names in imported_modules(folder, leave_out=("fixtures", "scenarios")).items()
             for name in names
             if any(name == p or name.startswith(p + ".") for p in prefixes)]
    assert not wrong, wrong
