"""Implementation profiles: what is particular to one implementation, in one place.

Scenarios never test for an implementation by name. Whatever differs between vendors
(which features they claim, the option keys they use for SAN or hash pinning, how they
tell a backend what they verified, which HTTP statuses they answer a rejected client
certificate with) is a field here, keyed by the GatewayClass controllerName.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import yaml

from . import features

UPSTREAM_FRONTEND = ("Gateway", "HTTPRoute", "ReferenceGrant",
                     "GatewayFrontendClientCertificateValidation",
                     "GatewayFrontendClientCertificateValidationInsecureFallback")


@dataclasses.dataclass(frozen=True)
class IdentityForwarding:
    """How the gateway tells a backend what it verified about the client certificate."""

    verify_header: str
    verified: str          # value when the certificate chain verified
    absent: str            # value when the client sent no certificate
    failed_prefix: str     # values starting with this: a certificate was sent and failed
    sha256_header: str | None = None  # carries the SHA-256 of the presented leaf


@dataclasses.dataclass(frozen=True)
class Pinning:
    """Listener ``tls.options`` keys that pin client certificates beyond the CA."""

    subject_alt_names: str | None = None
    certificate_hash: str | None = None


@dataclasses.dataclass(frozen=True)
class Profile:
    key: str
    name: str
    controller_names: tuple[str, ...] = ()
    organization: str = ""
    project: str = ""
    url: str = ""
    supported_features: frozenset[str] = frozenset()
    identity: IdentityForwarding | None = None
    pinning: Pinning | None = None
    #: HTTP statuses that count as a rejected client certificate when the implementation
    #: completes the handshake and answers instead (never under --strict-rejection).
    rejection_statuses: frozenset[int] = frozenset()
    ca_in_secret: bool = False
    #: The most intermediate CAs between a client leaf and a trusted root that the
    #: implementation verifies (OpenSSL/nginx "verify depth"); None: not stated, not tested.
    max_chain_depth: int | None = None
    notes: str = ""

    def with_features(self, names: Iterable[str]) -> Profile:
        return dataclasses.replace(self, supported_features=frozenset(names))


REFGATEWAY = Profile(
    key="refgateway",
    name="refgateway (the bundled reference gateway)",
    controller_names=("mtls-conformance.dev/refgateway",),
    organization="mtls-conformance",
    project="refgateway",
    url="https://mtls-conformance.dev/refgateway",
    supported_features=frozenset(features.FEATURES),
    identity=IdentityForwarding(
        verify_header="x-refgateway-client-verify", verified="SUCCESS", absent="NONE",
        failed_prefix="FAILED", sha256_header="x-refgateway-client-cert-sha256"),
    pinning=Pinning(subject_alt_names="refgateway.mtls-conformance.dev/verify-subject-alt-names",
                    certificate_hash="refgateway.mtls-conformance.dev/verify-certificate-hash"),
    ca_in_secret=True,
    max_chain_depth=4,
)

GENERIC = Profile(key="generic", name="an implementation without a profile",
                  supported_features=frozenset(UPSTREAM_FRONTEND))

BUILTIN: dict[str, Profile] = {p.key: p for p in (REFGATEWAY, GENERIC)}


class ProfileError(ValueError):
    pass


def for_controller(controller_name: str) -> Profile | None:
    return next((p for p in BUILTIN.values() if controller_name in p.controller_names), None)


def load(path: Path) -> Profile:
    """A user's profile file (YAML with the fields of Profile)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"--profile {path}: cannot read it: {exc}") from exc
    if not isinstance(data, dict) or "key" not in data:
        raise ProfileError(f"--profile {path}: expected a mapping with at least 'key' and 'name'")
    known = {f.name for f in dataclasses.fields(Profile)}
    unknown = set(data) - known
    if unknown:
        raise ProfileError(f"--profile {path}: unknown fields {sorted(unknown)}; known: {sorted(known)}")
    for name in data.get("supported_features", ()):
        try:
            features.lookup(name)
        except features.UnknownFeature as exc:
            raise ProfileError(f"--profile {path}: {exc}") from None
    try:
        return Profile(
            **{**data,
               "controller_names": tuple(data.get("controller_names", ())),
               "supported_features": frozenset(data.get("supported_features", ())),
               "rejection_statuses": frozenset(data.get("rejection_statuses", ())),
               "identity": IdentityForwarding(**data["identity"]) if data.get("identity") else None,
               "pinning": Pinning(**data["pinning"]) if data.get("pinning") else None})
    except TypeError as exc:
        raise ProfileError(f"--profile {path}: {exc}") from exc
