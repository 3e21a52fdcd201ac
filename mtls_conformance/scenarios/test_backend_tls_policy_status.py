"""BackendTLSPolicy status: conflicts, invalid references, and generations.

Guide: Gateway API BackendTLSPolicy v1 (apis/v1/backendtlspolicy_types.go), summarised in
the Gateway API TLS documentation, "Upstream TLS" (shared/guides/gateway-api-tls-configuration.txt):

    When more than one BackendTLSPolicy selects the same target and sectionName,
    implementations MUST determine precedence using the following criteria, continuing
    on ties: The older policy by creation timestamp takes precedence. [...] The policy
    appearing first in alphabetical order by {namespace}/{name}. [...] For any
    BackendTLSPolicy that does not take precedence, the implementation MUST ensure the
    Accepted Condition is set to status: False, with Reason Conflicted.

    [An invalid CACertificateRef:] the implementation MUST ensure the ResolvedRefs
    Condition on the BackendTLSPolicy is set to status: False [InvalidCACertificateRef,
    InvalidKind] [...] Connections using an invalid CACertificateRef MUST fail, and the
    client MUST receive an HTTP 5xx error response. If ALL CACertificateRefs are invalid
    [...] Accepted [...] False, with a Reason NoValidCACertificate.

    If an implementation does not support the WellKnownCACertificates field, or the
    supplied value is not recognized, [...] Accepted [...] False, with a Reason Invalid.

A policy that cannot be honoured must never turn into plaintext or an unverified
connection: each such case runs against a plaintext backend (a request reaching it is a
plaintext fallback) and a TLS backend (a request reaching it skipped verification).

Upstream: BackendTLSPolicyConflictResolution, BackendTLSPolicyInvalidCACertificateRef,
BackendTLSPolicyInvalidKind, BackendTLSPolicyObservedGenerationBump, and BackendTLSPolicy's
"Changing the content of a ConfigMap [...] should be reconciled".
"""

from __future__ import annotations

import datetime

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.client import Sibling
from mtls_conformance.expect import backend_saw_plaintext, backend_saw_tls, pause
from mtls_conformance.target import ObjectRef, WaitTimeout

from mtls_conformance.fixtures.guide import BACKEND_HOSTNAME, BACKEND_OTHER_HOSTNAME, HOSTNAME

pytestmark = pytest.mark.features("BackendTLSPolicy")

GATEWAY = "same-namespace"
HTTP_PORT = 80
CA = "tls-checks-ca-certificate"


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_target, deploy_gateway, backend_ca):
    ns = mtls_namespace
    return deploy_gateway(m.gateway(GATEWAY, ns, gateway_class=mtls_gateway_class,
                                    listeners=[m.http_listener("http", HTTP_PORT)]),
                          m.ca_configmap(CA, ns, backend_ca.cert_pem))


@pytest.fixture(scope="module")
def deploy(gw, mtls_namespace, mtls_target, mtls_backend, backend_credential, deploy_tls_backend):
    """Factory: a backend Service (``tls`` True: the echo backend over TLS), routed at
    ``/<service>``; returns the Backend."""

    def make(service, *, tls=True):
        if tls:
            backend = deploy_tls_backend("echo", mtls_namespace, service, port=443, credential=backend_credential)
        else:
            backend = mtls_backend(mtls_namespace, service, port=443)
        route = m.http_route(service, mtls_namespace, hostnames=[HOSTNAME], parents=[m.parent_ref(GATEWAY)],
                             rules=[m.rule(m.backend_ref(service, 443), path=f"/{service}")])
        mtls_target.apply(route)
        mtls_target.wait_for_route_condition(ObjectRef.of(route), gw.gateway, "Accepted",
                                             timeout=gw.settings.timing.condition_timeout)
        return backend

    return make


def policy(name, namespace, service, *, hostname=BACKEND_HOSTNAME, ca_refs=None, section=None, well_known=None):
    refs = [m.object_ref(CA)] if ca_refs is None and well_known is None else (ca_refs or [])
    return m.backend_tls_policy(name, namespace, targets=[m.policy_target(service, section_name=section)],
                                hostname=hostname, ca_refs=refs, well_known=well_known)


def wait_policy(target, gw, p, type_, status, reason):
    return target.wait_for_policy_condition(ObjectRef.of(p), gw.gateway, type_, status, reason=reason,
                                            timeout=gw.settings.timing.condition_timeout)


@pytest.fixture(scope="module")
def sibling(gw, mtls_namespace, mtls_target, deploy) -> Sibling:
    """A correctly configured TLS backend on the same Gateway: every case where a policy
    cannot be honoured first shows that this one answers over TLS, so a gateway that fails
    every TLS backend does not pass them."""
    service = "sibling-ok"
    deploy(service)
    p = policy(service, mtls_namespace, service)
    mtls_target.apply(p)
    wait_policy(mtls_target, gw, p, "Accepted", "True", "Accepted")
    return Sibling(service=service, backend_sni=BACKEND_HOSTNAME, path=f"/{service}")


