"""Backend TLS: the kgateway guide's steps that no other module checks.

Guide: kgateway "Backend TLS" (shared/guides/kgateway-backend-tls.txt):

    curl -vi http://$INGRESS_GW_ADDRESS:8080/ -H "host: example.com:8080"

a Host header with the listener's port, which must route like ``example.com``; and the
cleanup, ``kubectl delete backendtlspolicy,configmap,httproute -A -l app=nginx``: the
policy is deleted and re-created. The Gateway API TLS documentation ("Upstream TLS") says
a BackendTLSPolicy makes the gateway originate TLS to the backend: once deleted, the
gateway no longer does (a TLS-only backend then cannot be reached), and once re-created,
it does again, with the new policy's hostname as the SNI.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.expect import backend_saw_tls, echo_tls, eventually, reached_backend
from mtls_conformance.target import ObjectRef

from mtls_conformance.fixtures.guide import BACKEND_HOSTNAME, HOSTNAME

pytestmark = pytest.mark.features("BackendTLSPolicy")

GATEWAY = "http-guide-steps"  # the guide's Gateway: an HTTP listener on 8080
HTTP_PORT = 8080
CA = "guide-steps-ca"


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, deploy_gateway, backend_ca):
    ns = mtls_namespace
    return deploy_gateway(m.gateway(GATEWAY, ns, gateway_class=mtls_gateway_class,
                                    listeners=[m.http_listener("http", HTTP_PORT)]),
                          m.ca_configmap(CA, ns, backend_ca.cert_pem))


def tls_backend(gw, ns, service, deploy_tls_backend, backend_credential):
    backend = deploy_tls_backend("echo", ns, service, port=443, credential=backend_credential)
    route = m.http_route(service, ns, hostnames=[HOSTNAME], parents=[m.parent_ref(GATEWAY)],
                         rules=[m.rule(m.backend_ref(service, 443), path=f"/{service}")])
    gw.target.apply(route)
    gw.target.wait_for_route_condition(ObjectRef.of(route), gw.gateway, "Accepted",
                                       timeout=gw.settings.timing.condition_timeout)
    return backend


def policy(ns, service):
    return m.backend_tls_policy(service, ns, targets=[m.policy_target(service)], hostname=BACKEND_HOSTNAME,
                                ca_refs=[m.object_ref(CA)])


def wait_accepted(gw, p):
    gw.target.wait_for_policy_condition(ObjectRef.of(p), gw.gateway, "Accepted", timeout=gw.settings.timing.condition_timeout)


def _host_with_port(gw, mtls_namespace, deploy_tls_backend, backend_credential):
    """A TLS backend and its policy of their own (ahead with the module: configure_ahead)."""
    ns, service = mtls_namespace, "host-with-port"
    tls_backend(gw, ns, service, deploy_tls_backend, backend_credential)
    p = policy(ns, service)
    gw.target.apply(p)
    return service, p


@pytest.mark.configure_ahead(setup=_host_with_port)
def test_host_header_with_the_listener_port(gw, mtls_configured):
    service, p = mtls_configured
    wait_accepted(gw, p)
    gw.expect_ok(HTTP_PORT, sni=None, host=HOSTNAME, plaintext=True, path=f"/{service}", service=service,
                 check=backend_saw_tls(sni=BACKEND_HOSTNAME), what="setup: Host without a port")
    gw.expect_ok(HTTP_PORT, sni=None, host=f"{HOSTNAME}:{HTTP_PORT}", plaintext=True, path=f"/{service}",
                 service=service, check=backend_saw_tls(sni=BACKEND_HOSTNAME),
                 what=f"Host {HOSTNAME}:{HTTP_PORT} (the guide's curl): the port is not part of the hostname "
                      f"the route matches")


def _policy_deleted(gw, mtls_namespace, deploy_tls_backend, backend_credential):
    """A TLS backend and its policy of their own, checked in force, then the policy deleted
    (ahead with the module: configure_ahead); the test re-creates it after checking the deletion."""
    ns, service = mtls_namespace, "policy-recreated"
    backend = tls_backend(gw, ns, service, deploy_tls_backend, backend_credential)
    request = dict(sni=None, host=HOSTNAME, plaintext=True, path=f"/{service}")
    p = policy(ns, service)
    gw.target.apply(p)
    yield  # configured; the checks and the change run once every module is configured
    wait_accepted(gw, p)
    gw.expect_ok(HTTP_PORT, **request, service=service, check=backend_saw_tls(sni=BACKEND_HOSTNAME),
                 what="setup: the policy in force")

    gw.target.delete(p)
    return ns, service, backend, request, p


@pytest.mark.configure_ahead(setup=_policy_deleted)
def test_policy_deleted_and_recreated(gw, mtls_configured):
    ns, service, backend, request, p = mtls_configured
    gw.target.wait_for(ObjectRef.of(p), lambda obj: None if obj is None else "still exists",
                       what="the policy deleted", timeout=gw.settings.timing.condition_timeout)

    def judge(outcome) -> str | None:
        if reached_backend(outcome) and echo_tls(outcome) is not None:
            return (f"got {outcome.describe()}: backend {backend.service} got the request over TLS (SNI "
                    f"{echo_tls(outcome).get('serverName')!r}) after its BackendTLSPolicy was deleted")
        return None

    try:
        eventually(lambda: gw.request(HTTP_PORT, **request), judge, timing=gw.settings.timing,
                   what="no TLS to the backend once its policy is gone", changed_at=gw.changed_at)
    except AssertionError as exc:
        raise AssertionError(f"listener port {HTTP_PORT} (Host {HOSTNAME}, /{service}): BackendTLSPolicy "
                             f"{ns}/{service} was deleted, so the gateway must stop originating TLS with its "
                             f"settings; {exc}") from None

    gw.target.apply(policy(ns, service))
    wait_accepted(gw, p)
    gw.expect_ok(HTTP_PORT, **request, service=service, check=backend_saw_tls(sni=BACKEND_HOSTNAME),
                 what="the BackendTLSPolicy re-created after its deletion is in force again")
