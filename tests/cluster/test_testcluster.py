"""Tests of testkit/testcluster.py: a real kube-apiserver + etcd with the Gateway API CRDs.

The first run builds kube-apiserver and etcd (tools/apiserver/build.sh, many minutes on
a cold Go cache). These tests skip only when the binaries are not built and Go is not
installed at all.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from testkit import testcluster
from testkit.testcluster import TestCluster, port_open

if not testcluster.go_available() and not testcluster._complete(testcluster.cache_dir()):
    pytest.skip(
        f"Go is not installed, so kube-apiserver/etcd cannot be built ({testcluster.BUILD_COMMAND})",
        allow_module_level=True,
    )

from kubernetes import client, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

GROUP = "gateway.networking.k8s.io"

# One cluster per xdist worker is started for this module; with --dist loadgroup all
# these tests share one worker and so one cluster.
pytestmark = pytest.mark.xdist_group("testcluster")


@pytest.fixture
def ns(api):
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def gateway(name: str, ports=(443,), per_port=None) -> dict:
    ca_ref = {"group": "", "kind": "ConfigMap", "name": "client-ca"}
    spec = {
        "gatewayClassName": "test",
        "listeners": [
            {
                "name": f"https-{p}",
                "port": p,
                "protocol": "HTTPS",
                "tls": {"mode": "Terminate", "certificateRefs": [{"name": "server-cert"}]},
            }
            for p in ports
        ],
        "tls": {"frontend": {"default": {"validation": {"caCertificateRefs": [ca_ref]}}}},
    }
    if per_port is not None:
        spec["tls"]["frontend"]["perPort"] = [
            {"port": p, "tls": {"validation": {"caCertificateRefs": [ca_ref]}}} for p in per_port
        ]
    return {"apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": name}, "spec": spec}


def create_gw(api, ns, body):
    return client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, "v1", ns, "gateways", body)


# ------------------------------------------------------------------------------ CRDs


def test_gateway_api_crds_established(cluster):
    status, body = cluster.request("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    assert status == 200
    crds = {i["metadata"]["name"]: i for i in json.loads(body)["items"]}
    for name in testcluster.GATEWAY_CRDS:
        assert name in crds, name
        conds = {c["type"]: c["status"] for c in crds[name]["status"]["conditions"]}
        assert conds.get("Established") == "True", (name, conds)
        assert crds[name]["metadata"]["annotations"]["gateway.networking.k8s.io/channel"] == "standard"
        # The version build.sh fetches, from its own folder of the cache dir.
        assert crds[name]["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] == \
            testcluster.gateway_api_version() == "v1.7.0"
    btls = crds["backendtlspolicies.gateway.networking.k8s.io"]["spec"]["versions"]
    assert {v["name"]: (v["served"], v["storage"]) for v in btls}["v1"] == (True, True)
    # Every served version is in discovery, as kubectl would see it.
    status, body = cluster.request(f"/apis/{GROUP}/v1")
    names = {r["name"] for r in json.loads(body)["resources"]}
    assert {"gateways", "gateways/status", "gatewayclasses", "httproutes", "referencegrants",
            "backendtlspolicies"} <= names


def test_crds_are_kept_per_gateway_api_version(cluster, monkeypatch):
    """A cache dir built for another Gateway API version is not taken for this one's."""
    assert cluster.crd_dir == testcluster.cache_dir() / "crds" / testcluster.gateway_api_version()
    monkeypatch.setenv("GATEWAY_API_VERSION", "v1.6.3")
    assert testcluster.crd_dir(Path("/cache")) == Path("/cache/crds/v1.6.3")


def test_cluster_trust_bundle_api_is_served(cluster):
    """GEP-5075 caCertificateRefs name ClusterTrustBundles: v1beta1 in Kubernetes v1.35."""
    status, body = cluster.request("/apis/certificates.k8s.io/v1beta1")
    assert status == 200, body
    assert "clustertrustbundles" in {r["name"] for r in json.loads(body)["resources"]}


