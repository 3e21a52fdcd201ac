"""TLS contexts and client-certificate verification for the data plane.

Theory of operation
-------------------
Every HTTPS connection is a pyOpenSSL ``SSL.Connection(ctx, None)`` driven through
memory BIOs by ``refgateway._edge`` (asyncio's own TLS does not send fatal alerts, see
docs/refgateway.md). A connection starts on the port's *base* context; the SNI
callback (which OpenSSL also calls when the client sends no SNI) picks the listener
and switches the connection to that listener's context with ``set_context``.

OpenSSL copies the certificate and the trust store on ``SSL_set_SSL_CTX`` but *not*
the verify mode, so the SNI callback also sets the verify mode on the connection
itself, exactly as nginx does in its SNI handler.

pyOpenSSL >= 26.2 freezes a Context once a connection used it, so contexts are built
complete and never changed. ``ContextCache`` keeps them keyed by their content
(certificate, key, validation): a configuration change that leaves a listener alone
keeps its context, and a changed listener gets a brand-new one.

Session resumption is disabled: a resumed session would skip client-certificate
verification and could carry a verdict across listeners or CA rotations.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

from .translator import ALLOW_INSECURE_FALLBACK, Listener, Validation

__all__ = ["ContextCache", "verify_mode", "short_reason", "pin_mismatch", "leaf_identity", "ALERT_HANDSHAKE_FAILURE"]

# A plaintext TLS alert record: level fatal(2), description handshake_failure(40).
ALERT_HANDSHAKE_FAILURE = b"\x15\x03\x03\x00\x02\x02\x28"

_X509_V_FLAG_NO_CHECK_TIME = 0x200000  # not exported by pyOpenSSL

#: Intermediate CAs allowed between a client leaf and a trusted root (OpenSSL verify
#: depth), the same as NGINX Gateway Fabric's ssl_verify_depth.
MAX_CLIENT_CHAIN_DEPTH = 4

# X509_V_ERR_* -> the short reason reported in x-refgateway-client-verify.
_REASONS = {
    2: "unknown-ca", 19: "unknown-ca", 20: "unknown-ca", 21: "unknown-ca", 18: "self-signed",
    9: "not-yet-valid", 10: "expired", 7: "bad-signature", 24: "invalid-ca", 26: "bad-purpose",
}


def short_reason(error: int | str) -> str:
    if isinstance(error, str):
        return error
    return _REASONS.get(error, f"verify-error-{error}")


def leaf_identity(cert: x509.Certificate) -> tuple[str, str]:
    """(lowercase hex SHA-256 of the DER, RFC 4514 subject)."""
    der = cert.public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest(), cert.subject.rfc4514_string()


def pin_mismatch(cert: x509.Certificate, v: Validation) -> str | None:
    """Why the leaf fails the listener's pins, or None. Both pin kinds must match."""
    if v.pin_hashes and leaf_identity(cert)[0] not in v.pin_hashes:
        return "hash-mismatch"
    if v.pin_sans:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = set(san.get_values_for_type(x509.DNSName)) | set(
                san.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            names = set()
        if not names & v.pin_sans:
            return "san-mismatch"
    return None


def verify_mode(v: Validation | None, faults: frozenset[str]) -> int:
    if v is None:
        return SSL.VERIFY_NONE
    if v.mode == ALLOW_INSECURE_FALLBACK:
        return SSL.VERIFY_NONE if "fallback-without-cert-request" in faults else SSL.VERIFY_PEER
    if "accept-no-client-cert" in faults:
        return SSL.VERIFY_PEER
    return SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


class ContextCache:
    """Builds and memoises one server Context per distinct listener TLS configuration."""

    def __init__(self, *, faults: frozenset[str], sni_callback: Callable, verify_callback: Callable,
                 alpn: tuple[bytes, ...] = (b"h2", b"http/1.1")):
        self._faults = faults
        self._sni = sni_callback
        self._verify = verify_callback
        self._alpn = alpn
        self._cache: dict[tuple, SSL.Context] = {}
        self._x509: dict[bytes, list[crypto.X509]] = {}

    def _certs(self, pem: bytes) -> list[crypto.X509]:
        if pem not in self._x509:
            self._x509[pem] = [crypto.X509.from_cryptography(c) for c in x509.load_pem_x509_certificates(pem)]
        return self._x509[pem]

    def context(self, ls: Listener) -> SSL.Context:
        key = (ls.cert_pem, ls.key_pem, ls.validation)
        ctx = self._cache.get(key)
        if ctx is None:
            ctx = self._cache[key] = self._build(ls)
        return ctx

    def retain(self, listeners: list[Listener]) -> None:
        """Forget contexts no current listener uses (old ones stay alive in their connections)."""
        keep = {(ls.cert_pem, ls.key_pem, ls.validation) for ls in listeners}
        self._cache = {k: v for k, v in self._cache.items() if k in keep}
        pems = {p for k in keep for p in ((k[2].ca_pems if k[2] else ()) + (k[0],)) if p}
        self._x509 = {k: v for k, v in self._x509.items() if k in pems}

    def _build(self, ls: Listener) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        chain = self._certs(ls.cert_pem)
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, ls.key_pem))
        ctx.check_privatekey()
        ctx.set_tlsext_servername_callback(self._sni)
        alpn = self._alpn

        def select(conn, offered):
            for proto in alpn:
                if proto in offered:
                    return proto
            return SSL.NO_OVERLAPPING_PROTOCOLS

        ctx.set_alpn_select_callback(select)
        v = ls.validation
        if v is not None:
            store = ctx.get_cert_store()
            seen = set()
            for pem in () if "distrust-client-ca" in self._faults else v.ca_pems:
                for ca in self._certs(pem):
                    fp = ca.digest("sha256")
                    if fp not in seen:  # duplicates across refs make add_cert fail
                        seen.add(fp)
                        store.add_cert(ca)
            if "accept-expired-client-cert" in self._faults:
                store.set_flags(_X509_V_FLAG_NO_CHECK_TIME)
            if "ignore-chain-depth" not in self._faults:
                ctx.set_verify_depth(MAX_CLIENT_CHAIN_DEPTH)
        # OpenSSL verifies client certificates for the purpose "sslclient" by default
        # on the server side, so a serverAuth-only certificate fails with bad-purpose.
        ctx.set_verify(verify_mode(v, self._faults), self._verify)
        return ctx
