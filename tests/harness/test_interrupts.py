"""A run stopped by Ctrl-C or SIGTERM at any point leaves nothing behind.

Each case starts the scenario suite against the local target in a child pytest (as a
user runs it, with and without xdist), sends SIGINT or SIGTERM to its process group (what
a terminal's Ctrl-C and CI's ``timeout`` do) at one point of the run, and then looks for
what the run could have left: processes (the tag every descendant inherits), listening
sockets of those processes, and files in the run's own TMPDIR (gateway config and state
directories, nginx directories, key files). pytest's base temporary directory is kept on
purpose (the PKI's files, 0600, for reproducing a failure by hand) and is checked for that.
The API server tier has its own cases in tests/cluster/test_kubernetes_target.py.
"""

from __future__ import annotations

import os
import random
import re
import signal
import stat
import time
from pathlib import Path

import pytest

from testkit.child_run import Child, refgateway_command
from testkit.procs import wait_until

pytestmark = pytest.mark.xdist_group("interrupts")  # each case runs a suite; keep them on one worker

#: Long waits, so that the run is certainly inside one when the signal comes: every
#: negative of test_frontend_default.py waits out its 60 s under this fault.
WAITING = ["mtls_conformance/scenarios/test_frontend_default.py", "--max-time-to-consistency=60",
           f"--gateway-command={refgateway_command(faults=['accept-any-client-cert'])}"]
QUICK = ["mtls_conformance/scenarios/test_frontend_default.py", "-k", "valid_client_certificate_is_accepted"]


def tagged_gateways(child: Child) -> list[str]:
    return [p for p in child.processes() if "refgateway" in p]


def wait_until_in(child: Child, predicate, what: str) -> None:
    # Polling /proc for a process to appear: nothing to wait on instead.
    wait_until(predicate, timeout=60, what=what, interval=0.01,
               alive=lambda: None if child.proc.poll() is None else f"the run ended; output:\n{child.output}")


def at_gateway_start(child: Child, rng: random.Random) -> None:
    wait_until_in(child, lambda: tagged_gateways(child), "the gateway process start")


def in_a_wait(child: Child, rng: random.Random) -> None:
    child.read_until(r"\[mtls( gw\d+)?\] waiting up to 60 s", timeout=60)


def at_a_random_moment(child: Child, rng: random.Random) -> None:
    wait_until_in(child, lambda: tagged_gateways(child), "the gateway process start")
    time.sleep(rng.uniform(0.0, 3.0))  # the point of the case: wherever the run happens to be


def in_the_teardown(child: Child, rng: random.Random) -> None:
    wait_until_in(child, lambda: tagged_gateways(child), "the gateway process start")
    wait_until_in(child, lambda: not tagged_gateways(child), "the gateway being stopped")


POINTS = {"gateway start": (at_gateway_start, WAITING), "a wait": (in_a_wait, WAITING),
          "a random moment": (at_a_random_moment, WAITING), "teardown": (in_the_teardown, QUICK)}


def leftovers(child: Child, tmpdir: Path, basetemp: Path) -> list[str]:
    # A child ended by the kernel when its parent died (the last resort) may take a moment.
    deadline = time.monotonic() + 5
    while child.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    found = [f"process {p}" for p in child.processes()]
    found += [f"file {p}" for p in sorted(tmpdir.rglob("*"))]
    for path in basetemp.rglob("*"):
        if path.is_file() and path.read_bytes().lstrip().startswith(b"-----BEGIN PRIVATE KEY"):
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode != 0o600:
                found.append(f"key file {path} with mode {oct(mode)}")
    return found


@pytest.mark.parametrize("workers", ["-n0", "-n2"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", list(POINTS))
def test_interrupted_run_leaves_nothing_behind(point, sig, workers, tmp_path, request):
    seed = int.from_bytes(os.urandom(4), "big")
    request.node.user_properties.append(("seed", seed))
    rng = random.Random(seed)
    when, args = POINTS[point]
    tmpdir, basetemp = tmp_path / "tmp", tmp_path / "base"
    tmpdir.mkdir()
    reports = tmp_path / "reports"
    child = Child(*args, workers, "-p", "no:randomly", f"--basetemp={basetemp}", f"--report-dir={reports}",
                  tmpdir=tmpdir)
    try:
        when(child, rng)
        os.killpg(child.proc.pid, sig)
        child.wait(timeout=90)
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.wait()
    # The signal may come after the last test of a quick run: then the run ends normally.
    assert child.returncode in (0, 2), f"seed {seed}; exit {child.returncode}:\n{child.output[-3000:]}"
    if child.returncode == 2:
        assert "KeyboardInterrupt" in child.output or re.search(r"Interrupted", child.output), child.output[-3000:]
        # A report of an interrupted run would claim what never ran: there is none, and no
        # feature reads PASSED.
        assert not reports.exists(), child.output[-3000:]
        verdicts = child.output.split("verdicts per feature", 1)[-1]
        assert not re.search(r"^\S+ +PASSED ", verdicts, re.M), child.output[-3000:]
    assert "Traceback" not in child.output.split("KeyboardInterrupt")[0], child.output[-3000:]
    assert leftovers(child, tmpdir, basetemp) == [], f"seed {seed}; output:\n{child.output[-3000:]}"
