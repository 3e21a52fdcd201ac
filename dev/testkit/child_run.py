"""A child pytest run, tagged so that everything it starts can be found afterwards.

Every process the run starts inherits the tag in its environment, whatever session or
process group it puts itself in; its temporary files go to a directory of its own
(``TMPDIR``) while pytest's base temporary directory is given apart, so that whatever
the run leaves behind can be told from what pytest keeps on purpose.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG_VARIABLE = "MTLS_KUBE_TEST_TAG"


class Child:
    """A child pytest run, tagged so that everything it starts can be found afterwards."""

    def __init__(self, *args: str, cwd: Path = ROOT, prefix: tuple[str, ...] = (),
                 tmpdir: Path | None = None) -> None:
        self.tag = uuid.uuid4().hex
        self.args = args
        env = {**os.environ, TAG_VARIABLE: self.tag, "PYTHONUNBUFFERED": "1",
               # tests.cluster.testhost, the test host plugin, from any working directory
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        env.pop("PYTEST_XDIST_WORKER", None)
        if "--backend-mode=local-process" in args:
            args = ("-p", "tests.cluster.testhost", *args)
        if tmpdir is not None:
            env["TMPDIR"] = str(tmpdir)
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                                     cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     # A process group of its own, as a shell gives a command,
                                     # so that Ctrl-C can be sent the way a terminal sends it.
                                     start_new_session=True)
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
