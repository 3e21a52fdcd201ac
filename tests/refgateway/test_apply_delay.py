"""--apply-delay: a slow but correct gateway (issue 21), for the harness's consistency window.

A changed configuration is served only SECONDS after refgateway read it, and its status is
written only then. The checks below are deadlines and lower bounds that hold however busy
the machine is: nothing can be written before the delay has passed since the change.
"""

from __future__ import annotations

import time

import yaml

from .conftest import NS, gateway, gateway_class

DELAY = 1.5


def http_listener(name: str, port: int) -> dict:
    return {"name": name, "port": port, "protocol": "HTTP"}


def test_a_change_is_served_and_reported_only_after_the_delay(cluster, start_gateway):
    gw = start_gateway(args=("--apply-delay", str(DELAY)))
    cluster.apply(gateway_class())
    cluster.apply(gateway("slow", [http_listener("a", 80)]))
    gw.wait_condition("Gateway", "slow", "Programmed", generation=1, timeout=30)
    ports = gw.state_dir / "ports" / NS / "slow.yaml"
    assert set(yaml.safe_load(ports.read_text())) == {80}

    changed = time.monotonic()
    cluster.apply(gateway("slow", [http_listener("a", 80), http_listener("b", 8080)]))
    # Before the delay has passed since the change, neither status nor the data plane moved.
    while time.monotonic() - changed < DELAY * 0.8:
        conditions = gw.status("Gateway", "slow")["status"]["conditions"]
        assert {c["observedGeneration"] for c in conditions} == {1}, conditions
        assert set(yaml.safe_load(ports.read_text())) == {80}
        time.sleep(0.05)
    gw.wait_condition("Gateway", "slow", "Programmed", generation=2, timeout=30)
    assert time.monotonic() - changed >= DELAY
    assert set(yaml.safe_load(ports.read_text())) == {80, 8080}
    assert "applying this configuration in 1.5 s (--apply-delay)" in gw.log()


def test_the_option_takes_only_a_positive_number_of_seconds(tmp_path):
    import subprocess
    import sys

    from .conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "refgateway", "--config-dir", str(tmp_path), "--state-dir",
                           str(tmp_path / "s"), "--apply-delay", "soon"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "refgateway: error: argument --apply-delay: not a number of seconds: 'soon'"
    proc = subprocess.run([sys.executable, "-m", "refgateway", "controller", "--apply-delay", "0"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--apply-delay: must be more than 0 seconds" in proc.stderr, proc.stderr