def request(gw, service, **kwargs):
    return dict(sni=None, host=HOSTNAME, plaintext=True, path=f"/{service}", **kwargs)


def _created(target, p) -> datetime.datetime:
    stamp = target.get(ObjectRef.of(p))["metadata"]["creationTimestamp"]
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def wait_for_next_second(after: datetime.datetime | None = None) -> None:
    """creationTimestamp has a resolution of one second: wait until the clock has left
    ``after``'s second, so that the next object is younger; or, without ``after``, until
    early in a new second, so that two objects created right away share a second."""
    now = datetime.datetime.now(datetime.timezone.utc)
    boundary = (after or now).replace(microsecond=0) + datetime.timedelta(seconds=1)
    while now < boundary or (after is None and now.microsecond > 500_000):
        # A wait on the wall clock itself. The other setups' checks take their turns
        # meanwhile, and may give this one its turn back late in a second: then wait again.
        boundary = max(boundary, now.replace(microsecond=0) + datetime.timedelta(seconds=1))
        pause((boundary - now).total_seconds() + 0.01)
        now = datetime.datetime.now(datetime.timezone.utc)


def expect_winner(target, gw, winner, loser, *, sni, service):
    wait_policy(target, gw, winner, "Accepted", "True", "Accepted")
    wait_policy(target, gw, loser, "Accepted", "False", "Conflicted")
    gw.expect_ok(HTTP_PORT, **request(gw, service), check=backend_saw_tls(sni=sni),
                 what=f"the governing policy {winner['metadata']['name']} has hostname {sni}")


def _conflict_by_age(mtls_namespace, mtls_target, deploy):
    ns = mtls_namespace
    deploy("conflict-by-age")
    older = policy("z-older", ns, "conflict-by-age", hostname=BACKEND_OTHER_HOSTNAME)
    younger = policy("a-younger", ns, "conflict-by-age", hostname=BACKEND_HOSTNAME)
    mtls_target.apply(older)
    yield  # the next second is waited for with the other setups' checks
    wait_for_next_second(_created(mtls_target, older))
    mtls_target.apply(younger)
    return older, younger


@pytest.mark.configure_ahead(setup=_conflict_by_age)
def test_older_policy_wins_a_conflict(gw, mtls_target, mtls_configured):
    older, younger = mtls_configured
    assert _created(mtls_target, older) < _created(mtls_target, younger)
    expect_winner(mtls_target, gw, older, younger, sni=BACKEND_OTHER_HOSTNAME, service="conflict-by-age")


#: Attempts at creating two policies within one second before the test says it cannot.
SAME_SECOND_ATTEMPTS = 3


def _conflict_by_name(gw, mtls_namespace, mtls_target, deploy):
    ns = mtls_namespace
    deploy("conflict-by-name")
    first_by_name = policy("a-policy", ns, "conflict-by-name", hostname=BACKEND_OTHER_HOSTNAME)
    second_by_name = policy("b-policy", ns, "conflict-by-name", hostname=BACKEND_HOSTNAME)
    ages: tuple = ()
    yield  # the next second is waited for with the other setups' checks
    for _ in range(SAME_SECOND_ATTEMPTS):
        wait_for_next_second()
        mtls_target.apply(second_by_name, first_by_name)  # created first: only the name may decide for a-policy
        ages = (_created(mtls_target, first_by_name), _created(mtls_target, second_by_name))
        if ages[0] == ages[1]:
            return first_by_name, second_by_name
        # The apply straddled a second: the older would win by age, which is another test.
        mtls_target.delete(first_by_name, second_by_name)
        for p in (first_by_name, second_by_name):
            mtls_target.wait_for(ObjectRef.of(p), lambda obj: None if obj is None else "still exists",
                                 what="the policy deleted", timeout=gw.settings.timing.condition_timeout)
    pytest.skip(f"could not create two BackendTLSPolicies within one second of creationTimestamp in "
                f"{SAME_SECOND_ATTEMPTS} attempts (last: {ages[0]:%H:%M:%S} and {ages[1]:%H:%M:%S}); the "
                f"name tie-break needs two policies of the same age")


@pytest.mark.configure_ahead(setup=_conflict_by_name)
def test_name_decides_between_policies_of_the_same_age(gw, mtls_target, mtls_configured):
    first_by_name, second_by_name = mtls_configured
    expect_winner(mtls_target, gw, first_by_name, second_by_name, sni=BACKEND_OTHER_HOSTNAME,
                  service="conflict-by-name")


