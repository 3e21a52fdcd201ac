"""Frontend mTLS: every kind of bad client certificate is refused under AllowValidOnly.

Guide: Gateway API TLS documentation, "Client Certificate Validation (Frontend mTLS)"
(shared/guides/gateway-api-tls-configuration.txt), and GEP-91:

    AllowValidOnly: In this mode, the gateway will accept connections only if the client
    presents a valid certificate. This certificate must successfully pass validation
    against the CA certificates specified in caCertificateRefs.

"Valid" is X.509 path validation (RFC 5280 6): a chain from the leaf to a CA in the
bundle, every certificate inside its validity window, and a leaf usable for TLS client
authentication (RFC 5280 4.2.1.12: an extendedKeyUsage without id-kp-clientAuth rules
it out). The bundle here holds roots only, as the guides' ``ca.crt`` does; a client
signed by an intermediate must send that intermediate itself. A bundle may hold
several CAs (the Core form is one ConfigMap; its content is PEM): clients of either are
accepted. How deep a chain may be is implementation-specific; the profile states it
(``Profile.max_chain_depth``), and implementations whose profile does not are not tested
for it.

Upstream: GatewayFrontendClientCertificateValidation checks one wrong CA; the rest is
ours. Each refusal is paired with a valid client on the same listener.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest

from mtls_conformance import manifests as m

from mtls_conformance.fixtures.guide import HOSTNAME

pytestmark = pytest.mark.features("GatewayFrontendClientCertificateValidation")

GATEWAY = "mtls-bad-clients"
PORT = 8443
NOW = datetime.datetime.now(datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class LeafOnly:
    """A client that sends its leaf without the intermediate that signed it."""

    name: str
    chain_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def second_ca(mtls_pki):
    return mtls_pki.authority("bundle-second-ca")


@pytest.fixture(scope="module")
def chain_root(mtls_pki):
    """A root in the bundle whose clients are all signed by intermediates; without a
    pathLenConstraint, so that a chain one deeper than any profile's max_chain_depth exists."""
    return mtls_pki.authority("bundle-chain-root", path_length=None)


@pytest.fixture(scope="module")
def gw(mtls_namespace, mtls_gateway_class, mtls_backend, mtls_pki, deploy_gateway,
       guide_tls_objects, client_ca, second_ca, chain_root):
    ns = mtls_namespace
    backend = mtls_backend(ns, "httpbin", port=8000)
    bundle = mtls_pki.bundle(client_ca, second_ca, chain_root)
    gateway = m.gateway(
        GATEWAY, ns, gateway_class=mtls_gateway_class,
        frontend=m.frontend_tls(default=m.validation(m.object_ref("ca-bundle"), mode="AllowValidOnly")),
        listeners=[m.https_listener("https", PORT, certificate="https-cert")])
    route = m.http_route("httpbin-https", ns, hostnames=[HOSTNAME], parents=[m.parent_ref(GATEWAY)],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    return deploy_gateway(gateway, *guide_tls_objects, m.ca_configmap("ca-bundle", ns, bundle),
                          routes=[route])


def _client(authority, name, **kwargs):
    return authority.issue_client(name, common_name=f"client.{HOSTNAME}", dns_names=[HOSTNAME],
                                  **kwargs)


def bad_client(kind: str, request):
    client_ca = request.getfixturevalue("client_ca")
    if kind == "no certificate":
        return None
    if kind == "untrusted CA":
        return request.getfixturevalue("untrusted_client")
    if kind == "expired":
        return request.getfixturevalue("expired_client")
    if kind == "not yet valid":
        return _client(client_ca, "not-yet-valid-client", not_before=NOW + datetime.timedelta(days=1),
                       not_after=NOW + datetime.timedelta(days=30))
    if kind == "server-auth-only EKU":
        return _client(client_ca, "server-auth-only-client", server_auth_only=True)
    if kind == "intermediate not sent":
        leaf = _client(request.getfixturevalue("chain_root").intermediate("issuing-ca"),
                       "leaf-without-intermediate")
        return LeafOnly(leaf.name, chain_file=leaf.cert_file, key_file=leaf.key_file)
    raise ValueError(kind)


BAD = ["no certificate", "untrusted CA", "expired", "not yet valid", "server-auth-only EKU",
       "intermediate not sent"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_client_certificate_is_rejected(gw, kind, request, valid_client):
    gw.expect_pair(PORT, sni=HOSTNAME, accepted=valid_client, refused=bad_client(kind, request),
                   what=f"AllowValidOnly refuses a client certificate: {kind}")


def test_leaf_with_its_intermediate_in_the_chain_is_accepted(gw, chain_root):
    """The bundle holds only the root; the client sends leaf + intermediate."""
    leaf = _client(chain_root.intermediate("issuing-ca"), "leaf-with-intermediate")
    gw.expect_ok(PORT, sni=HOSTNAME, cert=leaf,
                 what="a leaf signed by an intermediate that the client sends along")


@pytest.mark.parametrize("authority", ["client_ca", "second_ca"])
def test_clients_of_every_ca_in_the_bundle_are_accepted(gw, authority, request):
    client = _client(request.getfixturevalue(authority), f"bundle-client-{authority}")
    gw.expect_ok(PORT, sni=HOSTNAME, cert=client,
                 what=f"a client of {authority}, one of several CAs in the ConfigMap's ca.crt")


def _chain(root, depth: int):
    """A CA ``depth`` intermediates below ``root``."""
    authority = root
    for level in range(1, depth + 1):
        authority = authority.intermediate(f"depth-{level}")
    return authority


@pytest.mark.features("FrontendClientCertificateChainDepth")
def test_chain_deeper_than_the_limit_is_rejected(gw, chain_root, mtls_profile):
    limit = mtls_profile.max_chain_depth
    if limit is None:
        pytest.skip(f"the implementation profile {mtls_profile.key!r} states no chain depth limit "
                    f"(Profile.max_chain_depth)")
    at_limit = _client(_chain(chain_root, limit), f"chain-{limit}-intermediates")
    too_deep = _client(_chain(chain_root, limit + 1), f"chain-{limit + 1}-intermediates")
    gw.expect_pair(PORT, sni=HOSTNAME, accepted=at_limit, refused=too_deep,
                   accepted_what=f"{limit} intermediate CAs, the profile's max_chain_depth, must be let in",
                   what=f"{limit + 1} intermediate CAs, one more than max_chain_depth {limit}, are refused")
