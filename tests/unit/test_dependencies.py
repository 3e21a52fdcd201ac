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


# -- the shape of the tree ----------------------------------------------------------------
#: Every folder of Python the repository holds: product, tests, tools, benchmarks.
TREE = ("mtls_conformance", "refgateway", "testkit", "tests", "tools", "benchmarks", "examples")
#: A product module longer than this does more than one job (issue 22: _kube.py did six).
MAX_PRODUCT_LINES = 700


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _executed_imports(tree: ast.AST):
    """Every import statement that can run: at the top, inside functions and classes, but
    not under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of this repository it imports (lazy imports included)."""
    files = {_module_name(p): p for top in TREE for p in sorted((ROOT / top).rglob("*.py"))}
    files.update({_module_name(p): p for p in ROOT.glob("*.py")})
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _executed_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
            # the most specific name that is a module here: a.b.c (a module) or a.b (c is a name in it)
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circles():
    # A circle (outputs <-> plugin, refgateway._cli <-> _kube, both through imports inside
    # functions) means two modules that cannot be read, tested or split one without the other.
    graph = import_graph()
    assert "mtls_conformance.plugin" in graph and graph["mtls_conformance.plugin"], "the graph found no imports"
    assert not _cycles(graph), f"import circles: {_cycles(graph)}"


def test_the_circle_check_sees_lazy_and_relative_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    # The circles this test was written for, had they come back, are edges it sees.
    graph = import_graph()
    assert "refgateway._kube" in graph["refgateway._cli"]  # a lazy import inside controller_main
    assert "mtls_conformance.outputs" in graph["mtls_conformance.plugin"]


def test_no_product_module_does_too_many_jobs():
    long = {str(p.relative_to(ROOT)): n for top in SHIPPED for p in sorted((ROOT / top).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_PRODUCT_LINES}
    assert not long, f"product modules over {MAX_PRODUCT_LINES} lines (split them along a seam): {long}"


def test_the_public_api_is_declared_and_the_scenarios_keep_to_it():
    """Each public module declares ``__all__`` (names that exist); the scenarios, the
    examples a vendor's tests copy, import only those names of those modules."""
    import importlib

    import mtls_conformance

    public = {f"mtls_conformance.{name}" for name in mtls_conformance.PUBLIC_MODULES}
    for name in sorted(public):
        module = importlib.import_module(name)
        assert isinstance(getattr(module, "__all__", None), list), f"{name} declares no __all__"
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names what it does not have: {missing}"
    outside = []
    for path in sorted((ROOT / "mtls_conformance" / "scenarios").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module.startswith("mtls_conformance"):
                for alias in node.names:
                    if node.module == "mtls_conformance":  # from mtls_conformance import manifests
                        ok = f"mtls_conformance.{alias.name}" in public
                    else:
                        ok = node.module in public and alias.name in importlib.import_module(node.module).__all__
                    if not ok:
                        outside.append(f"{path.name}: from {node.module} import {alias.name}")
    assert not outside, f"scenarios import what is not public API: {outside}"


def test_pytest_internals_are_in_one_place_and_the_range_is_bounded():
    """The plugin uses pytest's private rootdir search in one place (plugin.py, with its
    reason); a private API may change in any release, so the runtime range has an upper
    bound (pyproject.toml says which releases CI runs)."""
    users = sorted({str(p.relative_to(ROOT)) for top in SHIPPED for p in (ROOT / top).rglob("*.py")
                    if re.search(r"\b_pytest\b|\._(rootpath|inipath|inicfg|nodeid)\b", p.read_text())})
    assert users == ["mtls_conformance/plugin.py"], users
    spec = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                if re.match(r"pytest\b(?!-)", d))
    assert re.fullmatch(r"pytest>=[\d.]+,<[\d.]+", spec), f"the runtime pytest range needs an upper bound: {spec}"