BACKENDS = [pytest.param(False, id="plaintext-backend"), pytest.param(True, id="tls-backend")]


def expect_not_honoured(gw, target, p, backend, service, *, accepted_reason, resolved=None, what, sibling):
    wait_policy(target, gw, p, "Accepted", "False", accepted_reason)
    if resolved:
        wait_policy(target, gw, p, "ResolvedRefs", "False", resolved)
    gw.expect_backend_refused(HTTP_PORT, **request(gw, service), backend=backend, sibling=sibling,
                              what=f"{what}: the gateway answers 5xx and sends the backend nothing")


def _invalid_kind(tls, mtls_namespace, mtls_target, deploy, sibling):
    service = f"invalid-kind-{'tls' if tls else 'plain'}"
    backend = deploy(service, tls=tls)
    p = policy(service, mtls_namespace, service,
               ca_refs=[m.object_ref("invalid-kind", group="invalid.io", kind="InvalidKind")])
    mtls_target.apply(p)
    return service, backend, p, sibling


@pytest.mark.parametrize("tls", BACKENDS)
@pytest.mark.configure_ahead(setup=_invalid_kind)
def test_invalid_kind_ca_ref(gw, tls, mtls_target, mtls_configured):
    service, backend, p, sibling = mtls_configured
    expect_not_honoured(gw, mtls_target, p, backend, service, accepted_reason="NoValidCACertificate",
                        resolved="InvalidKind", what="the only caCertificateRef is of kind invalid.io/InvalidKind",
                        sibling=sibling)


INVALID_CA_REFS = {
    "nonexistent": None,
    "no-ca-crt": m.ca_configmap("no-ca-crt", "NS", "", key="other.crt"),
    "malformed-pem": m.ca_configmap("malformed-pem", "NS", "-----BEGIN CERTIFICATE-----\nnot base64\n"
                                                           "-----END CERTIFICATE-----\n"),
}


def _invalid_ca_ref(case, tls, mtls_namespace, mtls_target, deploy, sibling):
    ns = mtls_namespace
    service = f"{case}-{'tls' if tls else 'plain'}"
    backend = deploy(service, tls=tls)
    configmap = INVALID_CA_REFS[case]
    if configmap is not None:
        mtls_target.apply({**configmap, "metadata": {"name": case, "namespace": ns}})
    p = policy(service, ns, service, ca_refs=[m.object_ref(case)])
    mtls_target.apply(p)
    return service, backend, p, sibling


@pytest.mark.parametrize("tls", BACKENDS)
@pytest.mark.parametrize("case", list(INVALID_CA_REFS))
@pytest.mark.configure_ahead(setup=_invalid_ca_ref)
def test_invalid_ca_certificate_ref(gw, case, tls, mtls_target, mtls_configured):
    service, backend, p, sibling = mtls_configured
    expect_not_honoured(gw, mtls_target, p, backend, service, accepted_reason="NoValidCACertificate",
                        resolved="InvalidCACertificateRef", what=f"the only caCertificateRef is {case}",
                        sibling=sibling)


def _unknown_well_known(tls, mtls_namespace, mtls_target, deploy, sibling):
    service = f"unknown-well-known-{'tls' if tls else 'plain'}"
    backend = deploy(service, tls=tls)
    p = policy(service, mtls_namespace, service, well_known="example.com/unknown-bundle")
    mtls_target.apply(p)
    return service, backend, p, sibling


@pytest.mark.parametrize("tls", BACKENDS)
@pytest.mark.configure_ahead(setup=_unknown_well_known)
def test_unknown_well_known_ca_certificates_is_invalid(gw, tls, mtls_target, mtls_configured):
    service, backend, p, sibling = mtls_configured
    expect_not_honoured(gw, mtls_target, p, backend, service, accepted_reason="Invalid",
                        what="wellKnownCACertificates example.com/unknown-bundle is not recognised", sibling=sibling)


def _no_such_section(mtls_namespace, mtls_target, deploy):
    service = "no-such-section"
    deploy(service, tls=False)
    p = policy(service, mtls_namespace, service, section="no-such-port")
    mtls_target.apply(p)
    return service, p


