"""Time to verdict on a broken gateway: per refgateway fault, the run against the fault
beside the same run against the correct refgateway, with default timing.

    nice -n 5 python benchmarks/fault_speed.py [--fault NAME ...] [--first NAME ...] [--whole-suite] [--jobs 2] \
        [--output benchmarks/fault-speed-YYYY-MM-DD.md]

Each run is the self-check's own (tests/selfcheck/runner.py ``run_suite``: a child
pytest, ``-n 0``, the bundled gateway with ``--fault``), with the default timing a user
gets (``--max-time-to-consistency=30 --condition-timeout=60``, overriding the
self-check's short ones). Per fault it runs the scenario modules the fault must make
fail (tests/selfcheck/expected_failures.py; ``--whole-suite``: all of them), first
against the correct gateway, then against the fault, one after the other so both see
about the same machine load. The correct run does not depend on the fault: it is made
once per set of modules, before the first broken run that needs it, and the faults of
the same modules reuse it (their rows say so). ``--jobs 2`` measures two faults at once:
every child, correct or broken, then runs beside one other child. Target (issue 21): broken <= 2 x correct + one consistency window.
A fault whose run fails other tests than it should, or misses some, is marked: its time
is not a measurement of an honest verdict. Prints the table as it goes and writes it as
Markdown with the machine's load; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime
import os
import sys
import tempfile
import threading
import time
from pathlib import Path


from tests.selfcheck.expected_failures import EXPECTED_FAILURES
from tests.selfcheck.runner import judge_fault_run, run_suite

WINDOW = 30.0  # the default --max-time-to-consistency
CONDITION_TIMEOUT = 60.0  # the default --condition-timeout: the window of a status wait
DEFAULT_TIMING = [f"--max-time-to-consistency={WINDOW:g}", f"--condition-timeout={CONDITION_TIMEOUT:g}"]


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


def slowest_first(faults: list[str]) -> list[str]:
    """Most modules first, then most expected failures: the runs that take longest."""
    return sorted(faults, key=lambda f: (-len(modules_of(f)), -len(EXPECTED_FAILURES[f]), f))


@dataclasses.dataclass
class Correct:
    """One run against the correct refgateway of a set of modules, shared by every fault
    that must fail exactly those modules: the correct gateway's run does not depend on
    the fault, so it is measured once, right before the first broken run that needs it."""

    seconds: float
    load: str
    beside: str  # the fault whose broken run followed it
    failed: list[str]


class Measure:
    def __init__(self, tmp: Path, whole_suite: bool) -> None:
        self.tmp = tmp
        self.whole_suite = whole_suite
        self.correct: dict[tuple[str, ...], Correct] = {}
        self.locks: dict[tuple[str, ...], threading.Lock] = collections.defaultdict(threading.Lock)
        self.guard = threading.Lock()

    def correct_run(self, fault: str, only: list[str]) -> tuple[Correct, bool]:
        key = tuple(only)
        with self.guard:
            lock = self.locks[key]
        with lock:  # a second fault of the same modules waits for the first's correct run
            if key in self.correct:
                return self.correct[key], True
            before = load()
            seconds, run = timed(self.tmp / fault / "correct", only=only)
            self.correct[key] = Correct(seconds, before, fault, sorted(run.with_outcome("failed")))
            return self.correct[key], False

    def row(self, fault: str) -> tuple[str, bool]:
        only = [] if self.whole_suite else modules_of(fault)
        correct, reused = self.correct_run(fault, only)
        before = load()
        broken, run = timed(self.tmp / fault / "broken", fault, only=only)
        verdict = judge_fault_run(EXPECTED_FAILURES[fault], run.outcomes)
        notes = []
        if correct.failed:
            notes.append(f"correct run failed {len(correct.failed)} tests, e.g. {correct.failed[0]}")
        if not verdict.exact:
            notes.append(f"**not the expected failures**: {len(verdict.missed)} missed, "
                         f"{len(verdict.unexpected)} unexpected, {len(verdict.stale)} patterns matched nothing")
        notes.append(f"{len(run.with_outcome('failed'))} failed, {len(run.with_outcome('passed'))} passed")
        if reused:
            notes.append(f"correct run shared with {correct.beside}")
        within = broken <= 2 * correct.seconds + WINDOW
        within_status = broken <= 2 * correct.seconds + CONDITION_TIMEOUT
        return (f"| {fault} | {'all' if not only else len(only)} | {correct.seconds:.0f} | {broken:.0f} | "
                f"{broken / correct.seconds:.1f}x | {'yes' if within else '**no**'} | "
                f"{'yes' if within_status else '**no**'} | {correct.load} | {before} | {'; '.join(notes)} |",
                within and verdict.exact)


HEADER = ["| fault | modules | correct s | broken s | ratio | within 2x + 30 s | within 2x + 60 s "
          "| load at the correct run (1/5/15 min) | load at the broken run | note |",
          "|---|---|---|---|---|---|---|---|---|---|"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault", action="append", default=[],
                        help="measure only these (repeatable), in this order; default: every fault, slowest first")
    parser.add_argument("--first", action="append", default=[],
                        help="measure these first (repeatable), then the others")
    parser.add_argument("--fastest-first", action="store_true",
                        help="the others fewest modules first (default: most modules first)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows --output already has (from an earlier run of this script) and "
                             "measure only the other faults")
    parser.add_argument("--whole-suite", action="store_true",
                        help="run every scenario module per fault, not only those the fault must fail")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=1,
                        help="faults measured at once (2: each child runs beside one other, the correct "
                             "run as the broken one; the load columns say what the machine carried)")
    parser.add_argument("--output", type=Path, help="write the table as Markdown here")
    args = parser.parse_args(argv)
    faults = args.fault or slowest_first(list(EXPECTED_FAILURES))
    if args.fastest_first:
        faults = faults[::-1]
    faults = args.first + [f for f in faults if f not in args.first]
    unknown = [f for f in faults if f not in EXPECTED_FAILURES]
    if unknown:
        parser.error(f"no expected failures for {', '.join(unknown)} (tests/selfcheck/expected_failures.py)")
    rows: dict[str, tuple[str, bool]] = {}
    commands: list[str] = []
    if args.resume and args.output and args.output.exists():
        commands, rows = read(args.output)
    command = " ".join(["benchmarks/fault_speed.py", *(argv if argv is not None else sys.argv[1:])])
    commands.append(f"`python {command}` ({args.jobs} fault(s) at a time, from {load_now()})")
    faults = [f for f in faults if f not in rows]
    measured = list(rows)
    print("\n".join(HEADER), flush=True)
    with tempfile.TemporaryDirectory(prefix="fault-speed-") as tmp, \
            concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        measure = Measure(Path(tmp), args.whole_suite)
        pending = {pool.submit(measure.row, fault): fault for fault in faults}
        try:
            for done in concurrent.futures.as_completed(pending):
                rows[pending[done]] = done.result()
                measured.append(pending[done])
                print(rows[pending[done]][0], flush=True)
                if args.output:  # after every fault: an interrupted run still leaves what it measured
                    write(args.output, commands, rows, measured)
        except KeyboardInterrupt:
            for future in pending:
                future.cancel()
            raise
    return 0


def load_now() -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc):%H:%M} UTC, load {load()}"


def write(path: Path, commands: list[str], rows: dict[str, tuple[str, bool]], measured: list[str]) -> None:
    missing = [f for f in EXPECTED_FAILURES if f not in rows]
    within = sum(rows[f][1] for f in measured)
    text = [f"# Time to verdict per fault, {datetime.date.today().isoformat()}", "",
            f"At nice 5, `-n 0`, default timing (window {WINDOW:g} s, condition timeout {CONDITION_TIMEOUT:g} s). "
            f"Target: broken <= 2 x correct + {WINDOW:g} s. Rows in the order measured, by:", "",
            *(f"- {c}" for c in commands), "",
            f"**Measured {len(measured)} of {len(EXPECTED_FAILURES)} faults**; {within} within 2 x correct + "
            f"{WINDOW:g} s with exactly their expected failures. Not measured: {', '.join(missing) or 'none'}.", "",
            *HEADER, *(rows[f][0] for f in measured), ""]
    path.write_text("\n".join(text))


def read(path: Path) -> tuple[list[str], dict[str, tuple[str, bool]]]:
    """The commands and rows an earlier run wrote (``write``), for --resume."""
    commands, rows = [], {}
    for line in path.read_text().splitlines():
        if line.startswith("- `python benchmarks/fault_speed.py"):
            commands.append(line[2:])
        elif line.startswith("`python benchmarks/fault_speed.py"):  # one command, as the first version wrote it
            commands.append(line.split(" at nice", 1)[0])
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in EXPECTED_FAILURES:
            rows[cells[0]] = (line, cells[5] == "yes" and "not the expected failures" not in line)
    return commands, rows


if __name__ == "__main__":
    sys.exit(main())
