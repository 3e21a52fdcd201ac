"""examples/kgateway-frontend-mtls: started with one command, it answers the guide's curl commands.

The commands are the guide's own for a port-forwarded Gateway (kgateway docs, "Frontend
mTLS", Default configuration for all listeners), run with real curl. The example binds
the guide's fixed ports (8000, 8443, 8444), so it runs in a network namespace of its own
(``unshare -n``): parallel test runs on this machine cannot collide with it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "examples" / "kgateway-frontend-mtls" / "run.sh"

NO_CERT = 'curl -v -k https://localhost:{port}/get --resolve example.com:{port}:127.0.0.1 -H "Host: example.com"'
WITH_CERT = NO_CERT + " --cert client-cert.pem --key client-key.pem --cacert ca-cert.pem"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("curl"),
                                reason="needs root, unshare and curl (a network namespace of its own)")


def test_the_guides_curl_commands_get_the_guides_answers(tmp_path):
    checks = []
    for port in (8443, 8444):
        # The guide: without a certificate the TLS handshake fails; with one, 200.
        checks.append(f'{NO_CERT.format(port=port)} -sS -o /dev/null && echo "{port} no-cert: accepted" '
                      f'|| echo "{port} no-cert: refused $?"')
        checks.append(f'{WITH_CERT.format(port=port)} -sS -o /dev/null -w "{port} cert: %{{http_code}}\\n"')
    script = f"""
set -u
ip link set lo up
PYTHON={shlex.quote(sys.executable)} bash {shlex.quote(str(RUN))} > run.log 2>&1 &
for i in $(seq 300); do
  grep -qs "Programmed" state/status/kgateway-system/Gateway/mtls.yaml && [ -s state/ports/kgateway-system/mtls.yaml ] && break
  sleep 0.1
done
{chr(10).join(checks)}
kill %1; wait
sleep 0.5  # a stopped server's socket closes with it; nothing else to wait on here
ss -ltnH | sed 's/^/left running: /'
"""
    proc = subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    log = (tmp_path / "run.log").read_text() if (tmp_path / "run.log").exists() else ""
    lines = proc.stdout.splitlines()
    assert "8443 no-cert: refused 56" in lines, proc.stdout + proc.stderr + log
    assert "8444 no-cert: refused 56" in lines, proc.stdout + proc.stderr + log
    assert "8443 cert: 200" in lines and "8444 cert: 200" in lines, proc.stdout + proc.stderr + log
    assert "tlsv13 alert certificate required" in proc.stderr, "the refusal is the gateway's alert"
    assert not [line for line in lines if line.startswith("left running")], proc.stdout
