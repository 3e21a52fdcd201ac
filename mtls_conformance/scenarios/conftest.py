"""What every scenario module shares: the certificates of the guides, and a deployed Gateway.

The guides make one CA for the clients, one server certificate for ``example.com`` and
``*.example.com``, and client certificates signed by that CA. The suite adds the clients
that must be refused: one from a CA nobody trusts, and one that has expired.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping

import pytest

from mtls_conformance import manifests as m
from mtls_conformance.client import GatewayClient, Settings
from mtls_conformance.profiles import Profile
from mtls_conformance.target import ObjectRef, SystemRootsUnavailable, Target
from mtls_conformance.fixtures.echo import ServerTLS

from .guide import HOSTNAME


@pytest.fixture(scope="session")
def server_authority(mtls_pki):
    """Signs the listeners' certificates; the probe trusts only this CA."""
    return mtls_pki.authority("gateway-server-ca")


@pytest.fixture(scope="session")
def server_credential(server_authority):
    return server_authority.issue_server(HOSTNAME, f"*.{HOSTNAME}", name="https-cert")


@pytest.fixture(scope="session")
def client_ca(mtls_pki):
    """The CA that the Gateway trusts for client certificates (ConfigMap ``ca-cert``)."""
    return mtls_pki.authority("client-ca")


@pytest.fixture(scope="session")
def untrusted_ca(mtls_pki):
    return mtls_pki.authority("untrusted-ca")


@pytest.fixture(scope="session")
def valid_client(client_ca):
    return client_ca.issue_client("valid-client", common_name=f"client.{HOSTNAME}",
                                  dns_names=[HOSTNAME, f"*.{HOSTNAME}"])


@pytest.fixture(scope="session")
def untrusted_client(untrusted_ca):
    return untrusted_ca.issue_client("untrusted-client", common_name=f"client.{HOSTNAME}",
                                     dns_names=[HOSTNAME])


@pytest.fixture(scope="session")
def expired_client(client_ca):
    now = datetime.datetime.now(datetime.timezone.utc)
    return client_ca.issue_client("expired-client", common_name=f"client.{HOSTNAME}",
                                  dns_names=[HOSTNAME],
                                  not_before=now - datetime.timedelta(days=30),
                                  not_after=now - datetime.timedelta(days=1))


DeployGateway = Callable[..., GatewayClient]


@pytest.fixture(scope="module")
def deploy_gateway(mtls_target: Target, mtls_profile: Profile, mtls_settings: Settings,
                   server_authority) -> DeployGateway:
    """Apply a Gateway with the objects it needs, wait until it is programmed, return a client.

    ``ready=False`` skips the waits, for scenarios about Gateways that must not be ready.
    """

    def deploy(gateway: Mapping, *objects: Mapping, routes: Iterable[Mapping] = (),
               ready: bool = True) -> GatewayClient:
        routes = list(routes)
        mtls_target.apply(*objects, gateway, *routes)
        ref = ObjectRef.of(gateway)
        timeout = mtls_settings.timing.condition_timeout
        if ready:
            mtls_target.wait_for_condition(ref, "Accepted", timeout=timeout)
            mtls_target.wait_for_condition(ref, "Programmed", timeout=timeout)
            for route in routes:
                mtls_target.wait_for_route_condition(ObjectRef.of(route), ref, "Accepted",
                                                     timeout=timeout)
        return GatewayClient(mtls_target, ref, trust=server_authority, profile=mtls_profile,
                             settings=mtls_settings)

    return deploy


@pytest.fixture(scope="module")
def guide_tls_objects(mtls_namespace, server_credential, client_ca) -> list[dict]:
    """The listener certificate Secret and the client CA ConfigMap, as the guides create them."""
    return [m.tls_secret("https-cert", mtls_namespace, cert_pem=server_credential.chain_pem,
                         key_pem=server_credential.key_pem),
            m.ca_configmap("ca-cert", mtls_namespace, client_ca.cert_pem)]


# -- backend TLS ------------------------------------------------------------------------
#: The names upstream's tls-checks-certificate carries (conformance/utils/suite).
BACKEND_HOSTNAME = "abc.example.com"
BACKEND_OTHER_HOSTNAME = "other.example.com"
BACKEND_SPIFFE_ID = "spiffe://abc.example.com/test-identity"


@pytest.fixture(scope="session")
def backend_ca(mtls_pki):
    """Signs the backends' serving certificates (upstream: ``tls-checks-ca-certificate``)."""
    return mtls_pki.authority("tls-checks-ca")


@pytest.fixture(scope="session")
def backend_credential(backend_ca):
    """Upstream's ``tls-checks-certificate``: two DNS names and a SPIFFE URI."""
    return backend_ca.issue_server(BACKEND_HOSTNAME, BACKEND_OTHER_HOSTNAME, uris=[BACKEND_SPIFFE_ID],
                                   name="tls-checks-certificate")


@pytest.fixture(scope="session")
def system_trusted_ca(mtls_pki, mtls_target: Target):
    """A CA standing in for a public one: the harness adds it to the gateway's system roots."""
    ca = mtls_pki.authority("simulated-public-root-ca")
    try:
        mtls_target.trust_as_system_roots(ca.cert_pem)
    except SystemRootsUnavailable as exc:
        pytest.skip(f"{exc}; a real public host can be used instead with --external-backend-host")
    return ca


@pytest.fixture(scope="module")
def deploy_tls_backend(mtls_backend, request: pytest.FixtureRequest):
    """Factory: ``deploy_tls_backend(kind, namespace, service, credential=..., port=8443,
    client_ca=None, require_client_cert=False) -> Backend`` with kind "echo" (the echo
    backend, which reports SNI and peer certificates) or "nginx" (Debian's nginx)."""

    def deploy(kind: str, namespace: str, service: str, *, credential, port: int = 8443,
               client_ca=None, require_client_cert: bool = False):
        client_ca_pem = client_ca.cert_pem if client_ca is not None else None
        if kind == "nginx":
            nginx = request.getfixturevalue("mtls_nginx_backend")
            return nginx(namespace, service, port=port, credential=credential, client_ca_pem=client_ca_pem,
                         require_client_cert=require_client_cert)
        tls = ServerTLS(cert_chain_pem=credential.chain_pem, key_pem=credential.key_pem,
                        client_ca_pem=client_ca_pem, require_client_cert=require_client_cert)
        return mtls_backend(namespace, service, port=port, tls=tls)

    return deploy
