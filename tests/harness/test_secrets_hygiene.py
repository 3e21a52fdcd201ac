"""Private keys stay in their 0600 files: no output of a failing run carries one.

The suite runs against a gateway with a fault that fails many tests, writing every output
a user can ask for (terminal, JUnit XML, allure results, the ConformanceReport, verdicts
and summary, the gateway's own log). Every private key the run generated is then looked
for in all of them: as PEM, as any 40-character piece of its PEM body, and as any piece of
the base64 of its PEM (the form a Kubernetes Secret manifest holds, which a failure message
quoting an object would show).
"""

from __future__ import annotations

import base64
import re
import shlex
import stat
from pathlib import Path

import pytest

from tests.selfcheck.runner import FAST
from testkit.child_run import PytestRun, refgateway_command, run_pytest

pytestmark = pytest.mark.xdist_group("interrupts")  # a whole suite run: not beside the others

FAULT = "accept-any-client-cert"  # fails the most tests of any fault
PIECE = 40


def pieces(text: str) -> set[str]:
    """Every PIECE-long run of a base64 text, at each offset a reader could start from."""
    flat = re.sub(r"\s", "", text)
    return {flat[i:i + PIECE] for i in range(0, max(len(flat) - PIECE, 0) + 1, 4)}


def base64_runs(text: str) -> list[str]:
    """The runs of base64 characters at least PIECE long, line breaks (real or escaped) removed."""
    flat = re.sub(r"\s|\\n", "", text)
    return re.findall(r"[A-Za-z0-9+/=]{%d,}" % PIECE, flat)


def key_fingerprints(basetemp: Path) -> tuple[list[Path], set[str]]:
    keys, found = [], set()
    for path in basetemp.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"PRIVATE KEY-----" not in data:
            continue
        keys.append(path)
        pem = data.decode("ascii")
        body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
        found |= pieces(body) | pieces(base64.b64encode(data).decode("ascii"))
    return keys, found


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory) -> tuple[Path, Path, PytestRun]:
    tmp = tmp_path_factory.mktemp("hygiene")
    outputs, basetemp = tmp / "outputs", tmp / "base"
    outputs.mkdir()
    gateway_log = outputs / "gateway.log"
    # The gateway's log goes to a file the run does not remove, through a shell that tees it.
    command = f"sh -c {shlex.quote(refgateway_command(faults=[FAULT]) + ' 2>&1 | tee -a ' + shlex.quote(str(gateway_log)))}"
    proc = run_pytest(
        "mtls_conformance/scenarios", "-p", "no:randomly", "-n", "2", f"--basetemp={basetemp}", f"--alluredir={outputs / 'allure'}",
        f"--report-dir={outputs / 'report'}", f"--gateway-command={command}", "-rA", "--tb=long", *FAST,
        junit=outputs / "junit.xml", timeout=900)
    (outputs / "terminal.txt").write_text(proc.stdout + proc.stderr)
    return outputs, basetemp, proc


def test_the_run_failed_many_tests_and_wrote_every_output(failing_run):
    outputs, _, proc = failing_run
    assert proc.returncode == 1, proc.stdout[-3000:]
    failed = int(re.findall(r"(\d+) failed", proc.stdout)[-1])  # the closing line
    assert failed >= 15, proc.stdout[-3000:]
    for name in ("junit.xml", "allure", "report", "gateway.log"):
        assert (outputs / name).exists(), name
    assert any((outputs / "allure").iterdir()) and any((outputs / "report").iterdir())


def test_private_keys_are_0600(failing_run):
    _, basetemp, _ = failing_run
    keys, _ = key_fingerprints(basetemp)
    assert keys, "the run generated no key files?"
    loose = {str(k): oct(stat.S_IMODE(k.stat().st_mode)) for k in keys if stat.S_IMODE(k.stat().st_mode) != 0o600}
    assert loose == {}


def test_no_output_carries_key_material(failing_run):
    outputs, basetemp, _ = failing_run
    _, fingerprints = key_fingerprints(basetemp)
    assert fingerprints
    leaks = []
    for path in sorted(outputs.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        if "PRIVATE KEY" in text:
            leaks.append(f"{path.relative_to(outputs)}: 'PRIVATE KEY'")
            continue
        hit = next((piece for token in base64_runs(text) for i in range(len(token) - PIECE + 1)
                    if (piece := token[i:i + PIECE]) in fingerprints), None)
        if hit:
            leaks.append(f"{path.relative_to(outputs)}: key material {hit[:12]}...")
    assert leaks == [], "\n".join(leaks)
