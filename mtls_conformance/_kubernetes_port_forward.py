"""The kubernetes target's ``--gateway-address-mode=port-forward``: a listener is reached
through ``kubectl port-forward`` to what serves its Gateway; see ``kubernetes``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess

from .processes import spawn
from .target import NotListening, ObjectRef, TargetError

PORT_FORWARD_TIMEOUT = 30.0
#: What kubectl port-forward says when nothing can listen on the port (yet): the Service has
#: no such port, e.g. for a listener the implementation did not program (kubectl v0.35.8
#: pkg/util/service_port.go:47), or the pod it picked is not Running, e.g. a proxy pod
#: that is still starting (pkg/cmd/portforward/portforward.go:429).
NOTHING_LISTENS = re.compile(r"does not have a service port \d+|unable to forward port because pod is not running")


class PortForwards:
    """The port-forward methods of ``KubernetesTarget`` (a mixin: it uses the target's
    ``_resource``, ``wait_for``, ``kubeconfig`` and ``_forwards``, whose processes the
    target's ``close()`` stops)."""

    def _forward_target(self, gateway: ObjectRef) -> tuple[str, str]:
        """(namespace, service/NAME or pod/NAME) that `kubectl port-forward` reaches the Gateway through."""
        # GEP-1762: implementations label what they deploy for a Gateway with its name.
        services = self._resource("v1", "Service").get(
            namespace=gateway.namespace,
            label_selector=f"gateway.networking.k8s.io/gateway-name={gateway.name}").to_dict()["items"]
        if services:
            return gateway.namespace, f"service/{services[0]['metadata']['name']}"
        # A data plane shared by many Gateways (one Service or pod for all, elsewhere)
        # carries no such label: forward to whatever owns the address the Gateway reports.
        def reported(obj: dict | None) -> str | None:
            return None if obj and (obj.get("status") or {}).get("addresses") else "status.addresses is empty"

        obj = self.wait_for(gateway, reported, what="an address in status.addresses", timeout=30)
        addresses = [a.get("value") for a in (obj or {})["status"]["addresses"]
                     if a.get("type", "IPAddress") == "IPAddress"]
        for address in addresses[:1]:
            for svc in self._resource("v1", "Service").get().to_dict()["items"]:
                spec, status = svc.get("spec") or {}, svc.get("status") or {}
                owned = {spec.get("clusterIP"), *(spec.get("externalIPs") or []),
                         *(i.get("ip") for i in (status.get("loadBalancer") or {}).get("ingress") or [])}
                if address in owned and spec.get("selector"):
                    return svc["metadata"]["namespace"], f"service/{svc['metadata']['name']}"
            pods = self._resource("v1", "Pod").get(field_selector=f"status.podIP={address}").to_dict()["items"]
            running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
            if running:
                return running[0]["metadata"]["namespace"], f"pod/{running[0]['metadata']['name']}"
        owner = f"the Gateway's address {addresses[0]}" if addresses else "an IPAddress in its status.addresses"
        raise TargetError(f"--gateway-address-mode=port-forward: no Service in namespace {gateway.namespace} "
                          f"carries label gateway.networking.k8s.io/gateway-name={gateway.name}, and no Service "
                          f"or running pod owns {owner}, so there is nothing to forward to; use "
                          "--gateway-address-mode=status")

    def _port_forward(self, gateway: ObjectRef, port: int) -> tuple[str, int]:
        key = (gateway, port)
        if key in self._forwards:
            if self._forwards[key][0].poll() is None:
                return self._forwards[key][1]
            # kubectl port-forward ends when the pod it streams to goes away, e.g. when an
            # implementation rolls its proxy Deployment because a Gateway's ports changed
            # (Envoy Gateway does). The next probe needs a forward to the pod serving now.
            del self._forwards[key]
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise TargetError("--gateway-address-mode=port-forward runs `kubectl port-forward` and kubectl is not "
                              "on PATH; install kubectl or use --gateway-address-mode=status")
        namespace, what = self._forward_target(gateway)
        argv = [kubectl, "port-forward", "--address", "127.0.0.1", "-n", namespace, what, f":{port}"]
        if self.kubeconfig:
            argv[1:1] = ["--kubeconfig", self.kubeconfig]
        proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # kubectl prints "Forwarding from 127.0.0.1:NNNNN -> PORT" once it listens.
        import select
        ready, _, _ = select.select([proc.stdout], [], [], PORT_FORWARD_TIMEOUT)
        first = proc.stdout.readline() if ready else f"no answer within {PORT_FORWARD_TIMEOUT:.0f} s"
        match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", first)
        if not match:
            _stop_process(proc)
            said = first.strip().removeprefix("error: ")
            if NOTHING_LISTENS.search(said):
                raise NotListening(f"kubectl port-forward to {namespace}/{what} port {port}: {said}")
            raise TargetError(f"kubectl port-forward to {namespace}/{what} port {port} failed: "
                              f"{first.strip() or 'it exited'}")
        address = ("127.0.0.1", int(match.group(1)))
        self._forwards[key] = (proc, address)
        return address


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