def test_safe_upgrades_policy_installed_or_reported(cluster):
    status, body = cluster.request(
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/safe-upgrades.gateway.networking.k8s.io"
    )
    assert status == 200 or any("safe-upgrades" in s for s in cluster.skipped_manifests)


# ------------------------------------------------------------------------------ validation


def test_duplicate_per_port_tls_is_rejected(api, ns):
    with pytest.raises(ApiException) as e:
        create_gw(api, ns, gateway("dup", ports=(443, 8443), per_port=(443, 443)))
    assert e.value.status == 422, e.value.body
    assert "perPort" in e.value.body


def test_bad_listener_protocol_is_rejected(api, ns):
    body = gateway("badproto")
    body["spec"]["listeners"][0]["protocol"] = "HTTP S"
    with pytest.raises(ApiException) as e:
        create_gw(api, ns, body)
    assert e.value.status == 422
    assert "protocol" in e.value.body


def test_cel_rule_on_listeners_is_enforced(api, ns):
    # An x-kubernetes-validations (CEL) rule on spec.listeners, evaluated by the API
    # server's real CEL implementation: tls must not be set on an HTTP listener.
    body = gateway("httptls")
    body["spec"]["listeners"][0]["protocol"] = "HTTP"
    with pytest.raises(ApiException) as e:
        create_gw(api, ns, body)
    assert e.value.status == 422, e.value.body
    assert "tls must not be specified" in e.value.body


# ------------------------------------------------------------------------------ generation, status, watch


