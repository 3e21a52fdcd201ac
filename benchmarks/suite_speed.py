"""The scenario suite's own speed: wall time at -n 0 and -n 2, and per test the harness's
time beside the gateway's convergence time.

    python benchmarks/suite_speed.py [--rounds 2] [--baseline CHECKOUT] [-- extra pytest args]

Runs alternate (-n 0, -n 2, ...) so both see the same machine load. The -n 0 runs also
record, per test, the harness's time (setup to teardown, benchmarks/_test_windows.py)
and the gateway's convergence time: the sum, over every configuration refgateway
applied during the test, of the time from the newest manifest write to the applied
configuration (refgateway logs "configuration applied at T: X ms after the newest
change"; the run's --gateway-command is the bundled one with its output also copied to
a file). Target (issue 14): harness <= 2x convergence. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPLIED = re.compile(r"configuration applied at ([0-9.]+): ([0-9.]+) ms after the newest change")


def run(workers: int, extra: list[str], tmp: Path | None, root: Path = ROOT, python: str = sys.executable) -> float:
    """One run of ``root``'s suite with ``python`` (another checkout and its venv: --baseline)."""
    argv = [python, "-m", "pytest", "mtls_conformance/scenarios", "-q", "-p", "no:cacheprovider", "-n", str(workers)]
    env = dict(os.environ)
    if tmp is not None:
        log = tmp / "gateway.log"
        command = (f"{shlex.quote(python)} -m refgateway --config-dir {{config_dir}} --state-dir {{state_dir}} "
                   "--system-ca-bundle {system_ca_bundle}")
        argv += ["-p", "_test_windows", "--gateway-command",
                 f"sh -c {shlex.quote(f'{command} 2>&1 | tee -a {shlex.quote(str(log))}')}"]
        env["SUITE_SPEED_WINDOWS"] = str(tmp / "windows.jsonl")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    proc = subprocess.run([*argv, *extra], cwd=root, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"pytest -n {workers} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return elapsed


def per_test(tmp: Path) -> list[tuple[str, float, float]]:
    """(nodeid, harness seconds, convergence seconds) per test."""
    applied = [(float(m.group(1)), float(m.group(2)) / 1000)
               for m in APPLIED.finditer((tmp / "gateway.log").read_text(errors="replace"))]
    out = []
    for line in (tmp / "windows.jsonl").read_text().splitlines():
        w = json.loads(line)
        conv = sum(lat for at, lat in applied if w["start"] <= at <= w["end"])
        out.append((w["nodeid"], w["end"] - w["start"], conv))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--show", type=int, default=10, help="tests listed with the highest ratio")
    parser.add_argument("extra", nargs="*", help="extra pytest arguments (after --)")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also run another checkout (with its own .venv) at -n 0, alternating with this one, "
                             "and compare the two side by side (no -n 2 runs then)")
    args = parser.parse_args(argv)
    if args.baseline:
        return compare(args)
    times: dict[int, list[float]] = {0: [], 2: []}
    tests: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="suite-speed-") as tmp:
            times[0].append(run(0, args.extra, Path(tmp)))
            for nodeid, harness, conv in per_test(Path(tmp)):
                tests.setdefault(nodeid, []).append((harness, conv))
        times[2].append(run(2, args.extra, None))
    for workers, values in times.items():
        print(f"-n {workers}: median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"speed-up of -n 2 over -n 0: {statistics.median(times[0]) / statistics.median(times[2]):.2f}x")
    report(tests, args.rounds, args.show)


def compare(args: argparse.Namespace) -> None:
    """This checkout and ``--baseline`` at -n 0, alternating round by round (the same load)."""
    python = args.baseline.resolve() / ".venv" / "bin" / "python"
    if not python.exists():
        sys.exit(f"--baseline {args.baseline}: no .venv/bin/python there (python3 -m venv .venv && "
                 f".venv/bin/pip install -e '.[dev]')")
    sides = {"baseline": (args.baseline.resolve(), str(python)), "this": (ROOT, sys.executable)}
    times: dict[str, list[float]] = {side: [] for side in sides}
    tests: dict[str, dict[str, list[tuple[float, float]]]] = {side: {} for side in sides}
    for _ in range(args.rounds):
        for side, (root, side_python) in sides.items():
            with tempfile.TemporaryDirectory(prefix="suite-speed-") as tmp:
                load = os.getloadavg()[0]
                times[side].append(run(0, args.extra, Path(tmp), root, side_python))
                print(f"{side}: {times[side][-1]:.1f} s (load average {load:.1f} at the start)", flush=True)
                for nodeid, harness, conv in per_test(Path(tmp)):
                    tests[side].setdefault(nodeid, []).append((harness, conv))
    for side, (root, _) in sides.items():
        print(f"\n== {side} ({root}): -n 0 median {statistics.median(times[side]):.2f} s "
              f"({', '.join(f'{v:.2f}' for v in times[side])})")
        report(tests[side], args.rounds, args.show)


def report(tests: dict[str, list[tuple[float, float]]], rounds: int, show: int) -> None:
    rows = []
    for nodeid, samples in tests.items():
        harness = statistics.median(h for h, _ in samples)
        conv = statistics.median(c for _, c in samples)
        rows.append((harness / conv if conv else float("inf"), nodeid, harness, conv))
    with_conv = [r for r in rows if r[3] > 0]
    total_h = sum(r[2] for r in with_conv)
    total_c = sum(r[3] for r in with_conv)
    met = sum(1 for r in with_conv if r[0] <= 2)
    print(f"\nper test (-n 0, median of {rounds} runs): harness time / gateway convergence time")
    print(f"  tests that changed the configuration: {len(with_conv)} of {len(rows)}; "
          f"harness <= 2x convergence in {met}")
    if with_conv:
        print(f"  median ratio {statistics.median(r[0] for r in with_conv):.1f}x; "
              f"sums: harness {total_h:.1f} s, convergence {total_c:.1f} s ({total_h / total_c:.1f}x)")
    print("  highest ratios:")
    for ratio, nodeid, harness, conv in sorted(with_conv, reverse=True)[:show]:
        print(f"    {ratio:6.1f}x  harness {harness:6.2f} s  convergence {conv:6.3f} s  {nodeid}")
    without = [r for r in rows if r[3] == 0]
    if without:
        print(f"  {len(without)} tests applied no configuration while they ran (their Gateway came from a "
              f"shared fixture), e.g. {without[0][1]}")


if __name__ == "__main__":
    main()
