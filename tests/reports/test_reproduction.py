"""The reproduction command in a failure message, run by hand, shows the same failure.

A refgateway started with ``--fault accept-any-client-cert`` lets a client from an
untrusted CA through. The harness must fail with the evidence (HTTP 200 from the
backend) and a curl line; curl, run while the gateway is still up, must get that same
200. Against the correct refgateway the same curl line must be refused, so the command
reproduces the fault and not just any request.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.client import GatewayClient, Settings
from mtls_conformance.expect import ExpectationFailed, Timing
from mtls_conformance.local import LocalTarget
from mtls_conformance.profiles import REFGATEWAY
from mtls_conformance.target import ObjectRef

from testkit.child_run import refgateway_command

HOST = "example.com"
NAMESPACE = "repro"


@pytest.fixture(scope="module")
def pki(mtls_pki):
    server_ca = mtls_pki.authority("repro-server-ca")
    client_ca = mtls_pki.authority("repro-client-ca")
    return {
        "server_ca": server_ca,
        "server": server_ca.issue_server(HOST, name="repro-https"),
        "client_ca": client_ca,
        "untrusted": mtls_pki.authority("repro-untrusted-ca").issue_client(
            "repro-untrusted-client", dns_names=[HOST]),
    }


def deploy(target: LocalTarget, pki, backends: list) -> GatewayClient:
    target.create_namespace(NAMESPACE)
    backends.append(target.start_backend(namespace=NAMESPACE, service="echo", port=8080))
    gateway = m.gateway("gw", NAMESPACE, gateway_class=target.gateway_class,
                        frontend=m.frontend_tls(default=m.validation(m.object_ref("ca"))),
                        listeners=[m.https_listener("https", 8443, certificate="cert")])
    route = m.http_route("route", NAMESPACE, hostnames=[HOST], parents=[m.parent_ref("gw")],
                         rules=[m.rule(m.backend_ref("echo", 8080))])
    target.apply(m.tls_secret("cert", NAMESPACE, cert_pem=pki["server"].chain_pem,
                              key_pem=pki["server"].key_pem),
                 m.ca_configmap("ca", NAMESPACE, pki["client_ca"].cert_pem), gateway, route)
    ref = ObjectRef.of(gateway)
    target.wait_for_condition(ref, "Programmed", timeout=30)
    target.wait_for_route_condition(ObjectRef.of(route), ref, "Accepted", timeout=30)
    return GatewayClient(target, ref, trust=pki["server_ca"], profile=REFGATEWAY,
                         settings=Settings(timing=Timing(max_time_to_consistency=2)))


def curl(command: str) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "curl", command
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@pytest.fixture
def backends():
    running: list = []
    yield running
    for backend in running:
        backend.stop()


def test_reproduction_command_shows_the_same_failure(pki, backends):
    broken = LocalTarget(gateway_class="repro-broken", command=refgateway_command(faults=["accept-any-client-cert"]))
    try:
        client = deploy(broken, pki, backends)
        with pytest.raises(ExpectationFailed) as info:
            client.expect_rejected(8443, sni=HOST, cert=pki["untrusted"], what="an untrusted client")
        message = str(info.value)
        assert message.startswith(
            "an untrusted client: listener port 8443 (SNI example.com) with client certificate "
            "'repro-untrusted-client': expected the connection to be rejected, the backend answered HTTP 200 "
            "over "), message
        assert ": the request was let through" in message
        command = re.search(r"^reproduce: (curl .*)$", message, re.MULTILINE).group(1)

        by_hand = curl(command)
        assert by_hand.returncode == 0, by_hand.stderr
        assert re.search(r"^< HTTP/1\.1 200", by_hand.stderr, re.MULTILINE), by_hand.stderr
        assert '"namespace": "repro"' in by_hand.stdout or '"namespace":"repro"' in by_hand.stdout
    finally:
        broken.close()

    correct = LocalTarget(gateway_class="repro-correct", command=refgateway_command())
    try:
        client = deploy(correct, pki, backends)
        client.expect_rejected(8443, sni=HOST, cert=pki["untrusted"])
        same = command.replace(str(broken_port(command)), str(client.address(8443)[1]))
        refused = curl(same)
        assert refused.returncode != 0, refused.stderr
        assert "HTTP/1.1 200" not in refused.stderr
    finally:
        correct.close()


def broken_port(command: str) -> int:
    return int(re.search(r"--resolve \S+:(\d+):", command).group(1))
