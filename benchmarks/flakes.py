"""Run the scenario suite several times and list every test whose result changed.

    python benchmarks/flakes.py --runs 20 --tier both --output benchmarks/flakes-YYYY-MM-DD.md

Each run is the whole suite as CI and users run it: at ``-n 2`` against the bundled
gateway on the local target, and/or through the kubernetes target on the API server tier
(a real kube-apiserver + etcd, refgateway as its controller, backends as local processes
in a network namespace; needs root and the build of tools/apiserver); ``--tier node`` runs
it as README command 2's node run does (tests/node/test_refgateway_on_node.py): one node
cluster (testkit.nodecluster: kube-apiserver, kubelet, containerd; root and tools/node's
build), refgateway deployed from deploy/refgateway, backends as Deployments, every probe
through kubectl port-forward, one worker. Each tier's cluster is started once for all its
rounds. A test is a flake when its outcome (passed, failed, skipped) is not the same in
every run; a run that collects nothing, or ends with an error of the run itself, stops
the script. The exit status is 1 when anything changed, so CI can run a small number of rounds.

``--load N`` runs the rounds on a loaded machine, as CI on a busy submitting machine
does: N CPU burners (busy Python loops, one core each) run beside the suite from the
first round to the last, each bounded by ``--load-seconds`` and stopped by this script.
The report records the load average seen at each run's start and end.

``--keep DIR`` keeps each run's JUnit XML and output (and the tier's controller log), to
trace a changed result with. ``--with-edge-benchmark`` runs benchmarks/edge_vs_nginx.py
once after the rounds, with the burners stopped (its ratios are timing, which the burners
would only distort), and puts its medians and ratios into the report: issue 21's "no
regression" of refgateway's data plane beside nginx, in the flake script's report.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from testkit.child_run import parse_junit

REFGATEWAY_CONTROLLER = "mtls-conformance.dev/refgateway"


#: A CPU burner: busy for at most the given seconds, then it exits on its own (bounded even
#: if this script is killed before it can stop it).
BURNER = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def burners(count: int, seconds: float) -> Iterator[None]:
    """``count`` CPU-bound processes beside the runs, stopped (by pid) when the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", BURNER, str(seconds)], stdin=subprocess.DEVNULL)
             for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def code_commit() -> str:
    """The commit the runs ran (and whether the work tree differed from it)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return (head.stdout.strip() or "unknown (not a git clone)") + (" with uncommitted changes" if dirty else "")


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


#: One line per run (outcomes, time, load), for the report.
RUN_LINES: list[str] = []


@dataclasses.dataclass
class Suite:
    """How a tier's rounds run the suite: its options, xdist workers (-n) and environment."""
    args: list[str]
    workers: str = "2"
    env: dict[str, str] | None = None


def run_suite(workdir: Path, suite: Suite, extra: list[str], index: int) -> dict[str, str]:
    junit = workdir / f"run-{index}.xml"
    argv = [sys.executable, "-m", "pytest", "mtls_conformance/scenarios", "-q", "-p", "no:cacheprovider",
            "-n", suite.workers, f"--junitxml={junit}", *suite.args, *extra]
    start = time.monotonic()
    load_before = load()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=suite.env)
    (workdir / f"run-{index}.log").write_text(proc.stdout + proc.stderr)
    outcomes = parse_junit(junit)[0] if junit.exists() else {}
    if not outcomes or proc.returncode not in (0, 1):
        sys.exit(f"run {index} ended with exit status {proc.returncode} and {len(outcomes)} results:\n"
                 f"{(proc.stdout + proc.stderr)[-3000:]}")
    line = (f"run {index}: {dict(collections.Counter(outcomes.values()))} in {time.monotonic() - start:.0f} s, "
            f"load average (1/5/15 min) {load_before} at the start, {load()} at the end")
    print(f"  {line}", flush=True)
    RUN_LINES.append(line)
    return outcomes


@contextlib.contextmanager
def local_tier(workdir: Path) -> Iterator[Suite]:
    yield Suite([])


