"""Time to verdict on a broken gateway: per refgateway fault, the run against the fault
beside the same run against the correct refgateway, with default timing.

    nice -n 5 python benchmarks/fault_speed.py [--fault NAME ...] [--whole-suite] \
        [--output benchmarks/fault-speed-YYYY-MM-DD.md]

Each run is the self-check's own (tests/selfcheck/runner.py ``run_suite``: a child
pytest, ``-n 0``, the bundled gateway with ``--fault``), with the default timing a user
gets (``--max-time-to-consistency=30 --condition-timeout=60``, overriding the
self-check's short ones). Per fault it runs the scenario modules the fault must make
fail (tests/selfcheck/expected_failures.py; ``--whole-suite``: all of them), first
against the correct gateway, then against the fault, one after the other so both see the
same machine load. Target (issue 21): broken <= 2 x correct + one consistency window.
A fault whose run fails other tests than it should, or misses some, is marked: its time
is not a measurement of an honest verdict. Prints the table as it goes and writes it as
Markdown with the machine's load; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path


from tests.selfcheck.expected_failures import EXPECTED_FAILURES
from tests.selfcheck.runner import judge_fault_run, run_suite

WINDOW = 30.0  # the default --max-time-to-consistency
DEFAULT_TIMING = [f"--max-time-to-consistency={WINDOW:g}", "--condition-timeout=60"]


def modules_of(fault: str) -> list[str]:
    return sorted({pattern.split("::", 1)[0] for pattern in EXPECTED_FAILURES[fault]})


def timed(workdir: Path, *faults: str, only: list[str]) -> tuple[float, object]:
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    run = run_suite(workdir, *faults, args=DEFAULT_TIMING, only=only, timeout=7200)
    return time.monotonic() - start, run


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault", action="append", default=[], help="measure only these (repeatable)")
    parser.add_argument("--whole-suite", action="store_true",
                        help="run every scenario module per fault, not only those the fault must fail")
    parser.add_argument("--output", type=Path, help="write the table as Markdown here")
    args = parser.parse_args(argv)
    faults = args.fault or list(EXPECTED_FAILURES)
    unknown = [f for f in faults if f not in EXPECTED_FAILURES]
    if unknown:
        parser.error(f"no expected failures for {', '.join(unknown)} (tests/selfcheck/expected_failures.py)")
    rows: list[str] = []
    header = ["| fault | modules | correct s | broken s | ratio | within 2x + window | load (1/5/15 min) | note |",
              "|---|---|---|---|---|---|---|---|"]
    print("\n".join(header), flush=True)
    with tempfile.TemporaryDirectory(prefix="fault-speed-") as tmp:
        for fault in faults:
            only = [] if args.whole_suite else modules_of(fault)
            before = load()
            # The correct run right before the broken one: the same modules, about the same load.
            correct, correct_run = timed(Path(tmp, fault, "correct"), only=only)
            correct_failed = sorted(correct_run.with_outcome("failed"))
            broken, run = timed(Path(tmp, fault, "broken"), fault, only=only)
            verdict = judge_fault_run(EXPECTED_FAILURES[fault], run.outcomes)
            notes = []
            if correct_failed:
                notes.append(f"correct run failed {len(correct_failed)} tests, e.g. {correct_failed[0]}")
            if verdict.missed or verdict.unexpected:
                notes.append(f"not the expected failures: {len(verdict.missed)} missed, "
                             f"{len(verdict.unexpected)} unexpected")
            notes.append(f"{len(run.with_outcome('failed'))} failed, {len(run.with_outcome('passed'))} passed")
            within = broken <= 2 * correct + WINDOW
            row = (f"| {fault} | {'all' if not only else len(only)} | {correct:.0f} | {broken:.0f} | "
                   f"{broken / correct:.1f}x | {'yes' if within else '**no**'} | {before} | {'; '.join(notes)} |")
            rows.append(row)
            print(row, flush=True)
            if args.output:  # after every fault: an interrupted run still leaves what it measured
                write(args.output, argv, header, rows, faults[:len(rows)])
    return 0


def write(path: Path, argv: list[str] | None, header: list[str], rows: list[str], measured: list[str]) -> None:
    command = " ".join(["benchmarks/fault_speed.py", *(argv if argv is not None else sys.argv[1:])])
    text = [f"# Time to verdict per fault, {datetime.date.today().isoformat()}", "",
            f"`python {command}` at nice 5, `-n 0`, default timing (window {WINDOW:g} s). Target: broken <= "
            f"2 x correct + {WINDOW:g} s.", "",
            f"Measured {len(measured)} of {len(EXPECTED_FAILURES)} faults: {', '.join(measured)}.", "",
            *header, *rows, ""]
    path.write_text("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
