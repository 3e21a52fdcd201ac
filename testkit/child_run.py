"""A child pytest run: the one way tests, tools and benchmarks start one and read it.

- ``run_pytest``: ``python -m pytest ARGS`` to its end, with its JUnit outcomes;
- ``Child``: one that runs on while the caller watches it, tagged so that everything it
  starts can be found afterwards: every process the run starts inherits the tag in its
  environment, whatever session or process group it puts itself in; its temporary files
  go to a directory of its own (``TMPDIR``) while pytest's base temporary directory is
  given apart, so that whatever the run leaves behind can be told from what pytest keeps
  on purpose;
- ``parse_junit``: outcomes and messages by node id, keyed one way for every caller;
- ``refgateway_command``: the ``--gateway-command`` that runs the bundled refgateway.

A child is a separate process on purpose: it is exactly what a user runs (the plugin
loaded through its entry point), and a fault in the gateway cannot leak into the caller.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable

from testkit.procs import ROOT

__all__ = ["Child", "PytestRun", "ROOT", "parse_junit", "refgateway_command", "run_pytest"]

TAG_VARIABLE = "MTLS_KUBE_TEST_TAG"


def refgateway_command(*, faults: Iterable[str] = (), system_ca_bundle: str | None = "{system_ca_bundle}",
                       extra: Iterable[str] = (), prefix: Iterable[str] = ()) -> str:
    """``--gateway-command`` for the bundled refgateway (README "Testing a gateway without a
    cluster"), with ``faults`` (``python -m refgateway --list-faults``). ``system_ca_bundle``:
    the placeholder the harness fills (default), a fixed file, or None for none; ``extra``:
    more refgateway arguments; ``prefix``: words before the interpreter (``env A=B``)."""
    argv = [*prefix, sys.executable, "-m", "refgateway", "--config-dir", "{config_dir}", "--state-dir", "{state_dir}"]
    if system_ca_bundle is not None:
        argv += ["--system-ca-bundle", str(system_ca_bundle)]
    for fault in faults:
        argv += ["--fault", fault]
    return shlex.join([*argv, *extra])


def parse_junit(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(outcomes, messages) of a JUnit XML file, keyed ``test_module.py::test_name[params]``
    (the module's file name, wherever it lies: mtls_conformance/scenarios/ in a clone, site-packages from a
    wheel). An outcome is passed, failed (a failure or an error) or skipped; the message is
    the failure's or the skip's."""
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        nodeid = f"{module}.py::{case.get('name')}"
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            outcomes[nodeid] = "failed"
            messages[nodeid] = (failure.get("message") or "") + "\n" + (failure.text or "")
        elif case.find("skipped") is not None:
            outcomes.setdefault(nodeid, "skipped")
            messages.setdefault(nodeid, case.find("skipped").get("message") or "")
        else:
            outcomes.setdefault(nodeid, "passed")
    return outcomes, messages


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child run: the caller's (or ``env``), never an xdist worker's id
    (the child would take itself for a worker of the caller's session)."""
    env = dict(os.environ if env is None else env)
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


@dataclasses.dataclass
class PytestRun:
    returncode: int
    stdout: str
    stderr: str
    outcomes: dict[str, str]  # parse_junit's, when a junit file was asked for
    messages: dict[str, str]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_pytest(*args: str, cwd: Path = ROOT, junit: Path | None = None, env: dict[str, str] | None = None,
               timeout: float | None = 900, check: bool = False) -> PytestRun:
    """``python -m pytest -p no:cacheprovider ARGS`` in ``cwd`` to its end (``timeout`` s at
    most; None: no bound, for a measurement), with ``--junitxml=junit`` and its outcomes
    when ``junit`` is given; ``check``: fail (with its output) unless it exits 0."""
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    if junit is not None:
        argv.append(f"--junitxml={junit}")
    proc = subprocess.run(argv, cwd=cwd, env=child_env(env), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout[-5000:]}{proc.stderr[-3000:]}")
    outcomes, messages = parse_junit(junit) if junit is not None and junit.exists() else ({}, {})
    return PytestRun(proc.returncode, proc.stdout, proc.stderr, outcomes, messages)


def _terminal_signals() -> None:
    """In the child, SIGINT as a terminal's command has it. A command started in the
    background by a shell without job control (``cmd &`` in a script, as CI may run
    ``.ci/run``) inherits SIGINT ignored, and a Ctrl-C test would then see no interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child:
    """A child pytest run, tagged so that everything it starts can be found afterwards."""

    def __init__(self, *args: str, cwd: Path = ROOT, prefix: tuple[str, ...] = (),
                 tmpdir: Path | None = None) -> None:
        self.tag = uuid.uuid4().hex
        self.args = args
        env = {**child_env(), TAG_VARIABLE: self.tag, "PYTHONUNBUFFERED": "1"}
        if "--backend-mode=local-process" in args:
            args = ("-p", "testkit.testhost", *args)
        if tmpdir is not None:
            env["TMPDIR"] = str(tmpdir)
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                                     cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     # A process group of its own, as a shell gives a command,
                                     # so that Ctrl-C can be sent the way a terminal sends it.
                                     start_new_session=True, preexec_fn=_terminal_signals)
        self.output = ""

    def wait(self, timeout: float = 180) -> Child:
        try:
            self.output += self.proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output += self.proc.communicate()[0]
            raise AssertionError(f"child pytest ran over {timeout} s; its output:\n{self.output}") from None
        return self

    def read_until(self, pattern: str, timeout: float) -> str:
        """Read the child's output until a line matches (select() bounds each read)."""
        import select

        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        pending = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            chunk = os.read(fd, 65536).decode(errors="replace") if ready else ""
            if not chunk:
                break
            self.output += chunk
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                if re.search(pattern, line):
                    return line
        raise AssertionError(f"child pytest never printed {pattern!r} within {timeout} s; output:\n{self.output}")

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def processes(self) -> list[str]:
        """Processes still alive that this run started (the tag is in their environment)."""
        found = []
        needle = f"{TAG_VARIABLE}={self.tag}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.proc.pid:
                continue
            try:
                if needle in (entry / "environ").read_bytes():
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    found.append(f"{entry.name}: {command}")
            except OSError:
                continue
        return found

    def test_hosts(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(f"mtls-{self.proc.pid}-")]
