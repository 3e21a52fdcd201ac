"""The kubernetes target's --system-ca-bundle: what it adds and what it puts back."""

import pytest

from mtls_conformance.target import SystemRootsFile, TargetError

CA_A = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
CA_B = b"-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"


def test_roots_are_added_once_and_the_file_is_removed_if_it_was_not_there(tmp_path):
    bundle = tmp_path / "roots.pem"
    roots = SystemRootsFile(bundle)
    roots.add(CA_A)
    inode = bundle.stat().st_ino
    roots.add(CA_A)
    roots.add(CA_B)
    assert bundle.read_bytes() == CA_A + CA_B
    assert bundle.stat().st_ino != inode, "a new file each time, so a gateway never reads half of one"
    roots.restore()
    assert not bundle.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_existing_bundle_is_kept_and_restored(tmp_path):
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(CA_B)
    roots = SystemRootsFile(bundle)
    roots.add(CA_A)
    assert bundle.read_bytes() == CA_B + CA_A
    roots.restore()
    assert bundle.read_bytes() == CA_B
    roots.restore()  # twice is harmless
    assert bundle.read_bytes() == CA_B


def test_a_bundle_in_a_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(TargetError, match=r"--system-ca-bundle .*/nowhere/roots.pem: its directory does not exist"):
        SystemRootsFile(tmp_path / "nowhere" / "roots.pem")
