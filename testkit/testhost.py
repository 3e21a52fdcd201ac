"""The test host of the project's API server tier: a network namespace for backends.

``--backend-mode=local-process`` runs the scenarios' backends as processes on this
machine for a gateway that runs here too, against an API server without kubelets. The
API server refuses loopback endpoints, so the backends run in a network namespace joined
to this one by a veth pair. That is the project's own test setup, not something a vendor
needs, so it is a plugin of the test tier and not part of the shipped harness:

    pytest -p testkit.testhost mtls_conformance/scenarios --gateway-class=refgateway --backend-mode=local-process

(from the root of a clone; root, or CAP_NET_ADMIN). kubelet_standin.py uses it too.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from filelock import FileLock

from mtls_conformance.target import TargetError

#: Test hosts (network namespaces) get /30s from 198.18.0.0/15, the range reserved for
#: network testing (RFC 2544): unlike 10/8 it is unlikely to be a real network here, and
#: unlike 169.254/16 the API server accepts it in EndpointSlices.
TEST_HOST_RANGE = ipaddress.ip_network("198.18.0.0/15")
NETNS_PREFIX = "mtls-"
NETNS_LOCK = Path(tempfile.gettempdir()) / "mtls-conformance-netns.lock"


@pytest.hookimpl
def pytest_mtls_process_host(config: pytest.Config) -> TestHost:
    return TestHost(run_id=uuid.uuid4().hex[:8])


class TestHost:
    """A network namespace joined to this one by a veth pair: somewhere to run backends
    that is neither loopback nor the gateway's own address space."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, *, run_id: str) -> None:
        self.name = f"{NETNS_PREFIX}{os.getpid()}-{run_id}"
        self.host_if, self.peer_if = f"mt{run_id[:8]}h", f"mt{run_id[:8]}n"
        self.address = ""

    @staticmethod
    def _ip(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", *args], capture_output=True, text=True)

    @property
    def command_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def create(self) -> None:
        if shutil.which("ip") is None:
            raise TargetError("--backend-mode=local-process runs backends in a network namespace and needs "
                              "the `ip` command (iproute2); install it, or use --backend-mode=deployment")
        with FileLock(str(NETNS_LOCK), timeout=30):
            self._remove_stale()
            subnet = self._free_subnet()
            host_ip, peer_ip = list(subnet.hosts())
            steps = [
                ("netns", "add", self.name),
                ("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if, "netns", self.name),
                ("addr", "add", f"{host_ip}/{subnet.prefixlen}", "dev", self.host_if),
                ("link", "set", self.host_if, "up"),
                ("-n", self.name, "addr", "add", f"{peer_ip}/{subnet.prefixlen}", "dev", self.peer_if),
                ("-n", self.name, "link", "set", self.peer_if, "up"),
                ("-n", self.name, "link", "set", "lo", "up"),
            ]
            for step in steps:
                result = self._ip(*step)
                if result.returncode != 0:
                    self.destroy()
                    why = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
                    raise TargetError(
                        f"--backend-mode=local-process could not make a test host: `ip {' '.join(step)}` "
                        f"failed: {why[0]}; it needs root (CAP_NET_ADMIN), else use --backend-mode=deployment")
            self.address = str(peer_ip)

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = set()
        listing = self._ip("-o", "-4", "addr", "show").stdout
        for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/", listing):
            address = ipaddress.ip_address(match.group(1))
            if address in TEST_HOST_RANGE:
                used.add(ipaddress.ip_network(f"{address}/30", strict=False))
        for subnet in TEST_HOST_RANGE.subnets(new_prefix=30):
            if subnet not in used:
                return subnet
        raise TargetError(f"no free /30 left in {TEST_HOST_RANGE} for a test host")

    def _remove_stale(self) -> None:
        # Test hosts of runs that were killed (SIGKILL leaves no chance to clean up).
        for line in self._ip("netns", "list").stdout.splitlines():
            match = re.match(rf"({re.escape(NETNS_PREFIX)}(\d+)-[0-9a-z]+)\b", line)
            if match and not os.path.exists(f"/proc/{match.group(2)}"):
                self._ip("netns", "del", match.group(1))

    def destroy(self) -> None:
        # Unconditionally: an interrupted create() may have made more than it recorded.
        # The pair first: deleting one end deletes both at once, whereas deleting the
        # namespace leaves them to the kernel's asynchronous namespace cleanup.
        self._ip("link", "del", self.host_if)
        self._ip("netns", "del", self.name)
