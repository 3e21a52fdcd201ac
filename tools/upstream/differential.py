"""docs/differential.md: for every refgateway fault, the upstream suite's verdict per
TLS test beside ours per feature.

    python tools/upstream/differential.py                 # every fault, writes docs/differential.md
    python tools/upstream/differential.py --fault NAME    # rerun some rows of the last run
    python tools/upstream/differential.py --render        # only rewrite the doc from the last run
    python tools/upstream/differential.py --side ours     # one suite only; the other's columns are kept

Upstream: one throwaway API server tier (tools/upstream/run.py refgateway_tier) for the
whole run; per fault the refgateway controller is restarted with ``--fault NAME`` and the
suite's TLS tests run against it, one fault at a time. Ours: ``pytest mtls_conformance/scenarios`` (all of
it) against a local refgateway with the same fault, and the per-feature verdicts of its
``--report-dir``. The two suites share nothing, so our runs go on beside upstream's
(``--jobs`` of them at once, each with a refgateway of its own) instead of waiting for
the upstream run of the same fault: the wall time is about the longer of the two sides,
not their sum. The row "none" (no fault) must be all passed on both sides, or the table
says so at its top. Every row records the commit and the time each side ran at.

refgateway converges in milliseconds, so both suites run with shortened timeouts
(``UPSTREAM_TIMEOUTS``, ``tests/selfcheck/runner.py`` FAST); the no-fault row shows
they are long enough.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import fcntl
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from refgateway.faults import FAULTS
from testkit import upstream as run
from testkit.child_run import refgateway_command
from testkit.procs import ROOT, stop_process_group

UPSTREAM_TIMEOUTS = ("GatewayMustHaveAddress:30;GatewayMustHaveCondition:30;GatewayStatusMustHaveListeners:20;"
                     "GatewayListenersMustHaveConditions:20;HTTPRouteMustHaveCondition:20;RouteMustHaveParents:20;"
                     "LatestObservedGenerationSet:20;MaxTimeToConsistency:15;DefaultTestTimeout:30;"
                     "NamespacesMustBeReady:120")
OURS_FAST = ["--max-time-to-consistency=1", "--condition-timeout=5"]

#: Upstream feature names this table compares on; our features beyond them are listed too.
FEATURE_ORDER = (
    "Gateway", "HTTPRoute", "ReferenceGrant",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "BackendTLSPolicy", "BackendTLSPolicySANValidation", "GatewayBackendClientCertificate",
)


def provenance() -> dict:
    """When and on which commit a side of a row ran (a dirty tree says so)."""
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    # What this command writes itself is not a change to the code that ran.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!reports/differential", ":!docs/differential.md"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    commit = (head.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    return {"commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")}


#: Our suite's runs under way: ended (SIGTERM, as Ctrl-C would) when the command is
#: interrupted, since the worker threads that wait for them cannot be.
RUNNING: set[subprocess.Popen] = set()
#: Set when the command is interrupted: a run ended by it is no verdict and is not recorded.
STOPPING = threading.Event()


#: The scenario modules' folder, relative to the checkout (our runs' working directory).
SCENARIOS = "mtls_conformance/scenarios"


def scenario_modules(fault: str | None, scope: str) -> list[str]:
    """What of scenarios/ our run of this fault runs: all of it, or (scope "expected") the
    modules in which tests/selfcheck/expected_failures.py expects the fault to fail. The
    selfcheck (tests/selfcheck/test_faults.py) runs the whole suite under every fault and
    fails if any test outside that list fails, so the other modules can only pass: leaving
    them out changes which features read "untested", never which ones catch the fault. The
    no-fault row always runs everything."""
    if scope == "all" or fault is None:
        return [SCENARIOS]
    from tests.selfcheck.expected_failures import EXPECTED_FAILURES

    return sorted({f"{SCENARIOS}/" + pattern.split("::", 1)[0] for pattern in EXPECTED_FAILURES[fault]})


def ours(fault: str | None, workdir: Path, scope: str = "all") -> tuple[dict[str, str], dict]:
    """feature -> verdict of our scenarios against a local refgateway with this fault, and
    what ran: the modules, the failed tests, and how they compare with the selfcheck's
    expected failures for the fault."""
    workdir.mkdir(parents=True, exist_ok=True)
    report_dir = workdir / "ours"
    modules = scenario_modules(fault, scope)
    argv = [sys.executable, "-m", "pytest", *modules, "-p", "no:cacheprovider", "-p", "no:randomly", "-q",
            f"--report-dir={report_dir}", *OURS_FAST]
    if fault:
        argv.append(f"--gateway-command={refgateway_command(faults=[fault])}")
    with open(workdir / "ours.log", "w") as log:
        # A session of its own: ending it ends the local refgateway it started too.
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        RUNNING.add(proc)
        try:
            proc.wait(timeout=1800)
        finally:
            RUNNING.discard(proc)
            stop_process_group(proc)  # the run's whole session: pytest and what it started
    # Recorded relative to the scenarios folder, "scenarios" for all of it (as differential.json has it).
    ran = {"modules": ["scenarios" if m == SCENARIOS else m.removeprefix(f"{SCENARIOS}/") for m in modules]}
    found = sorted(report_dir.glob("*-verdicts.yaml"))
    if not found:
        return {"(no report)": "error"}, ran
    doc = yaml.safe_load(found[0].read_text())
    outcomes = {f"{nodeid.split('::', 1)[0]}.py::{nodeid.split('::', 1)[1]}": t["outcome"]
                for nodeid, t in (doc.get("tests") or {}).items()}
    ran["failed"] = sorted(n for n, o in outcomes.items() if o == "failed")
    from tests.selfcheck.expected_failures import EXPECTED_FAILURES, OPT_IN
    from tests.selfcheck.runner import judge_fault_run

    if fault:
        verdict = judge_fault_run(EXPECTED_FAILURES.get(fault, []), outcomes, OPT_IN)
        ran["not_as_expected"] = {"missed": list(verdict.missed), "unexpected": list(verdict.unexpected)}
    else:
        ran["not_as_expected"] = {"missed": [], "unexpected": ran["failed"]}
    return {name: f["verdict"] for name, f in doc["features"].items()}, ran


def upstream(tier, fault: str | None, workdir: Path, cache: Path) -> dict:
    cluster, kubelet, start_controller = tier
    workdir.mkdir(parents=True, exist_ok=True)
    start_controller(*([fault] if fault else []), log_name="refgateway.log")
    errors_before = len(kubelet.errors)
    result = run.run_suite(cache, cluster.kubeconfig, "refgateway", list(run.REFGATEWAY_FEATURES), workdir,
                           run.TLS_TESTS, UPSTREAM_TIMEOUTS)
    # As in run.py: an environment problem must never read as the gateway's verdict.
    result.disagreements += [f"stand-in kubelet: {e}" for e in kubelet.errors[errors_before:]]
    return result.as_dict()


def short(verdict: str) -> str:
    return {"passed": "pass", "failed": "**FAIL**", "skipped": "skip", "not run": "not run",
            "disputed": "**disputed**", "partial": "partial", "unsupported": "unsupp.",
            "untested": "untested"}.get(verdict, verdict)


def render(rows: dict[str, dict], features: list[str]) -> str:
    tests = list(run.TLS_TESTS)
    out = ["# Differential: upstream Gateway API conformance (v1.7.0) beside this suite, per refgateway fault",
           "",
           "Generated by `python tools/upstream/differential.py` (do not edit by hand). For each",
           "`python -m refgateway --list-faults` fault: **upstream** = `sigs.k8s.io/gateway-api/conformance`",
           "v1.7.0's TLS tests against refgateway as a controller on the API server tier (verdict = `go test`",
           "`-test.v` line, cross-checked with the exit status and the ConformanceReport, tools/upstream/run.py);",
           "**ours** = `pytest mtls_conformance/scenarios` (every module) against local refgateway, per-feature verdicts of",
           "`--report-dir`.",
           f"Upstream timeouts: `{UPSTREAM_TIMEOUTS}`; ours: `{' '.join(OURS_FAST)}`.",
           "",
           "Columns: `caught` = some verdict on that side is not pass. A fault *upstream catches and we",
           "miss* would be a bug in this suite; *we catch and upstream misses* names an upstream gap",
           "(analysis: docs/upstream.md).",
           "",
           "## Summary", "",
           "| fault | upstream caught by | we caught in features | who catches |",
           "|---|---|---|---|"]
    for fault, row in rows.items():
        up = row.get("upstream", {}).get("verdicts", {})
        up_caught = [t for t in tests if up.get(t) != "passed"]
        our_caught = [f for f in features if row.get("ours", {}).get(f) in ("failed", "error")]
        who = ("both" if up_caught and our_caught else "upstream only" if up_caught
               else "ours only" if our_caught else "neither")
        if fault == "none":
            who = "baseline: must be neither" + ("" if who == "neither" else f" — **{who}!**")
        elif who == "upstream only":
            who = "**upstream only**"
        out.append(f"| `{fault}` | {', '.join(up_caught) or '-'} | {', '.join(our_caught) or '-'} | {who} |")
    out += ["", "## Upstream, per test", "",
            "| fault | " + " | ".join(t.replace("BackendTLSPolicy", "BTP·").replace("Gateway", "Gw·")
                                     .replace("ClientCertificate", "ClientCert") for t in tests) + " | exit | s |",
            "|---|" + "---|" * (len(tests) + 2)]
    for fault, row in rows.items():
        up = row.get("upstream")
        if up is None:
            out.append(f"| `{fault}` | " + " | ".join("not run" for _ in tests) + " | - | - |")
            continue
        out.append(f"| `{fault}` | " + " | ".join(short(up["verdicts"].get(t, "?")) for t in tests)
                   + f" | {up['exit_code']} | {up['seconds']:.0f} |")
    out += ["", "## Ours, per feature", "",
            "`ran`: `all` = all of mtls_conformance/scenarios/; otherwise the number of modules run (`--ours-scope expected`:",
            "those in which tests/selfcheck/expected_failures.py expects the fault to fail; the selfcheck",
            "shows every other module passes under it, so their features read `untested` here, not `pass`).",
            "",
            "| fault | " + " | ".join(features) + " | ran | s |", "|---|" + "---|" * (len(features) + 2)]
    for fault, row in rows.items():
        run_ = row.get("ours_run", {})
        modules = run_.get("modules")
        ran = "all" if modules in (None, ["scenarios"]) else str(len(modules))
        out.append(f"| `{fault}` | " + " | ".join(short(row.get("ours", {}).get(f, "not run")) for f in features)
                   + f" | {ran} | {run_.get('seconds', '-')} |")
    off = [(f, kind, n) for f, row in rows.items()
           for kind, nodes in row.get("ours_run", {}).get("not_as_expected", {}).items() for n in nodes]
    out += ["", "## Ours beside the selfcheck's expected failures", "",
            "Per row, the failed tests compared with tests/selfcheck/expected_failures.py (rows of runs that",
            "recorded them).", ""]
    out += [f"- `{f}`: {kind} `{n}`" for f, kind, n in off] or [
        "Every recorded row failed exactly the expected tests among those it ran."]
    dis = [(f, d) for f, row in rows.items() for d in row.get("upstream", {}).get("disagreements", [])]
    out += ["", "## Upstream's three sources (exit status, -test.v, report) disagreeing", ""]
    out += [f"- `{f}`: {d}" for f, d in dis] or ["None: in every run the exit status, the per-test lines and "
                                                  "the report said the same."]
    out += ["", "## When each side ran", ""]
    runs: dict[tuple[str, str], list[str]] = {}
    for fault, row in rows.items():
        for side, stamp in (("upstream", row.get("upstream", {})), ("ours", row.get("ours_run", {}))):
            key = (side, stamp.get("commit", "not recorded"))
            runs.setdefault(key, []).append(stamp.get("date", "?"))
    out += ["| side | commit | rows | from | to |", "|---|---|---|---|---|"]
    for (side, commit), dates in sorted(runs.items()):
        out.append(f"| {side} | `{commit}` | {len(dates)} | {min(dates)} | {max(dates)} |")
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/upstream/differential.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--fault", action="append", default=[],
                   help="only these faults ('none': no fault); their rows replace those of the last run")
    p.add_argument("--side", choices=("both", "ours", "upstream"), default="both",
                   help="run only one suite; the other suite's columns are kept from the last run")
    p.add_argument("--jobs", type=int, default=2,
                   help="our suite's runs at once, each against its own local refgateway (default 2); "
                        "upstream's runs are one at a time on the one tier")
    p.add_argument("--ours-scope", choices=("all", "expected"), default="all",
                   help="our runs: all of scenarios/, or only the modules where the selfcheck expects the "
                        "fault to fail (faster; the other features then read 'untested'; 'none' runs all)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "differential.md")
    p.add_argument("--raw", type=Path, default=ROOT / "reports" / "differential",
                   help="where the per-fault JSON (both sides) goes, written after every run")
    p.add_argument("--render", action="store_true",
                   help="run nothing: render the doc from the JSON of an earlier run")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: give 1 or more")
    run.exit_on_sigterm()
    raw = args.raw / "differential.json"
    everything = ["none", *sorted(FAULTS)]
    if args.render:
        return write(json.loads(raw.read_text()), args, everything)
    faults = args.fault or everything
    unknown = sorted(set(faults) - set(everything))
    if unknown:
        p.error(f"unknown fault(s) {', '.join(unknown)}: see python -m refgateway --list-faults")
    sides = ("ours", "upstream") if args.side == "both" else (args.side,)
    work = Path(tempfile.mkdtemp(prefix="differential-"))
    args.raw.mkdir(parents=True, exist_ok=True)
    # A partial run (some faults, or one side) replaces its own cells and keeps the others;
    # a full run starts from nothing.
    partial = bool(args.fault) or args.side != "both"
    lock = threading.Lock()
    t0 = time.monotonic()

    def record(fault: str | None = None, cells: dict | None = None, *, reset: bool = False) -> dict:
        """Write cells of one row into the JSON on disk, re-read under a file lock: two
        partial runs (``--side ours`` and ``--side upstream``) may fill one file at once."""
        with lock, open(raw.with_suffix(".lock"), "w") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)
            rows = json.loads(raw.read_text()) if raw.exists() and not reset else {}
            # A row of a fault that no longer exists would be a claim about nothing.
            rows = {f: r for f, r in rows.items() if f in everything}
            if fault:
                rows.setdefault(fault, {}).update(cells or {})
            tmp = raw.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=1, sort_keys=True))
            tmp.replace(raw)
        if fault:
            said = {side: value.get("verdicts", value) for side, value in (cells or {}).items()}
            print(f"[differential] {fault}: {said} ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
        return rows

    if not partial:
        record(reset=True)  # a full run starts from nothing, not from the last run's rows

    def our_row(fault: str) -> None:
        stamp, started = provenance(), time.monotonic()
        verdicts, ran = ours(None if fault == "none" else fault, work / fault, args.ours_scope)
        if STOPPING.is_set():
            return
        record(fault, {"ours": verdicts, "ours_run": {**stamp, **ran, "scope": args.ours_scope,
                                                      "seconds": round(time.monotonic() - started)}})

    pool = concurrent.futures.ThreadPoolExecutor(args.jobs)
    try:
        pending = [pool.submit(our_row, f) for f in faults] if "ours" in sides else []
        if "upstream" in sides:
            cache = run.build()
            with run.refgateway_tier(cache, work) as tier:
                for fault in faults:
                    stamp = provenance()
                    result = upstream(tier, None if fault == "none" else fault, work / fault / "upstream", cache)
                    record(fault, {"upstream": {**result, **stamp}})
        for future in pending:
            future.result()  # an exception in a run of ours ends the command, after the others
    finally:
        # Interrupted (or failed): no new run of ours starts, and the ones under way end.
        STOPPING.set()
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(RUNNING):
            stop_process_group(proc)  # the run's whole session: pytest and what it started
        pool.shutdown(wait=True)
    return write(record(), args, everything)


def write(rows: dict[str, dict], args, everything: list[str]) -> int:
    """Render; the doc is only rewritten when every fault has both sides."""
    rows = {f: rows[f] for f in everything if f in rows}  # the order of --list-faults' sort
    missing = [f for f in everything if not {"ours", "upstream"} <= set(rows.get(f, {}))]
    features = list(FEATURE_ORDER) + sorted({f for r in rows.values() for f in r.get("ours", {})}
                                            - set(FEATURE_ORDER))
    text = render(rows, features)
    if missing:
        print(text)
        print(f"[differential] {args.out} not rewritten: no complete row for {', '.join(missing)}",
              file=sys.stderr)
        return 1
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
