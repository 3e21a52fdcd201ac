"""The PKI factory: each kind of certificate carries exactly the properties promised."""

from __future__ import annotations

import datetime
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mtls_conformance.fixtures.pki import PKI, Authority, Credential

NOW = datetime.datetime.now(datetime.timezone.utc)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def openssl_verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", *map(str, args)], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki-test") / "pki")


@pytest.fixture(scope="module")
def root(pki: PKI) -> Authority:
    return pki.authority("trusted")


def assert_key_matches(credential: Credential) -> None:
    key = serialization.load_pem_private_key(credential.key_pem, password=None)
    assert key.public_key() == load(credential.cert_pem).public_key(), (
        f"{credential.name}: private key does not belong to the certificate"
    )


def test_authority_is_cached_by_name_and_roots_are_distinct(pki: PKI, root: Authority) -> None:
    assert pki.authority("trusted") is root
    other = pki.authority("untrusted")
    assert other.cert_pem != root.cert_pem
    # Distinct subjects: a verifier holding both roots must not confuse them.
    assert load(other.cert_pem).subject != load(root.cert_pem).subject
    assert pki.bundle(root, other) == root.cert_pem + other.cert_pem
    assert root.cert_file.read_bytes() == root.cert_pem


def test_bundle_of_nothing_is_refused(pki: PKI) -> None:
    with pytest.raises(ValueError, match="empty trust bundle trusts nothing"):
        pki.bundle()


def test_root_is_a_self_signed_ca(root: Authority) -> None:
    cert = load(root.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)


