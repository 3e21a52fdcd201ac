"""Mutation check of the reference gateway: does the scenario suite notice small bugs?

    python tools/mutants.py --limit 16 --output benchmarks/mutants-survivors.md

Each mutant is one small change to one function of refgateway (a comparison reversed, a
boolean operator swapped, a condition negated, a constant changed, a statement dropped,
a return value replaced by None), written into a copy of the refgateway package. The
scenario tests then run against a gateway started from that copy (``--gateway-command``
with that copy on PYTHONPATH; the harness itself never imports refgateway) and stop at
their first failure: a mutant is *killed* when some scenario fails (or the run hangs past
``--run-timeout``), and *survives* when every test passes. Survivors are the list to
read: each is an equivalent mutant (no observable difference) or a check the suite lacks.

Mutants come in groups (``GROUPS``: the functions of one area, and the scenario modules
that test it, so that a bounded run stays short); ``--target FILE:FUNCTION`` with
``--tests PATH`` runs an ad hoc group instead. Mutants are enumerated in source order and
``--limit`` takes an evenly spread subset per group, so a bounded run covers every
function given. Nothing is asserted: this is a measurement for a scheduled or manual run
(``tox -e mutants``). With ``--output``, the survivors are written as Markdown; the reason
a survivor was given in an earlier version of that file is kept when the same mutant
survives again, so a scheduled run's diff shows only what changed.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from testkit.child_run import refgateway_command
from testkit.procs import stop_process_group

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "refgateway"
FAST = ["--max-time-to-consistency=1", "--condition-timeout=5"]

# The two areas issue 14 names, and the data plane (issue 22: _core's listener choice,
# client-certificate verdict, identity headers and 421 judgement; _edge's forwarded headers
# and the backend pool's one retry), each with the scenario modules that exercise it.
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "frontend": (
        ["refgateway/_listeners.py:_check_listener_tls", "refgateway/_listeners.py:_resolve_ca_refs",
         "refgateway/_listeners.py:_frontend_for_port", "refgateway/_listeners.py:_uses_fallback",
         "refgateway/_plan.py:_parse_hash_pins"],
        ["mtls_conformance/scenarios/test_frontend_default.py", "mtls_conformance/scenarios/test_frontend_bad_client_certs.py",
         "mtls_conformance/scenarios/test_frontend_ca_sources.py", "mtls_conformance/scenarios/test_frontend_insecure_fallback.py",
         "mtls_conformance/scenarios/test_frontend_invalid_ca.py", "mtls_conformance/scenarios/test_frontend_per_port.py",
         "mtls_conformance/scenarios/test_frontend_pinning.py", "mtls_conformance/scenarios/test_frontend_pinning_without_validation.py",
         "mtls_conformance/scenarios/test_frontend_guide_steps.py",
         "mtls_conformance/scenarios/test_frontend_rotation.py", "mtls_conformance/scenarios/test_listener_certificates.py",
         "mtls_conformance/scenarios/test_cluster_trust_bundle.py"],
    ),
    "backend": (
        ["refgateway/_backend_tls.py:_client_certificate", "refgateway/_backend_tls.py:_policy_anchors",
         "refgateway/_backend_tls.py:_policy", "refgateway/_backend_tls.py:_backend_policies",
         "refgateway/_routes.py:tls_for"],
        ["mtls_conformance/scenarios/test_backend_client_certificate.py", "mtls_conformance/scenarios/test_backend_tls_external.py",
         "mtls_conformance/scenarios/test_backend_tls_guide_steps.py", "mtls_conformance/scenarios/test_backend_tls_in_cluster.py",
         "mtls_conformance/scenarios/test_backend_tls_policy_status.py", "mtls_conformance/scenarios/test_cluster_trust_bundle.py"],
    ),
    "edge": (
        ["refgateway/_core.py:choose_listener", "refgateway/_core.py:verify",
         "refgateway/_core.py:_record_identity", "refgateway/_core.py:_identity_headers",
         "refgateway/_core.py:_handle", "refgateway/_core_h2.py:_h2_dispatch",
         "refgateway/_edge.py:forward_headers", "refgateway/_edge.py:send"],
        ["mtls_conformance/scenarios/test_frontend_default.py", "mtls_conformance/scenarios/test_frontend_bad_client_certs.py",
         "mtls_conformance/scenarios/test_frontend_insecure_fallback.py", "mtls_conformance/scenarios/test_frontend_pinning.py",
         "mtls_conformance/scenarios/test_frontend_misdirected.py",
         "mtls_conformance/scenarios/test_frontend_misdirected_upstream.py",
         "mtls_conformance/scenarios/test_frontend_resumption.py"],
    ),
}

_FLIP_COMPARE = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
                 ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


@dataclasses.dataclass
class Mutant:
    file: str  # relative to ROOT
    function: str
    line: int
    col: int
    description: str
    code: str  # the source line mutated, stripped: with function and description, the mutant's identity
    source: str  # the whole mutated module


def mutation_sites(func: ast.AST) -> Iterator[tuple[ast.AST, str, Callable[[ast.AST], None]]]:
    """(node, description, apply) for every mutation of a node inside ``func``, in a fixed order."""
    for node in ast.walk(func):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _FLIP_COMPARE:
                    new = _FLIP_COMPARE[type(op)]

                    def apply(n, i=i, new=new):
                        n.ops[i] = new()
                    yield node, f"{type(op).__name__} -> {new.__name__}", apply
        elif isinstance(node, ast.BoolOp):
            other = ast.Or if isinstance(node.op, ast.And) else ast.And

            def apply(n, other=other):
                n.op = other()
            yield node, f"{type(node.op).__name__} -> {other.__name__}", apply
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            def apply(n):
                # `not not x`: the truthiness of x. (`+x` would raise TypeError on most
                # operands, a crash any test notices, not the mutation meant.)
                n.operand = ast.UnaryOp(op=ast.Not(), operand=n.operand)
            yield node, "not x -> x", apply
        elif isinstance(node, (ast.If, ast.While)):
            def apply(n):
                n.test = ast.UnaryOp(op=ast.Not(), operand=n.test)
            yield node, "condition negated", apply
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            def apply(n):
                n.value = not n.value
            yield node, f"{node.value} -> {not node.value}", apply
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            def apply(n):
                n.value = n.value + 1
            yield node, f"{node.value} -> {node.value + 1}", apply
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            def apply(n):
                n.value = ast.Constant(value=None)
            yield node, "return None", apply
    for parent in ast.walk(func):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(parent, field, None)
            if not isinstance(statements, list):
                continue
            for i, node in enumerate(statements):
                if isinstance(node, (ast.Expr, ast.Raise, ast.Assign, ast.AugAssign)) and not (
                        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # not docstrings
                    def apply(p, field=field, i=i):
                        getattr(p, field)[i] = ast.Pass()
                    # The statement, not its parent, is what the reader looks for.
                    yield node, f"{type(node).__name__.lower()} dropped", apply


def find_function(tree: ast.Module, name: str) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    raise SystemExit(f"no function {name!r} in the module")


def _sites_with_targets(func: ast.AST) -> list[tuple[ast.AST, str, Callable, ast.AST]]:
    """mutation_sites plus the node each apply() takes (the parent list's owner for drops)."""
    out = []
    parents = {}
    for parent in ast.walk(func):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(parent, field, None)
            for child in statements if isinstance(statements, list) else []:
                parents[id(child)] = parent
    for node, description, apply in mutation_sites(func):
        target = parents[id(node)] if description.endswith(" dropped") else node
        out.append((node, description, apply, target))
    return out


def mutants(file: str, functions: list[str]) -> list[Mutant]:
    source = (ROOT / file).read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    found = []
    for name in functions:
        for index, (node, description, _, _) in enumerate(_sites_with_targets(find_function(tree, name))):
            mutated = copy.deepcopy(tree)
            _, _, apply, target = _sites_with_targets(find_function(mutated, name))[index]
            apply(target)
            ast.fix_missing_locations(mutated)
            found.append(Mutant(file, name, node.lineno, node.col_offset + 1, description, lines[node.lineno - 1].strip(),
                                ast.unparse(mutated)))
    return found


def spread(items: list, limit: int | None) -> list:
    if not limit or limit >= len(items):
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def gateway_env(package_root: Path) -> list[str]:
    # PYTHONSAFEPATH: `python -m` would otherwise put the working directory (this checkout,
    # whose refgateway/ is unmutated) ahead of PYTHONPATH, and every mutant would survive.
    return ["env", "PYTHONSAFEPATH=1", f"PYTHONPATH={package_root}"]


def check_copy_is_imported(package_root: Path) -> None:
    probe = subprocess.run([*gateway_env(package_root), sys.executable, "-c",
                            "import refgateway; print(refgateway.__file__)"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(probe).is_relative_to(package_root):
        raise SystemExit(f"the gateway would import {probe}, not the mutated copy under {package_root}")


def run_suite(package_root: Path, tests: list[str], extra: list[str], timeout: float) -> tuple[bool, float, str]:
    """(passed, seconds, first failure) of the tests against the refgateway copy under package_root."""
    gateway = refgateway_command(prefix=gateway_env(package_root))
    argv = [sys.executable, "-m", "pytest", *tests, "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly",
            "-n", "2", f"--gateway-command={gateway}", *FAST, *extra]
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # A mutant that loops forever: interrupt the run like Ctrl-C (its teardown ends the
        # gateways it started), then kill what is left of its process group.
        stop_process_group(proc, first=signal.SIGINT, grace=60)
        proc.communicate()
        return False, time.monotonic() - start, f"TIMEOUT after {timeout:.0f} s"
    seconds = time.monotonic() - start
    first_failure = next((line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
    # -x under xdist ends a failing run as interrupted (exit 2, "stopping after N failures").
    stopped = proc.returncode == 2 and "stopping after" in out
    if proc.returncode not in (0, 1) and not stopped:
        raise SystemExit(f"the test run itself broke (exit {proc.returncode}):\n{out[-3000:]}")
    return proc.returncode == 0, seconds, first_failure


def _split_target(text: str) -> tuple[str, str]:
    file, sep, function = text.rpartition(":")
    path = (ROOT / file).resolve()
    if not sep or not file or not function or PACKAGE not in path.parents or not path.is_file():
        raise SystemExit(f"--target {text!r}: want FILE:FUNCTION with FILE a module of refgateway/, "
                         "e.g. refgateway/_listeners.py:_check_listener_tls")
    return str(path.relative_to(ROOT)), function


def previous_reasons(path: Path) -> dict[tuple[str, str, str], str]:
    """Reasons given in an earlier survivors file, keyed (function, mutation, code)."""
    reasons = {}
    if path.exists():
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if len(cells) == 6 and cells[0] not in ("group", "---"):
                _, function, _, description, code, reason = cells
                reasons[(function, description, code)] = reason
    return reasons


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", dest="groups", choices=sorted(GROUPS),
                        help="a predefined area (default: all of them)")
    parser.add_argument("--target", action="append", dest="targets", metavar="FILE:FUNCTION",
                        help="an ad hoc group instead: functions of refgateway to mutate")
    parser.add_argument("--tests", action="append", metavar="PATH",
                        help="with --target: the scenario tests to run (default: scenarios)")
    parser.add_argument("--limit", type=int, help="at most this many mutants per group, spread evenly")
    parser.add_argument("--line", type=int, action="append", dest="lines",
                        help="only mutants on this source line (to recheck a survivor)")
    parser.add_argument("--run-timeout", type=float, default=None,
                        help="seconds a test run may take before its mutant counts as killed (hung); "
                             "default: 3x the group's baseline run, at least 180")
    parser.add_argument("--nice", type=int, default=10, help="niceness for this run and its children")
    parser.add_argument("--list", action="store_true", help="only list the mutants that would run")
    parser.add_argument("--output", type=Path, help="write the survivors as Markdown here")
    parser.add_argument("extra", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    if args.targets and args.groups:
        parser.error("--target makes its own group; give --group or --target, not both")
    if args.tests and not args.targets:
        parser.error("--tests goes with --target (a --group has its own tests)")
    if args.targets:
        groups = {"ad hoc": (args.targets, args.tests or ["mtls_conformance/scenarios"])}
    else:
        groups = {name: GROUPS[name] for name in (args.groups or sorted(GROUPS))}

    plan: list[tuple[str, list[str], list[Mutant]]] = []
    available: dict[str, int] = {}
    for name, (targets, tests) in groups.items():
        by_file: dict[str, list[str]] = {}
        for file, function in map(_split_target, targets):
            by_file.setdefault(file, []).append(function)
        found = [m for file, functions in by_file.items() for m in mutants(file, functions)]
        if args.lines:
            found = [m for m in found if m.line in args.lines]
        plan.append((name, tests, spread(found, args.limit)))
        available[name] = len(found)
        print(f"group {name}: {len(found)} mutants of {len(targets)} functions, "
              f"{len(plan[-1][2])} chosen", flush=True)
    if args.list:
        for name, _, chosen in plan:
            for m in chosen:
                print(f"{name} {m.file}:{m.line} {m.function}: {m.description}: {m.code}")
        return 0

    os.nice(args.nice)
    started = time.monotonic()
    results: list[tuple[str, Mutant, bool, str]] = []  # (group, mutant, survived, first failure)
    baselines = {}
    with tempfile.TemporaryDirectory(prefix="mtls-mutants-") as tmp:
        copy_root = Path(tmp)
        shutil.copytree(PACKAGE, copy_root / "refgateway", ignore=shutil.ignore_patterns("__pycache__"))
        check_copy_is_imported(copy_root)

        def write(file: str, text: str) -> None:
            (copy_root / file).write_text(text)

        for name, tests, chosen in plan:
            files = sorted({m.file for m in chosen})
            for file in files:  # the same code, through the same printer as the mutants
                write(file, ast.unparse(ast.parse((ROOT / file).read_text())))
            passed, seconds, failure = run_suite(copy_root, tests, args.extra, timeout=3600)
            if not passed:
                raise SystemExit(f"group {name}: the unmutated copy does not pass its tests: {failure}")
            baselines[name] = seconds
            timeout = args.run_timeout or max(180.0, 3 * seconds)
            print(f"group {name}: baseline passed in {seconds:.0f} s", flush=True)
            for i, mutant in enumerate(chosen, 1):
                write(mutant.file, mutant.source)
                passed, seconds, failure = run_suite(copy_root, tests, args.extra, timeout)
                write(mutant.file, ast.unparse(ast.parse((ROOT / mutant.file).read_text())))
                verdict = "SURVIVED" if passed else "killed"
                print(f"[{name} {i}/{len(chosen)}] {mutant.file}:{mutant.line}:{mutant.col} {mutant.function} "
                      f"{mutant.description} `{mutant.code}`: {verdict} ({seconds:.0f} s) {failure}", flush=True)
                results.append((name, mutant, passed, failure))
    minutes = (time.monotonic() - started) / 60
    survivors = [(g, m) for g, m, survived, _ in results if survived]
    killed = len(results) - len(survivors)
    print(f"{len(results)} mutants: {killed} killed, {len(survivors)} survived ({minutes:.0f} min)")
    if args.output:
        reasons = previous_reasons(args.output)
        command = "python tools/mutants.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        lines = [f"# Surviving mutants of refgateway, {datetime.date.today().isoformat()}", "",
                 f"`{command}` ({minutes:.0f} min, nice {args.nice}, tests at -n 2 with -x and "
                 f"{' '.join(FAST)})", ""]
        for name, tests, chosen in plan:
            ran = [(m, s, f) for g, m, s, f in results if g == name]
            lines.append(f"- group {name}: {len(ran)} of its {available[name]} mutants, "
                         f"{sum(not s for _, s, _ in ran)} killed, "
                         f"{sum(s for _, s, _ in ran)} survived; baseline {baselines[name]:.0f} s; tests: "
                         + ", ".join(f"`{t}`" for t in tests))
        lines += ["", "| group | function | line | mutation | code | reason it survives |",
                  "|---|---|---|---|---|---|"]
        for g, m in survivors:
            reason = reasons.get((m.function, m.description, _cell(f"`{m.code}`")), "TODO")
            lines.append(f"| {g} | {m.function} | {m.file}:{m.line}:{m.col} | {m.description} | "
                         f"{_cell(f'`{m.code}`')} | {reason} |")
        lines += ["", "Killed (first failing test):", ""]
        for g, m, survived, failure in results:
            if not survived:
                where = re.sub(r"^(FAILED|ERROR) ", "", failure).split(" - ")[0] or "?"
                lines.append(f"- {m.file}:{m.line}:{m.col} {m.function} {m.description}: {where}")
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
