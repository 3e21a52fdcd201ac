"""BackendTLSPolicy status: the gateway's status writes keep the ancestors entries of other
controllers.

Guide: Gateway API v1.7.0, ``apis/v1/policy_types.go`` lines 257-265 (PolicyStatus.Ancestors):

    Note also that implementations MUST ONLY populate ancestor status for the Ancestor
    resources they are responsible for. Implementations MUST use the ControllerName field
    to uniquely identify the entries in this list that they are responsible for.

    Note that to achieve this, the list of PolicyAncestorStatus structs MUST be treated as
    a map with a composite key, made up of the AncestorRef and ControllerName fields
    combined.

A BackendTLSPolicy may be read by several implementations at once (a Service behind two
gateways of different classes); a status write that replaces the whole list erases what the
others reported. Upstream: BackendTLSPolicyPreserveForeignStatus (v1.7.0, provisional), which
Envoy Gateway v1.9.1 fails (docs/implementations/envoy-gateway.md): as there, another
controller's entry is written through a status write, a spec change then makes the gateway
write its own entry again (observedGeneration), and the other entry must be there unchanged.
Two cases: an ancestor the gateway has nothing to do with (upstream's), and the gateway's own
Gateway reported by another controller, which a list keyed by AncestorRef alone would lose.
"""

from __future__ import annotations

import datetime

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.target import ObjectRef, TargetCannot

from mtls_conformance.fixtures.guide import BACKEND_HOSTNAME, BACKEND_OTHER_HOSTNAME, HOSTNAME

pytestmark = pytest.mark.features("BackendTLSPolicy")

GATEWAY = "mtls-foreign-status"
CA = "tls-checks-ca-certificate"
#: Not a controller anyone runs: the entry is only ever written by this test.
OTHER_CONTROLLER = "example.net/another-gateway-controller"
# case -> the Gateway the other controller's entry is about (None: the gateway's own)
CASES = {"other-ancestor": "unmanaged-gateway", "same-ancestor": None}


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, deploy_gateway, backend_ca):
    ns = mtls_namespace
    return deploy_gateway(m.gateway(GATEWAY, ns, gateway_class=mtls_gateway_class,
                                    listeners=[m.http_listener("http", 80)]),
                          m.ca_configmap(CA, ns, backend_ca.cert_pem))


def policy(name, namespace, service, hostname):
    return m.backend_tls_policy(name, namespace, targets=[m.policy_target(service)], hostname=hostname,
                                ca_refs=[m.object_ref(CA)])


def others_entry(namespace: str, gateway: str, generation: int) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": namespace,
                            "name": gateway},
            "controllerName": OTHER_CONTROLLER,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                            "message": "written by another controller", "observedGeneration": generation,
                            "lastTransitionTime": now}]}


def _foreign_entry(gw, case, mtls_namespace, mtls_target, mtls_backend):
    """A policy of its own, Accepted, another controller's entry written into its status,
    then its spec changed (ahead with the module: configure_ahead)."""
    ns, service = mtls_namespace, f"foreign-{case}"
    mtls_backend(ns, service, port=443)
    route = m.http_route(service, ns, hostnames=[HOSTNAME], parents=[m.parent_ref(GATEWAY)],
                         rules=[m.rule(m.backend_ref(service, 443), path=f"/{service}")])
    p = policy(service, ns, service, BACKEND_HOSTNAME)
    mtls_target.apply(route, p)
    yield  # configured; the checks and the change run once every module is configured
    ref, timeout = ObjectRef.of(p), gw.settings.timing.condition_timeout
    mtls_target.wait_for_policy_condition(ref, gw.gateway, "Accepted", "True", reason="Accepted", timeout=timeout)

    generation = mtls_target.get(ref)["metadata"]["generation"]
    try:
        stored = mtls_target.add_status_entry(ref, "ancestors", others_entry(ns, CASES[case] or GATEWAY, generation))
    except TargetCannot as exc:  # both targets of this harness can; a target of someone else's may not
        pytest.skip(str(exc))
    # A spec change: the gateway must write its own entry again, at the new generation.
    mtls_target.apply(policy(service, ns, service, BACKEND_OTHER_HOSTNAME))
    return ref, stored


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.configure_ahead(setup=_foreign_entry)
def test_other_controllers_ancestor_entry_is_kept(gw, case, mtls_target, mtls_configured):
    ref, stored = mtls_configured
    timeout = gw.settings.timing.condition_timeout
    mtls_target.wait_for_policy_condition(ref, gw.gateway, "Accepted", "True", reason="Accepted", timeout=timeout)

    ancestors = (mtls_target.get(ref).get("status") or {}).get("ancestors") or []
    theirs = [e for e in ancestors if e.get("controllerName") == OTHER_CONTROLLER]
    assert theirs, (f"BackendTLSPolicy {ref.name}: the gateway's status write after the spec change removed the "
                    f"status.ancestors entry of controller {OTHER_CONTROLLER} for Gateway "
                    f"{stored['ancestorRef']['name']}; ancestors now: {ancestors}")
    assert theirs == [stored], (f"BackendTLSPolicy {ref.name}: the status.ancestors entry of controller "
                                f"{OTHER_CONTROLLER} was changed by the gateway's status write: written {stored}, "
                                f"now {theirs}")