def test_server_credential(root: Authority) -> None:
    cred = root.issue_server("gw.example.org", "*.apps.example.org")
    cert = load(cred.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["gw.example.org", "*.apps.example.org"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku(cert)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(load(root.cert_pem))
    # Issued by a root: nothing to send besides the leaf.
    assert cred.chain_pem == cred.cert_pem
    assert cred.name == "gw.example.org"
    assert_key_matches(cred)
    assert cred.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_client_credential_has_client_auth_only_and_the_given_names(root: Authority) -> None:
    cred = root.issue_client(
        "alice",
        dns_names=["alice.example.org"],
        uris=["spiffe://example.org/ns/default/sa/alice"],
        common_name="alice",
    )
    cert = load(cred.cert_pem)
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["alice.example.org"]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/ns/default/sa/alice"]
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["alice"]
    assert cert.not_valid_before_utc < NOW < cert.not_valid_after_utc
    cert.verify_directly_issued_by(load(root.cert_pem))
    assert_key_matches(cred)


def test_client_credential_without_names_has_no_san_and_no_cn(root: Authority) -> None:
    cert = load(root.issue_client("anonymous").cert_pem)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []


def test_server_auth_only_client_credential(root: Authority) -> None:
    cert = load(root.issue_client("wrong-purpose", server_auth_only=True).cert_pem)
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_expired_and_not_yet_valid_client_credentials(root: Authority) -> None:
    expired = load(root.issue_client("expired", not_after=NOW - datetime.timedelta(days=1)).cert_pem)
    assert expired.not_valid_after_utc < NOW
    future = load(root.issue_client("future", not_before=NOW + datetime.timedelta(days=1)).cert_pem)
    assert future.not_valid_before_utc > NOW


def test_inverted_validity_window_is_refused(root: Authority) -> None:
    when = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    with pytest.raises(ValueError, match=r"client certificate 'backwards': not_before \(2030-01-01T00:00:00\+00:00\) must be earlier"):
        root.issue_client("backwards", not_before=when, not_after=when)


def test_intermediate_leaves_carry_the_intermediate_in_their_chain(root: Authority) -> None:
    issuing = root.intermediate("issuing")
    assert root.intermediate("issuing") is issuing
    inter_cert = load(issuing.cert_pem)
    assert inter_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    inter_cert.verify_directly_issued_by(load(root.cert_pem))

    cred = issuing.issue_client("bob")
    assert cred.chain_pem == cred.cert_pem + issuing.cert_pem
    assert cred.chain_file.read_bytes() == cred.chain_pem
    load(cred.cert_pem).verify_directly_issued_by(inter_cert)

    # The root alone is enough once the peer sends the chain file...
    ok = openssl_verify("-CAfile", root.cert_file, "-untrusted", cred.chain_file, cred.cert_file)
    assert ok.returncode == 0, ok.stderr
    # ...and is not enough for the bare leaf, so the check above needed the intermediate.
    bare = openssl_verify("-CAfile", root.cert_file, cred.cert_file)
    assert bare.returncode != 0
    assert "unable to get local issuer certificate" in bare.stderr


def test_files_and_permissions(pki: PKI, root: Authority) -> None:
    cred = root.issue_client("perm-check")
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(cred.key_file.stat().st_mode) == 0o600
    for path in (cred.cert_file, cred.chain_file, cred.key_file):
        assert path.is_relative_to(pki.directory), f"{path} is outside the PKI directory {pki.directory}"
    assert cred.cert_file.read_bytes() == cred.cert_pem
    assert cred.key_file.read_bytes() == cred.key_pem
    # Every directory the PKI made is private, not only the top one.
    for directory in [p for p in pki.directory.rglob("*") if p.is_dir()]:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for key in pki.directory.rglob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_reusing_a_name_never_overwrites_files(root: Authority) -> None:
    first = root.issue_client("twice")
    second = root.issue_client("twice")
    assert first.key_file != second.key_file
    assert first.key_file.read_bytes() == first.key_pem
    assert second.cert_file.read_bytes() == second.cert_pem


def test_unsafe_names_stay_inside_the_directory(pki: PKI, root: Authority) -> None:
    cred = root.issue_client("../../escape attempt")
    assert cred.key_file.parent == root.cert_file.parent
    assert cred.name == "../../escape attempt"


def test_fingerprints_match_openssl(root: Authority) -> None:
    cred = root.issue_client("fingerprinted")
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cred.cert_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert out == f"sha256 Fingerprint={cred.sha256_colons}"
    assert cred.sha256 == cred.sha256_colons.replace(":", "").lower()
    assert len(cred.sha256) == 64


def test_openssl_purpose_check_separates_client_and_server_auth(root: Authority) -> None:
    good = root.issue_client("purpose-good")
    bad = root.issue_client("purpose-bad", server_auth_only=True)
    ok = openssl_verify("-purpose", "sslclient", "-CAfile", root.cert_file, good.cert_file)
    assert ok.returncode == 0, ok.stderr
    refused = openssl_verify("-purpose", "sslclient", "-CAfile", root.cert_file, bad.cert_file)
    assert refused.returncode != 0
    assert "unsuitable certificate purpose" in refused.stderr
    # The same certificate is fine for a server: only the purpose made it fail.
    as_server = openssl_verify("-purpose", "sslserver", "-CAfile", root.cert_file, bad.cert_file)
    assert as_server.returncode == 0, as_server.stderr


def test_mtls_pki_fixture(mtls_pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert mtls_pki.directory.is_relative_to(tmp_path_factory.getbasetemp())
    assert stat.S_IMODE(mtls_pki.directory.stat().st_mode) == 0o700


def test_a_root_without_path_length_takes_chains_of_any_depth(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    authority = pki.authority("deep-root", path_length=None)
    for level in range(1, 13):
        authority = authority.intermediate(f"depth-{level}")
    leaf = authority.issue_client("deep-leaf", common_name="deep.example.com")
    root_file = pki.authority("deep-root").cert_file
    assert openssl_verify("-CAfile", root_file, "-untrusted", leaf.chain_file, leaf.cert_file).returncode == 0
    # A root keeps its default constraint otherwise: nine levels, as trustme's.
    bounded = pki.authority("bounded-root")
    for level in range(1, 10):
        bounded = bounded.intermediate(f"depth-{level}")
    with pytest.raises(ValueError, match="path length is 0"):
        bounded.intermediate("depth-10")