@contextlib.contextmanager
def apiserver_tier(workdir: Path) -> Iterator[Suite]:
    """A fresh API server with refgateway as its controller, for all the rounds."""
    from testkit.testcluster import TestCluster
    from kubernetes import dynamic

    with TestCluster() as cluster:
        system_ca_bundle = workdir / "system-ca-bundle.pem"
        log = open(workdir / "controller.log", "wb")
        controller = subprocess.Popen(
            [sys.executable, "-m", "refgateway", "controller", "--kubeconfig", str(cluster.kubeconfig),
             "--log-level", "WARNING", "--system-ca-bundle", str(system_ca_bundle)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            dyn = dynamic.DynamicClient(cluster.api_client())
            dyn.resources.get(api_version="gateway.networking.k8s.io/v1", kind="GatewayClass").server_side_apply(
                {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                 "metadata": {"name": "refgateway"}, "spec": {"controllerName": REFGATEWAY_CONTROLLER}},
                field_manager="flakes")
            yield Suite(["-p", "testkit.testhost", "--gateway-class=refgateway", f"--kubeconfig={cluster.kubeconfig}",
                         "--backend-mode=local-process", f"--system-ca-bundle={system_ca_bundle}"])
        finally:
            controller.terminate()
            controller.wait(timeout=10)
            log.close()


#: How long the node tier waits for another node cluster on this machine (one at a time: a
#: file lock) to stop: a CI run's node tier holds it for about a quarter of an hour.
NODE_LOCK_WAIT = 3600


@contextlib.contextmanager
def node_tier(workdir: Path) -> Iterator[Suite]:
    """One node cluster with refgateway deployed as users deploy it, for all the rounds; the
    suite runs as README command 2's node run does (testkit.node_refgateway: deployment
    backends, every probe through kubectl port-forward, one worker)."""
    from testkit import node_refgateway, nodecluster

    if nodecluster.prerequisites():
        sys.exit("the node tier cannot run on this machine: it lacks " + "; ".join(nodecluster.prerequisites()))
    if nodecluster.LOCK_HOLDER.exists():
        print(f"  another node cluster runs; waiting up to {NODE_LOCK_WAIT} s for it to stop: "
              f"{nodecluster.lock_holder()}", flush=True)
    with nodecluster.NodeCluster(lock_wait=NODE_LOCK_WAIT) as node:
        pod = node_refgateway.start_refgateway(node)
        try:
            yield Suite(node_refgateway.suite_options(node), workers="0", env=node_refgateway.suite_env(node))
        finally:
            log = node_refgateway.kubectl(node, "-n", "refgateway-system", "logs", pod["metadata"]["name"], check=False)
            (workdir / "refgateway.log").write_text(log.stdout + log.stderr)


TIERS = {"local": local_tier, "apiserver": apiserver_tier, "node": node_tier}
#: --tier both: the two tiers it has always meant (the node tier is asked for by name).
BOTH = ("local", "apiserver")


@contextlib.contextmanager
def workdir(keep: Path | None, tier: str) -> Iterator[Path]:
    """Where a tier's runs write their files: kept under ``keep`` if given, else temporary."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="mtls-flakes-") as tmp:
            yield Path(tmp)
    else:
        (keep / tier).mkdir(parents=True, exist_ok=True)
        yield keep / tier


#: --with-edge-benchmark's rounds: short, a check for a regression, not the committed measurement.
EDGE_ROUNDS = 3


def edge_benchmark(load_note: str) -> list[str]:
    """benchmarks/edge_vs_nginx.py once (refgateway's data plane beside nginx, issue 21's
    "no regression"): its medians and ratios as report lines, or why it did not finish."""
    print(f"edge benchmark: benchmarks/edge_vs_nginx.py --rounds {EDGE_ROUNDS} ({load_note})", flush=True)
    load_before = load()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "benchmarks/edge_vs_nginx.py", "--rounds", str(EDGE_ROUNDS)],
                          cwd=ROOT, capture_output=True, text=True)
    took = (f"in {time.monotonic() - start:.0f} s, load average (1/5/15 min) {load_before} at the start, "
            f"{load()} at the end; {load_note}")
    lines = ["## refgateway beside nginx (benchmarks/edge_vs_nginx.py)", "",
             f"`python benchmarks/edge_vs_nginx.py --rounds {EDGE_ROUNDS}`, after the rounds, {took}.", ""]
    if proc.returncode != 0:
        print(proc.stdout[-3000:] + proc.stderr[-3000:])
        return lines + [f"It ended with exit status {proc.returncode}; no result. Its output ends:", "", "```",
                        (proc.stdout + proc.stderr)[-3000:].strip(), "```", ""]
    # What it prints after its per-round lines: the medians and the ratios.
    summary = proc.stdout.rsplit("\n\n", 1)[-1].strip()
    print(summary)
    return lines + ["```", summary, "```", ""]


#: Set by SIGUSR1 (``kill -USR1 PID``): the run under way finishes, no other starts (once
#: two have run), and the report says how many of those asked for ran. Not Ctrl-C: that
#: would cut a run short, leaving its gateways and port-forwards to the cluster's teardown.
STOP_EARLY = False


def stop_early(*_) -> None:
    global STOP_EARLY
    STOP_EARLY = True
    print("  SIGUSR1: no run starts after the one under way", flush=True)


def changed(runs: list[dict[str, str]]) -> dict[str, list[str]]:
    """Tests whose outcome differs between runs (missing from a run counts as 'absent')."""
    nodeids = sorted(set().union(*runs))
    return {n: [r.get(n, "absent") for r in runs] for n in nodeids if len({r.get(n, "absent") for r in runs}) > 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tier", choices=[*TIERS, "both"], default="local")
    parser.add_argument("--output", type=Path, help="also write the result as Markdown to this file")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="run N CPU burners beside the runs (a loaded machine; CI runs 2)")
    parser.add_argument("--load-seconds", type=float, default=4 * 3600, metavar="S",
                        help="each burner stops by itself after S seconds (default 4 h)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep every run's JUnit XML and output (and the tier's logs) in DIR, one "
                             "subdirectory per tier, instead of a temporary directory: what a changed "
                             "result is traced with")
    parser.add_argument("--with-edge-benchmark", action="store_true",
                        help=f"after the rounds (their burners stopped), run benchmarks/edge_vs_nginx.py "
                             f"--rounds {EDGE_ROUNDS} once and add its medians and ratios to the report")
    parser.add_argument("extra", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGUSR1, stop_early)
    if args.runs < 2:
        parser.error("--runs must be at least 2: a flake is a difference between runs")
    lines = [f"# Flake check, {datetime.date.today().isoformat()}", "",
             f"`python benchmarks/flakes.py {shlex.join(sys.argv[1:] if argv is None else argv)}`", "",
             f"Code: {code_commit()}.", ""]
    if args.load < 0:
        parser.error("--load must be 0 or more")
    flaky = False
    loaded = f", {args.load} CPU burners beside them" if args.load else ""
    for tier in (BOTH if args.tier == "both" else [args.tier]):
        print(f"{tier}: {args.runs} runs of the scenario suite{loaded}", flush=True)
        with workdir(args.keep, tier) as tmp, TIERS[tier](tmp) as suite, burners(args.load, args.load_seconds):
            runs = []
            while len(runs) < args.runs and not (len(runs) >= 2 and STOP_EARLY):
                runs.append(run_suite(tmp, suite, args.extra, len(runs) + 1))
        diff = changed(runs)
        flaky |= bool(diff)
        totals = collections.Counter(runs[0].values())
        done = f"{len(runs)} runs" if len(runs) == args.runs else \
            f"{len(runs)} of the {args.runs} runs asked for (stopped early by SIGUSR1)"
        summary = (f"{tier}: {done}{loaded}, {len(runs[0])} tests each "
                   f"({', '.join(f'{v} {k}' for k, v in sorted(totals.items()))} in the first), "
                   f"{len(diff)} changed")
        print(summary)
        lines += [f"## {tier}", "", summary + ".", "", *(f"- {line}" for line in RUN_LINES), ""]
        RUN_LINES.clear()
        for nodeid, outcomes in diff.items():
            print(f"  {nodeid}: {' '.join(outcomes)}")
            lines.append(f"- `{nodeid}`: {' '.join(outcomes)}")
        lines.append("")
    if args.with_edge_benchmark:
        lines += edge_benchmark(f"the {args.load} CPU burners had stopped with the rounds" if args.load
                                else "no CPU burners")
    if args.output:
        args.output.write_text("\n".join(lines))
    return 1 if flaky else 0


if __name__ == "__main__":
    sys.exit(main())
