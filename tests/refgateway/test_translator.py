"""Unit tests of the pure parts: translator, status stamping, routing decisions."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from refgateway import routing
from refgateway._tls import pin_mismatch
from refgateway.translator import stamp_transitions, translate

from .conftest import (NS, ca_configmap, gateway, gateway_class, http_route, https_listener, service_objects,
                       tls_secret, validation)


def key(obj):
    m = obj["metadata"]
    m.setdefault("generation", 1)
    return (obj["kind"], m.get("namespace") or "", m["name"])


def run(*objs, faults=()):
    return translate({key(o): o for o in objs}, faults=frozenset(faults))


def listener_status(statuses, name, gw="gw"):
    doc = statuses[("Gateway", NS, gw)]["status"]
    return next(x for x in doc["listeners"] if x["name"] == name)


def conds(st):
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


@pytest.fixture
def base(pki):
    return [gateway_class(), tls_secret("server-cert", pki["server"]), ca_configmap("ca", pki["client_ca"]),
            *service_objects(1234)]


def test_gateway_class_status():
    _, st = run(gateway_class())
    doc = st[("GatewayClass", "", "ref")]
    assert "namespace" not in doc["metadata"]
    assert conds(doc["status"]) == {"Accepted": ("True", "Accepted"), "SupportedVersion": ("True", "SupportedVersion")}
    names = [f["name"] for f in doc["status"]["supportedFeatures"]]
    assert "GatewayFrontendClientCertificateValidationInsecureFallback" in names and names == sorted(names)


def test_other_controllers_are_ignored():
    gc = gateway_class()
    gc["spec"]["controllerName"] = "example.com/other"
    plan, st = run(gc, gateway("gw", [https_listener("https", 443)]))
    assert st == {} and not plan.ports


def test_invalid_ca_refs_reasons(base, pki):
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "other"},
             "data": {"ca.crt": pki["client_ca"].cert_pem.bytes().decode()}}
    gw = gateway("gw", [https_listener(n, p) for n, p in [("ok", 443), ("missing", 7443), ("kind", 8443), ("xns", 6443)]], {
        "default": validation("ca"),
        "perPort": [
            {"port": 7443, "tls": validation("nope")},
            {"port": 8443, "tls": {"validation": {"caCertificateRefs": [{"group": "", "kind": "Service", "name": "ca"}]}}},
            {"port": 6443, "tls": {"validation": {"caCertificateRefs": [
                {"group": "", "kind": "ConfigMap", "name": "ca", "namespace": "other"}]}}},
        ]})
    plan, st = run(*base, other, gw)
    assert conds(listener_status(st, "ok"))["ResolvedRefs"] == ("True", "ResolvedRefs")
    for name, reason in [("missing", "InvalidCACertificateRef"), ("kind", "InvalidCACertificateKind"), ("xns", "RefNotPermitted")]:
        c = conds(listener_status(st, name))
        assert c["ResolvedRefs"] == ("False", reason)
        assert c["Accepted"] == ("False", "NoValidCACertificate")
        assert c["Programmed"][0] == "False"
    assert conds(st[("Gateway", NS, "gw")]["status"])["Accepted"] == ("True", "ListenersNotValid")
    assert not plan.ports[(NS, "gw", 7443)].listeners[0].servable
    # With a ReferenceGrant the cross-namespace ref resolves.
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "g", "namespace": "other"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": NS}],
                      "to": [{"group": "", "kind": "ConfigMap"}]}}
    _, st = run(*base, other, gw, grant)
    assert conds(listener_status(st, "xns"))["ResolvedRefs"] == ("True", "ResolvedRefs")


def test_partly_valid_refs_serve_with_valid_ones(base):
    gw = gateway("gw", [https_listener("https", 443)], {"default": validation("ca", "nope")})
    plan, st = run(*base, gw)
    c = conds(listener_status(st, "https"))
    assert c["ResolvedRefs"] == ("False", "InvalidCACertificateRef") and c["Accepted"] == ("True", "Accepted")
    ls = plan.ports[(NS, "gw", 443)].listeners[0]
    assert ls.servable and len(ls.validation.ca_pems) == 1


def test_per_port_only_affects_https(base):
    gw = gateway("gw", [{"name": "http", "port": 8080, "protocol": "HTTP"}, https_listener("https", 443)],
                 {"default": validation("ca"), "perPort": [{"port": 8080, "tls": validation("nope")}]})
    plan, st = run(*base, gw)
    assert conds(listener_status(st, "http"))["Accepted"] == ("True", "Accepted")
    assert plan.ports[(NS, "gw", 8080)].listeners[0].validation is None


def test_insecure_condition_and_faults(base):
    gw = gateway("gw", [https_listener("https", 443)], {"default": validation("ca", mode="AllowInsecureFallback")})
    plan, st = run(*base, gw)
    assert conds(st[("Gateway", NS, "gw")]["status"])["InsecureFrontendValidationMode"] == ("True", "ConfigurationChanged")
    assert plan.ports[(NS, "gw", 443)].listeners[0].validation.mode == "AllowInsecureFallback"
    plan, st = run(*base, gw, faults=["no-insecure-condition", "reject-insecure-fallback"])
    assert "InsecureFrontendValidationMode" not in conds(st[("Gateway", NS, "gw")]["status"])
    assert plan.ports[(NS, "gw", 443)].listeners[0].validation.mode == "AllowValidOnly"


def test_fail_open_fault_reports_valid(base):
    gw = gateway("gw", [https_listener("https", 443)], {"default": validation("nope")})
    plan, st = run(*base, gw, faults=["fail-open-invalid-ca"])
    assert conds(listener_status(st, "https"))["Accepted"] == ("True", "Accepted")
    ls = plan.ports[(NS, "gw", 443)].listeners[0]
    assert ls.servable and ls.validation is None


def test_pinning_options(base):
    opts = {"kgateway.dev/verify-certificate-hash": "AB:" * 31 + "CD",
            "refgateway.mtls-conformance.dev/verify-subject-alt-names": "a.example, spiffe://x/y",
            "example.org/whatever": "ignored"}
    gw = gateway("gw", [https_listener("https", 443, options=opts)], {"default": validation("ca")})
    plan, st = run(*base, gw)
    assert conds(listener_status(st, "https"))["Accepted"] == ("True", "Accepted")
    v = plan.ports[(NS, "gw", 443)].listeners[0].validation
    assert v.pin_hashes == {"ab" * 31 + "cd"} and v.pin_sans == {"a.example", "spiffe://x/y"}
    assert run(*base, gw, faults=["ignore-pinning"])[0].ports[(NS, "gw", 443)].listeners[0].validation.pin_sans == set()


@pytest.mark.parametrize("options, needle", [
    ({"refgateway.mtls-conformance.dev/verify-subject-alt-names": "a"}, "need spec.tls.frontend"),
    ({"refgateway.mtls-conformance.dev/bogus": "1"}, "unknown listener option"),
    ({"kgateway.dev/verify-certificate-hash": "xyz"}, "malformed certificate hash"),
])
def test_invalid_options(base, options, needle):
    frontend = None if "need" in needle else {"default": validation("ca")}
    _, st = run(*base, gateway("gw", [https_listener("https", 443, options=options)], frontend))
    acc = next(c for c in listener_status(st, "https")["conditions"] if c["type"] == "Accepted")
    assert (acc["status"], acc["reason"]) == ("False", "UnsupportedValue") and needle in acc["message"]


def test_pin_mismatch(pki):
    leaf = x509.load_pem_x509_certificate(pki["client"].cert_chain_pems[0].bytes())
    digest = hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
    from refgateway.translator import Validation
    assert pin_mismatch(leaf, Validation("AllowValidOnly", (), frozenset({"client.example.com"}), frozenset({digest}))) is None
    assert pin_mismatch(leaf, Validation("AllowValidOnly", (), frozenset({"other"}))) == "san-mismatch"
    assert pin_mismatch(leaf, Validation("AllowValidOnly", (), frozenset(), frozenset({"0" * 64}))) == "hash-mismatch"


def test_route_status_reasons(base):
    gw = gateway("gw", [https_listener("https", 443, hostname="a.example.com")])
    gw["spec"]["listeners"][0]["allowedRoutes"] = {"namespaces": {"from": "Same"}}
    other_ns = http_route("r1", "gw", ns="other")
    other_ns["spec"]["parentRefs"][0]["namespace"] = NS
    wrong_host = http_route("r2", "gw", hostnames=["b.example.com"])
    missing_backend = http_route("r3", "gw", backend_svc="nothere")
    plan, st = run(*base, gw, other_ns, wrong_host, missing_backend)

    def parent(ns, name):
        return conds(st[("HTTPRoute", ns, name)]["status"]["parents"][0])
    assert parent("other", "r1")["Accepted"] == ("False", "NotAllowedByListeners")
    assert parent(NS, "r2")["Accepted"] == ("False", "NoMatchingListenerHostname")
    assert parent(NS, "r3")["Accepted"] == ("True", "Accepted")
    assert parent(NS, "r3")["ResolvedRefs"] == ("False", "BackendNotFound")
    assert listener_status(st, "https")["attachedRoutes"] == 1
    rule = plan.ports[(NS, "gw", 443)].listeners[0].rules[0]
    assert routing.pick_endpoint(rule.backends, __import__("random").Random(0))[:2] == (500, None)


def test_stamp_transitions_keeps_time_until_status_changes(base):
    gw = gateway("gw", [https_listener("https", 443)], {"default": validation("ca")})
    _, st = run(*base, gw)
    first = stamp_transitions(st[("Gateway", NS, "gw")], None, "T1")
    _, st = run(*base, gw)
    second = stamp_transitions(st[("Gateway", NS, "gw")], first, "T2")
    assert second == first
    _, st = run(*[o for o in base if o["kind"] != "ConfigMap"], gw)
    third = stamp_transitions(st[("Gateway", NS, "gw")], second, "T3")
    lc = {c["type"]: c["lastTransitionTime"] for c in third["status"]["listeners"][0]["conditions"]}
    assert lc["Accepted"] == "T3" and lc["Conflicted"] == "T1"


def test_stale_observed_generation_fault(base):
    gw = gateway("gw", [https_listener("https", 443)])
    gw["metadata"]["generation"] = 7
    _, st = run(*base, gw)
    assert {c["observedGeneration"] for c in st[("Gateway", NS, "gw")]["status"]["conditions"]} == {7}
    _, st = run(*base, gw, faults=["stale-observed-generation"])
    assert {c["observedGeneration"] for c in st[("Gateway", NS, "gw")]["status"]["conditions"]} == {1}


def test_sni_selection_and_misdirected(base, pki):
    gw = gateway("gw", [https_listener("exact", 443, hostname="a.example.com"),
                        https_listener("wild", 443, hostname="*.example.com"),
                        https_listener("any", 443)])
    plan, _ = run(*base, gw)
    port = plan.ports[(NS, "gw", 443)]
    by = {ls.name: ls for ls in port.listeners}
    assert routing.select_listener(port.listeners, "a.example.com").name == "exact"
    assert routing.select_listener(port.listeners, "b.example.com").name == "wild"
    assert routing.select_listener(port.listeners, "other.org").name == "any"
    assert routing.misdirected(port, by["wild"], "a.example.com")  # a more specific listener owns it
    assert not routing.misdirected(port, by["exact"], "a.example.com")
    assert routing.misdirected(port, by["exact"], "other.org")  # the catch-all listener owns it
    assert routing.misdirected(port, by["any"], "b.example.com")
    assert routing.split_host("A.Example.com:8443") == "a.example.com"


def test_conflicts(base):
    gw = gateway("gw", [https_listener("a", 443), https_listener("b", 443),
                        {"name": "h", "port": 80, "protocol": "HTTP"}, https_listener("c", 80, hostname="x.example")])
    _, st = run(*base, gw)
    assert conds(listener_status(st, "a"))["Conflicted"] == ("True", "HostnameConflict")
    assert conds(listener_status(st, "h"))["Conflicted"] == ("True", "ProtocolConflict")


def cluster_trust_bundle(name, pem, signer=None):
    spec = {"trustBundle": pem}
    if signer:
        spec["signerName"] = signer
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "ClusterTrustBundle", "metadata": {"name": name},
            "spec": spec}


def bundle_validation(name, **extra):
    return {"validation": {"caCertificateRefs": [
        {"group": "certificates.k8s.io", "kind": "ClusterTrustBundle", "name": name, **extra}]}}


def test_cluster_trust_bundle_refs(base, pki):
    """GEP-5075: by name, cluster-scoped; missing or namespaced refs are invalid; without the
    API the kind is invalid and the feature is not advertised."""
    pem = pki["client_ca"].cert_pem.bytes().decode()
    gw = gateway("gw", [https_listener(n, p) for n, p in [("ok", 443), ("missing", 7443), ("namespaced", 8443)]], {
        "default": bundle_validation("trusted"),
        "perPort": [{"port": 7443, "tls": bundle_validation("nope")},
                    {"port": 8443, "tls": bundle_validation("trusted", namespace=NS)}]})
    objs = {key(o): o for o in (*base, cluster_trust_bundle("trusted", pem), gw)}
    plan, st = translate(objs)
    assert conds(listener_status(st, "ok"))["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert plan.ports[(NS, "gw", 443)].listeners[0].validation.ca_pems == (pem.encode(),)
    for name in ("missing", "namespaced"):
        c = conds(listener_status(st, name))
        assert c["ResolvedRefs"] == ("False", "InvalidCACertificateRef")
        assert c["Accepted"] == ("False", "NoValidCACertificate")
    features = [f["name"] for f in st[("GatewayClass", "", "ref")]["status"]["supportedFeatures"]]
    assert "ClusterTrustBundle" in features

    plan, st = translate(objs, cluster_trust_bundles=False)
    c = conds(listener_status(st, "ok"))
    assert c["ResolvedRefs"] == ("False", "InvalidCACertificateKind")
    assert c["Accepted"] == ("False", "NoValidCACertificate")
    features = [f["name"] for f in st[("GatewayClass", "", "ref")]["status"]["supportedFeatures"]]
    assert "ClusterTrustBundle" not in features


def test_cluster_trust_bundle_signer_does_not_widen_trust(base, pki):
    client_pem = pki["client_ca"].cert_pem.bytes().decode()
    other_pem = pki["other_ca"].cert_pem.bytes().decode()
    gw = gateway("gw", [https_listener("https", 443)], {"default": bundle_validation("example.com:s:a")})
    objs = {key(o): o for o in (*base, gw, cluster_trust_bundle("example.com:s:a", client_pem, "example.com/s"),
                                cluster_trust_bundle("example.com:s:b", other_pem, "example.com/s"))}
    plan, _ = translate(objs)
    assert plan.ports[(NS, "gw", 443)].listeners[0].validation.ca_pems == (client_pem.encode(),)
    plan, _ = translate(objs, faults=frozenset({"cluster-trust-bundle-signer-wide"}))
    assert other_pem.encode() in plan.ports[(NS, "gw", 443)].listeners[0].validation.ca_pems[0]