def test_generation_and_status_subresource_and_watch(api, ns):
    co = client.CustomObjectsApi(api)
    gw = create_gw(api, ns, gateway("gw", per_port=(443,)))
    assert gw["metadata"]["generation"] == 1
    # Defaulting from the schema happened (mode: AllowValidOnly) and status has its default.
    assert gw["spec"]["tls"]["frontend"]["default"]["validation"]["mode"] == "AllowValidOnly"
    assert gw["status"]["conditions"][0]["reason"] == "Pending"

    moved = gateway("gw", ports=(8443,), per_port=(8443,))
    gw = co.patch_namespaced_custom_object(GROUP, "v1", ns, "gateways", "gw", {"spec": moved["spec"]})
    assert gw["metadata"]["generation"] == 2
    gw = co.patch_namespaced_custom_object(
        GROUP, "v1", ns, "gateways", "gw", {"metadata": {"labels": {"a": "b"}}}
    )
    assert gw["metadata"]["generation"] == 2  # metadata changes do not bump it
    rv = gw["metadata"]["resourceVersion"]

    cond = {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "ok",
        "observedGeneration": 2,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    # Status written through the main resource is ignored ...
    co.patch_namespaced_custom_object(GROUP, "v1", ns, "gateways", "gw", {"status": {"conditions": [cond]}})
    assert co.get_namespaced_custom_object(GROUP, "v1", ns, "gateways", "gw")["status"]["conditions"][0][
        "reason"] == "Pending"
    # ... and works through the status subresource, which ignores spec changes.
    out = co.patch_namespaced_custom_object_status(
        GROUP, "v1", ns, "gateways", "gw",
        {"status": {"conditions": [cond]}, "spec": {"gatewayClassName": "changed"}},
    )
    assert out["status"]["conditions"][0]["observedGeneration"] == 2
    assert out["spec"]["gatewayClassName"] == "test"
    assert out["metadata"]["generation"] == 2

    # Status is validated too (CRD schema on the status subresource).
    with pytest.raises(ApiException) as e:
        co.patch_namespaced_custom_object_status(
            GROUP, "v1", ns, "gateways", "gw",
            {"status": {"conditions": [dict(cond, observedGeneration=-1)]}},
        )
    assert e.value.status == 422

    # A watch from before the status write sees it.
    w = watch.Watch()
    seen = []
    for ev in w.stream(co.list_namespaced_custom_object, GROUP, "v1", ns, "gateways",
                       resource_version=rv, timeout_seconds=10):
        seen.append(ev["type"])
        conds = ev["object"].get("status", {}).get("conditions", [])
        if ev["type"] == "MODIFIED" and conds and conds[0].get("reason") == "Accepted":
            w.stop()
            break
    else:
        pytest.fail(f"watch did not see the status write; events: {seen}")


def test_reference_grant_served_in_v1_and_v1beta1(api, ns):
    co = client.CustomObjectsApi(api)
    body = {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "allow"},
        "spec": {
            "from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "other"}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
    co.create_namespaced_custom_object(GROUP, "v1beta1", ns, "referencegrants", body)
    got = co.get_namespaced_custom_object(GROUP, "v1", ns, "referencegrants", "allow")
    assert got["apiVersion"] == f"{GROUP}/v1"
    assert got["spec"]["to"] == [{"group": "", "kind": "Service"}]


# ------------------------------------------------------------------------------ core objects


def test_endpointslice_loopback_address_is_rejected(api, ns):
    """The API server refuses loopback EndpointSlice addresses (ValidateEndpointIP).

    Callers that point backends at 127.0.0.1 cannot express that as an EndpointSlice on
    a real API server; a non-loopback address of this host is accepted.
    """
    disc = client.DiscoveryV1Api(api)

    def slice_(name, addr):
        return {
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [addr], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": 41234, "protocol": "TCP"}],
        }

    with pytest.raises(ApiException) as e:
        disc.create_namespaced_endpoint_slice(ns, slice_("loop", "127.0.0.1"))
    assert e.value.status == 422
    assert "loopback" in e.value.body
    disc.create_namespaced_endpoint_slice(ns, slice_("ok", "10.1.2.3"), _preload_content=False)


def test_namespace_deletion_needs_explicit_cleanup(cluster, api, ns):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cm"}, "data": {"a": "b"}})
    create_gw(api, ns, gateway("gw"))
    core.create_namespaced_pod(ns, {"metadata": {"name": "p"},
                                    "spec": {"containers": [{"name": "c", "image": "x"}]}})
    core.delete_namespace(ns)
    # No namespace controller: it stays Terminating and its content stays.
    assert core.read_namespace(ns).status.phase == "Terminating"
    assert core.read_namespaced_config_map("cm", ns).data == {"a": "b"}
    cluster.delete_namespace(ns)
    with pytest.raises(ApiException) as e:
        core.read_namespace(ns)
    assert e.value.status == 404
    s, _ = cluster.request(f"/apis/{GROUP}/v1/namespaces/{ns}/gateways/gw")
    assert s == 404


def test_kubectl_sees_gateways(cluster, ns, api):
    if cluster.kubectl_path is None:
        pytest.skip("kubectl not built (BUILD_KUBECTL=0)")
    create_gw(api, ns, gateway("k"))
    out = cluster.kubectl("get", "gateways", "-n", ns, "-o", "name").stdout
    assert out.strip() == "gateway.gateway.networking.k8s.io/k"


# ------------------------------------------------------------------------------ lifecycle


def test_experimental_channel():
    with TestCluster(crds="experimental") as c:
        assert "xbackendtrafficpolicies.gateway.networking.x-k8s.io" in c.installed_crds
        assert not c.skipped_manifests
        s, body = c.request("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                            "gateways.gateway.networking.k8s.io")
        assert json.loads(body)["metadata"]["annotations"]["gateway.networking.k8s.io/channel"] == "experimental"


def test_stop_leaves_no_processes_ports_or_files():
    c = TestCluster(crds=None)
    with c:
        pids, ports, tmp = list(c.pids.values()), c.ports, c.dir
        assert len(pids) == 2 and all(port_open(p) for p in ports[:2])
        assert c.request("/readyz")[0] == 200
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} still exists"
    for p in ports:
        assert not port_open(p), f"port {p} still open"
    assert not tmp.exists()
    c.stop()  # idempotent
