"""Controller mode without an API server: command-line errors and the address pool.

Everything that talks to an API server is in tests/cluster/test_refgateway_controller.py.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from refgateway import _cli
from refgateway._kube_addresses import AddressPool
from refgateway._kube_api import KubeError


@pytest.mark.parametrize("argv, message", [
    ([], "no --kubeconfig given, KUBECONFIG is not set and not running in a cluster "
         "(KUBERNETES_SERVICE_HOST unset): pass --kubeconfig FILE"),
    (["--kubeconfig", "/nonexistent/kubeconfig"], "kubeconfig /nonexistent/kubeconfig: no such file"),
    (["--listen-address-pool", "10.0.0.0/24"], "--listen-address-pool 10.0.0.0/24: must be an IPv4 network inside 127.0.0.0/8"),
    (["--listen-address-pool", "nonsense"], "--listen-address-pool nonsense: "),
    (["--listen-address", "localhost"], "--listen-address localhost: not an IP address"),
    (["--report-address", "10.1.2.3"], "--report-address needs --listen-address"),
    (["--fault", "no-such-fault"], "unknown fault 'no-such-fault'"),
    (["--system-ca-bundle", "/nonexistent/dir/bundle.pem"],
     "--system-ca-bundle /nonexistent/dir/bundle.pem: its directory does not exist"),
    (["--listen-address", "0.0.0.0", "--listen-address-pool", "127.0.1.0/24"], "not allowed with argument"),
    (["--service-namespace", "ns", "--service-selector", "a=b"], "--service-namespace needs --listen-address"),
    (["--listen-address", "0.0.0.0", "--service-namespace", "ns"], "--service-namespace and --service-selector go together"),
    (["--listen-address", "0.0.0.0", "--service-namespace", "ns", "--service-selector", "app"],
     "--service-selector app: want KEY=VALUE[,KEY=VALUE...]"),
    (["--listen-address", "0.0.0.0", "--service-namespace", "ns", "--service-selector", "a=b",
      "--report-address", "10.1.2.3"], "--report-address does not go with --service-namespace"),
])
def test_unusable_arguments_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    if "not allowed" in message:  # argparse's own check exits by itself
        with pytest.raises(SystemExit, match="2"):
            _cli.main(["controller", *argv])
    else:
        assert _cli.main(["controller", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refgateway: error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_pool_is_stable_per_gateway_and_avoids_reserved_addresses():
    a, b = AddressPool("127.0.0.0/16"), AddressPool("127.0.0.0/16")
    gws = [("ns", f"gw{i}") for i in range(300)]
    first = [a.get(g) for g in gws]
    assert first == [b.get(g) for g in gws]  # a hash of namespace/name, not of arrival order
    assert len(set(first)) == len(first)
    for addr in map(ipaddress.ip_address, first):
        assert addr not in ipaddress.ip_network("127.0.0.0/24")
        assert str(addr).rsplit(".", 1)[1] not in ("0", "255")
    assert a.get(("ns", "gw0")) == first[0]  # asking again does not move it


def test_pool_collision_preference_and_exhaustion():
    pool = AddressPool("127.0.9.0/30")  # .0 is skipped: three usable addresses
    got = [pool.get(("ns", name)) for name in ("one", "two", "three")]
    assert sorted(got) == ["127.0.9.1", "127.0.9.2", "127.0.9.3"]
    assert pool.get(("ns", "four")) is None
    one, two = got[:2]
    pool.release_except({("ns", "one")})
    # A restarted controller keeps the address the Gateway's status already reports.
    assert pool.get(("ns", "again"), preferred=two) == two
    # An address another process holds is avoided for a while.
    pool.mark_busy(("ns", "again"))
    assert pool.get(("ns", "again"), preferred=two) != two


def test_pool_outside_loopback_is_refused():
    with pytest.raises(KubeError, match="inside 127.0.0.0/8"):
        AddressPool("192.0.2.0/24")


@pytest.mark.skipif(Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists(),
                    reason="running in a pod: the in-cluster config would load")
def test_in_cluster_without_a_service_account_token_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert _cli.main(["controller"]) == 2
    assert capsys.readouterr().err == ("refgateway: error: cannot load Kubernetes configuration: "
                                       "Service token file does not exist.\n")
