"""Processes of the project's own tests and tools: waiting, stopping, building.

One copy each of what the tiers, the tests and the tools did their own way:

- ``wait_until``: poll a condition that has nothing to wait on (a file, /proc, an API
  object without a watch at hand), up to a bound;
- ``stop_process_group``: SIGTERM to a child's whole process group, SIGKILL after a grace
  period (children are started with ``start_new_session=True``, so the group is theirs);
- ``spawn``: the harness's own (``mtls_conformance.processes.spawn``): a session of its
  own and SIGTERM from the kernel if the starting process dies. One parent-death signal
  for the harness and the tiers, SIGTERM and not SIGKILL: everything the tiers start
  (etcd, kube-apiserver, containerd, kubelet, refgateway) ends on SIGTERM within seconds,
  and the ones that own something outside their process (containerd's shims and mounts,
  refgateway's state files) give it back only when they may run their own shutdown;
- ``run_build``: an idempotent build script of tools/ to the cache dir it prints last.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable, TypeVar

from mtls_conformance.processes import spawn

__all__ = ["BuildFailed", "ROOT", "run_build", "spawn", "stop_process_group", "wait_until"]

ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")


def wait_until(condition: Callable[[], T], *, timeout: float = 10.0, what: str = "the condition",
               interval: float = 0.05, alive: Callable[[], str | None] | None = None) -> T:
    """``condition()``'s first truthy value, polled every ``interval`` s for up to ``timeout`` s.

    ``alive``, when given, is asked on every round: a string it returns (say, a child's
    output after it exited) ends the wait at once, in the failure message. The message
    names ``what``, the bound and the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        gone = alive() if alive is not None else None
        if gone is not None or time.monotonic() > deadline:
            raise AssertionError(f"never saw {what} within {timeout:g} s (last: {value!r})"
                                 + (f"; {gone}" if gone else ""))
        time.sleep(interval)


def signal_group(pid: int, sig: int) -> None:
    """``sig`` to the process group ``pid`` leads; nothing if it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_process_group(proc: subprocess.Popen, *, grace: float = 10.0, first: int = signal.SIGTERM) -> int | None:
    """``first`` (SIGTERM) to ``proc``'s process group, SIGKILL to it after ``grace`` s.

    ``proc`` must lead its group (``start_new_session=True``). The SIGKILL goes to the group
    even when ``proc`` ended in time, for anything it left running there. Returns its exit
    code (None if even SIGKILL did not end it within 5 s: a process in uninterruptible sleep).
    """
    if proc.poll() is None:
        signal_group(proc.pid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    return proc.returncode


class BuildFailed(RuntimeError):
    """A build script of tools/ failed (its own output, on the log stream, says why)."""


def run_build(script: str, *args: str, what: str, log: IO[str] | None = sys.stderr,
              error: type[Exception] = BuildFailed) -> Path:
    """Run ``bash script args`` (a path relative to the repository) and return the cache
    dir it prints as its last line. The scripts are idempotent and flock-protected: one
    that finds its cache complete prints it at once. Its progress goes to ``log``."""
    proc = subprocess.run(["bash", str(ROOT / script), *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=log or subprocess.DEVNULL, text=True,
                          env={**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)})
    if proc.returncode != 0 or not proc.stdout.strip():
        raise error(f"{what}: {shlex.join(['bash', script, *args])} failed with exit code {proc.returncode} "
                    "(its log is above)")
    return Path(proc.stdout.strip().splitlines()[-1])
