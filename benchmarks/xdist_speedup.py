"""Wall time of the scenario suite at -n 0 and at -n 2, measured side by side.

    python benchmarks/xdist_speedup.py [--rounds 3] [-- extra pytest args]

Runs alternate (0, 2, 0, 2, ...) so that both see the same machine load; the ratio of
the medians is printed. Nothing is asserted: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from testkit.child_run import run_pytest


def run(workers: int, extra: list[str]) -> float:
    start = time.perf_counter()
    proc = run_pytest("mtls_conformance/scenarios", "-q", "-n", str(workers), *extra, timeout=None)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"pytest -n {workers} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    times: dict[int, list[float]] = {0: [], 2: []}
    for _ in range(args.rounds):
        for workers in (0, 2):
            times[workers].append(run(workers, args.extra))
    serial, parallel = statistics.median(times[0]), statistics.median(times[2])
    for workers, values in times.items():
        print(f"-n {workers}: median {statistics.median(values):.2f} s "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    print(f"speed-up of -n 2 over -n 0: {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
