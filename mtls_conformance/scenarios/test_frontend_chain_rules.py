"""Frontend mTLS: client chains that break one rule of RFC 5280 path validation are refused.

Guide: Gateway API TLS documentation, "Client Certificate Validation (Frontend mTLS)"
(shared/guides/gateway-api-tls-configuration.txt), and GEP-91:

    AllowValidOnly: In this mode, the gateway will accept connections only if the client
    presents a valid certificate. This certificate must successfully pass validation
    against the CA certificates specified in caCertificateRefs.

"Valid" is RFC 5280 path validation (section 6.1), and these are its structural rules
beyond the validity windows, EKU and chain depth of test_frontend_bad_client_certs.py:
every intermediate is a CA (basicConstraints cA, 4.2.1.9) allowed to sign certificates
(keyUsage keyCertSign, 4.2.1.3) within its pathLenConstraint (4.2.1.9); names stay
inside their issuers' name constraints (4.2.1.10); no certificate carries a critical
extension the verifier does not understand (4.2); every signature verifies with the
issuer's key, and every certificate of the chain, not only the leaf, is within its
validity (6.1.3 (a)). They are what the feature GatewayFrontendClientCertificateValidation
promises ("valid"), so they are checked under it; no feature of our own is needed.

SHA-1 signatures and RSA-1024 keys are not forbidden by RFC 5280: refusing them is the
implementation's policy. Only implementations whose profile says they refuse them
(``Profile.refused_weak_crypto``) are tested for it.

The chains are generated per run (fixtures/chains.py) under a root in the listener's CA
bundle; each negative is paired with a valid sibling from the same CA that differs only
in the property under test (same listener, same request; only the client certificate
differs). Case ids name the x509-limbo testcase of the same family where one exists.

Upstream: GatewayFrontendClientCertificateValidation sends one client of a wrong CA
(docs/upstream.md); none of these chains.
"""

from __future__ import annotations

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.fixtures.chains import CASES, ChainFactory

from mtls_conformance.fixtures.guide import HOSTNAME

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation")

GATEWAY = "mtls-chain-rules"
PORT = 8443

STRUCTURAL = [c for c in CASES if not c.policy]
POLICY = [c for c in CASES if c.policy]


@pytest.fixture(scope="module")
def chain_rules_root(mtls_pki):
    """The bundle's only CA; every chain of this module starts below it. No pathLenConstraint
    of its own, so that the pathLen case is decided by the intermediate that states one."""
    return mtls_pki.authority("chain-rules-root", path_length=None)


@pytest.fixture(scope="module")
def chains(chain_rules_root, tmp_path_factory):
    return ChainFactory(chain_rules_root, tmp_path_factory.mktemp("chain-rules"))


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_backend, mtls_pki, deploy_gateway,
       guide_tls_objects, chain_rules_root):
    ns = mtls_namespace
    backend = mtls_backend(ns, "httpbin", port=8000)
    gateway = m.gateway(
        GATEWAY, ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(default=m.validation(m.object_ref("chain-rules-ca"), mode="AllowValidOnly")),
        listeners=[m.https_listener("https", PORT, certificate="https-cert")])
    route = m.http_route("httpbin-https", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(GATEWAY)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    return deploy_gateway(gateway, *guide_tls_objects,
                          m.ca_configmap("chain-rules-ca", ns, mtls_pki.bundle(chain_rules_root)),
                          routes=[route])


def _check(gw, chains, case, request):
    # The case's section and family go into the JUnit properties as well as the message
    # (user_properties, as the harness's own properties: record_property warns under xunit2).
    request.node.user_properties.append(("rfc5280_section", case.rfc))
    if case.family:
        request.node.user_properties.append(("case_family", case.family))
    sibling, negative = case.build(chains)
    family = f" ({case.family})" if case.family else ""
    gw.expect_pair(PORT, sni=HOSTNAME, accepted=sibling, refused=negative,
                   accepted_what=f"the valid sibling of {case.id!r} ({sibling.name}) must be let in",
                   what=f"RFC 5280 {case.rfc}: {case.what}{family}")


@pytest.mark.parametrize("case", STRUCTURAL, ids=[c.id for c in STRUCTURAL])
def test_chain_breaking_an_rfc5280_rule_is_rejected(gw, chains, case, request):
    """RFC 5280 4.1.2.5, 4.2, 4.2.1.3, 4.2.1.9, 4.2.1.10 and 6.1.3-6.1.5 (each case names its
    section in fixtures/chains.py CASES, its failure message and its JUnit properties): a
    chain that breaks one rule is refused, its valid sibling let in."""
    _check(gw, chains, case, request)


@pytest.mark.parametrize("case", POLICY, ids=[c.id for c in POLICY])
def test_weak_crypto_the_profile_refuses_is_rejected(gw, chains, case, mtls_profile, request):
    """Not RFC 5280 (it permits SHA-1 and any RSA size): the implementation's stated policy,
    Profile.refused_weak_crypto. The sibling differs only in the digest or the key size."""
    if case.policy not in mtls_profile.refused_weak_crypto:
        pytest.skip(f"the implementation profile {mtls_profile.key!r} does not say it refuses "
                    f"{case.policy} (Profile.refused_weak_crypto)")
    _check(gw, chains, case, request)