@pytest.mark.configure_ahead(setup=_no_such_section)
def test_section_name_of_no_port_is_target_not_found(gw, mtls_target, mtls_configured):
    """The policy targets nothing; the port it does not name stays plain HTTP.

    Its status for the Gateway is Accepted=False/TargetNotFound, or no entry at all: the spec
    lists TargetNotFound among the reasons for Accepted=False ("the policy is attached to an
    invalid target resource", apis/v1/policy_types.go v1.7.0 129, 146-148) but asks for an
    entry only "when this policy attaches to a parent", and "an empty list means the Policy
    is not relevant for any ancestors" (248-267). Envoy Gateway v1.9.1 writes none. So the
    entry is waited for as long as any status is; without one, the traffic decides.
    """
    service, p = mtls_configured

    def has_entry(obj: dict | None) -> str | None:
        return None if _entry_for(obj, gw.gateway, mtls_target.controller_name) else "no entry"

    try:
        mtls_target.wait_for(ObjectRef.of(p), has_entry, what=f"a status.ancestors entry for Gateway {gw.gateway.name}",
                             timeout=gw.settings.timing.condition_timeout)
    except WaitTimeout:
        pass  # not relevant for this Gateway: allowed (above)
    else:
        wait_policy(mtls_target, gw, p, "Accepted", "False", "TargetNotFound")
    gw.expect_ok(HTTP_PORT, **request(gw, service), check=backend_saw_plaintext,
                 what="a policy for a port the Service does not have applies to none of its ports")


def _entry_for(obj: dict | None, gateway: ObjectRef, controller: str) -> dict | None:
    """The gateway's own status.ancestors entry for ``gateway`` in a policy, if any."""
    for entry in ((obj or {}).get("status") or {}).get("ancestors") or []:
        ref = entry.get("ancestorRef") or {}
        if ref.get("name") == gateway.name and ref.get("namespace") in (None, gateway.namespace) and \
                entry.get("controllerName") in (None, controller):
            return entry
    return None


def _generation_bump(gw, mtls_namespace, mtls_target, deploy):
    """A policy of its own, checked, then its hostname changed (ahead with the module: configure_ahead)."""
    service = "observed-generation-bump"
    deploy(service)
    p = policy(service, mtls_namespace, service, hostname=BACKEND_HOSTNAME, section="https")
    mtls_target.apply(p)
    yield  # configured; the checks and the change run once every module is configured
    wait_policy(mtls_target, gw, p, "Accepted", "True", "Accepted")
    gw.expect_ok(HTTP_PORT, **request(gw, service), check=backend_saw_tls(sni=BACKEND_HOSTNAME))
    changed = policy(service, mtls_namespace, service, hostname=BACKEND_OTHER_HOSTNAME, section="https")
    mtls_target.apply(changed)
    assert mtls_target.get(ObjectRef.of(changed))["metadata"]["generation"] == 2
    return service, changed


@pytest.mark.configure_ahead(setup=_generation_bump)
def test_observed_generation_follows_the_spec(gw, mtls_target, mtls_configured):
    service, changed = mtls_configured
    for type_ in ("Accepted", "ResolvedRefs"):  # both at generation 2, as wait_for_policy_condition checks
        wait_policy(mtls_target, gw, changed, type_, "True", type_)
    gw.expect_ok(HTTP_PORT, **request(gw, service), check=backend_saw_tls(sni=BACKEND_OTHER_HOSTNAME),
                 what="the new hostname is the SNI")


def _reconcile(gw, mtls_namespace, mtls_target, deploy, backend_ca, sibling):
    """A policy of its own naming a ConfigMap that does not exist yet, checked, then the
    ConfigMap created (ahead with the module: configure_ahead); the test empties it after."""
    ns = mtls_namespace
    service = "reconcile-test"
    backend = deploy(service)
    p = policy(service, ns, service, ca_refs=[m.object_ref("reconcile-ca")])
    mtls_target.apply(p)
    yield  # configured; the checks and the change run once every module is configured
    what = "the ConfigMap the policy names does not exist yet"
    expect_not_honoured(gw, mtls_target, p, backend, service, accepted_reason="NoValidCACertificate",
                        resolved="InvalidCACertificateRef", what=what, sibling=sibling)
    mtls_target.apply(m.ca_configmap("reconcile-ca", ns, backend_ca.cert_pem))
    return service, backend, p, sibling


@pytest.mark.configure_ahead(setup=_reconcile)
def test_ca_configmap_changes_are_reconciled(gw, mtls_namespace, mtls_target, mtls_configured):
    service, backend, p, sibling = mtls_configured
    wait_policy(mtls_target, gw, p, "Accepted", "True", "Accepted")
    gw.expect_ok(HTTP_PORT, **request(gw, service), check=backend_saw_tls(sni=BACKEND_HOSTNAME),
                 what="the ConfigMap now holds the backend's CA")
    mtls_target.apply(m.ca_configmap("reconcile-ca", mtls_namespace, ""))
    expect_not_honoured(gw, mtls_target, p, backend, service, accepted_reason="NoValidCACertificate",
                        resolved="InvalidCACertificateRef", what="the ConfigMap's ca.crt was emptied",
                        sibling=sibling)
