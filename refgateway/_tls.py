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

Session resumption (TLS 1.3 tickets, TLS 1.2 session IDs and tickets) is on, scoped to
the validation that made each session. OpenSSL looks a session up (session-ID cache,
ticket decryption) on the connection's *initial* context, before the SNI callback, and
``SSL_session_reused`` is already true inside that callback: the listener contexts'
own session-ID contexts and caches never take part (checked with OpenSSL 4.0.3; this
is the shape of nginx CVE-2025-23419). So a port starts every connection on a *session
context* of its own (``ContextCache.session_context``): it carries only the session
cache, the ticket keys and a session-ID context derived from the validations of the
port's listeners, and is replaced (new ticket keys, empty cache) whenever one of them
changes, e.g. a CA bundle. Within a port, ``SessionMemory`` decides in the SNI callback:
a resumed session is served only by a listener whose validation scope made it, and only
while the whole verified chain of its full handshake is still valid (the chain's earliest
notAfter, recorded then; a resumed session carries the leaf but not the chain).
In TLS 1.2 OpenSSL reports the session's original SNI to that callback, so a session
offered under another name stays on its original listener (another Host then gets 421).
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

from ._plan import ALLOW_INSECURE_FALLBACK, BackendTLS, Listener, Validation
from .faults import (ACCEPT_ANY_CLIENT_CERT, ACCEPT_ANY_ON_TLS12, ACCEPT_ANY_ON_TLS13, ACCEPT_BAD_CERTIFICATE_SIGNATURE,
                     ACCEPT_EXPIRED_CLIENT_CERT, ACCEPT_NON_CA_INTERMEDIATE, ACCEPT_NO_CLIENT_CERT,
                     BACKEND_IGNORE_SUBJECT_ALT_NAMES, BACKEND_SKIP_CHAIN_VERIFICATION,
                     BACKEND_SKIP_HOSTNAME_VERIFICATION, BACKEND_TRUST_SYSTEM_ROOTS, CHECK_LEAF_VALIDITY_ONLY,
                     CLIENT_SECURITY_LEVEL_0, CLIENT_SECURITY_LEVEL_1, DISTRUST_CLIENT_CA, FAIL_TLS_BACKENDS,
                     FALLBACK_WITHOUT_CERT_REQUEST, IGNORE_CA_KEY_USAGE, IGNORE_CHAIN_DEPTH, IGNORE_NAME_CONSTRAINTS,
                     IGNORE_PATH_LENGTH, IGNORE_UNKNOWN_CRITICAL_EXTENSIONS, INTERNAL_ERROR_FOR_BAD_CLIENT_CERT,
                     KEEP_LAST_BACKEND_CLIENT_CERT, REFUSE_AFTER_PROXYING, RESUMPTION_CHECKS_LEAF_EXPIRY_ONLY,
                     SESSIONS_ACROSS_LISTENERS, TLS13_ONLY_ACCEPT_ANY)

__all__ = ["ContextCache", "set_verify", "verify_mode", "needs_verify_callback", "overrules_rule", "short_reason", "pin_mismatch", "leaf_identity", "ALERT_HANDSHAKE_FAILURE",
           "BackendContexts", "BackendIdentityError", "backend_identity_problem",
           "SessionMemory", "session_scope"]

log = logging.getLogger("refgateway.tls")

# A plaintext TLS alert record: level fatal(2), description handshake_failure(40).
ALERT_HANDSHAKE_FAILURE = b"\x15\x03\x03\x00\x02\x02\x28"

_X509_V_FLAG_NO_CHECK_TIME = 0x200000  # not exported by pyOpenSSL

#: Seconds a session (ticket or cache entry) may be resumed: nginx's ssl_session_timeout.
SESSION_LIFETIME = 300

#: Intermediate CAs allowed between a client leaf and a trusted root (OpenSSL verify
#: depth), the same as NGINX Gateway Fabric's ssl_verify_depth.
MAX_CLIENT_CHAIN_DEPTH = 4

# X509_V_ERR_* -> the short reason reported in x-refgateway-client-verify.
_REASONS = {
    2: "unknown-ca", 19: "unknown-ca", 20: "unknown-ca", 21: "unknown-ca", 18: "self-signed",
    9: "not-yet-valid", 10: "expired", 7: "bad-signature", 24: "invalid-ca", 26: "bad-purpose",
    25: "path-length-exceeded", 32: "no-cert-sign", 34: "unhandled-critical-extension",
    47: "name-constraints", 48: "name-constraints", 66: "key-too-weak", 68: "digest-too-weak", 79: "invalid-ca",
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


# X509_V_ERR_CERT_REJECTED: OpenSSL answers it with a "bad certificate" alert.
_X509_V_ERR_CERT_REJECTED = 28


# X509_V_ERR_UNSPECIFIED: OpenSSL answers it with an "internal error" alert.
_X509_V_ERR_UNSPECIFIED = 1


def set_verify(target: SSL.Context | SSL.Connection, mode: int, callback: Callable,
               faults: frozenset[str] = frozenset()) -> None:
    """pyOpenSSL's ``set_verify``, except that a certificate the callback refuses although
    OpenSSL found it fine (a pin mismatch) ends the handshake with ``bad certificate``.

    pyOpenSSL leaves the store's error at X509_V_OK then, which OpenSSL 3 turns into
    X509_V_ERR_UNSPECIFIED and an ``internal error`` alert: a client cannot tell that from a
    gateway failing. Real implementations (Envoy's certificate validator) send a
    certificate alert. The callback pyOpenSSL registered is wrapped at the C level.
    """
    from OpenSSL._util import ffi, lib  # pyOpenSSL exposes no way to set the store's error

    target.set_verify(mode, callback)
    inner = target._verify_callback
    internal_error = INTERNAL_ERROR_FOR_BAD_CLIENT_CERT in faults

    def outer(ok, store_ctx):
        result = inner(ok, store_ctx)
        if not result and internal_error:
            lib.X509_STORE_CTX_set_error(store_ctx, _X509_V_ERR_UNSPECIFIED)
        elif not result and lib.X509_STORE_CTX_get_error(store_ctx) == lib.X509_V_OK:
            lib.X509_STORE_CTX_set_error(store_ctx, _X509_V_ERR_CERT_REJECTED)
        return result

    wrapped = ffi.callback("int (*)(int, X509_STORE_CTX *)", outer)
    target._verify_callback = wrapped  # keeps the C callback alive as long as its owner
    if isinstance(target, SSL.Connection):
        lib.SSL_set_verify(target._ssl, mode, wrapped)
    else:
        lib.SSL_CTX_set_verify(target._context, mode, wrapped)


# A plaintext TLS alert record: level fatal(2), description protocol_version(70).
ALERT_PROTOCOL_VERSION = b"\x15\x03\x03\x00\x02\x02\x46"


def version_refusal(v: Validation | None, faults: frozenset[str], version: str | None) -> bytes | None:
    """The alert record a listener refuses this TLS version with (tls13-only-accept-any), or None."""
    if TLS13_ONLY_ACCEPT_ANY in faults and v is not None and v.mode != ALLOW_INSECURE_FALLBACK \
            and version == "TLSv1.2":
        return ALERT_PROTOCOL_VERSION
    return None


def verify_mode(v: Validation | None, faults: frozenset[str], version: str | None = None) -> int:
    """The verify mode of a listener; ``version``: the connection's negotiated TLS version,
    known from the SNI callback on (the faults that treat one version differently)."""
    if v is None:
        return SSL.VERIFY_NONE
    if v.mode != ALLOW_INSECURE_FALLBACK and (
            (version == "TLSv1.2" and ACCEPT_ANY_ON_TLS12 in faults)
            or (version == "TLSv1.3" and (ACCEPT_ANY_ON_TLS13 in faults or TLS13_ONLY_ACCEPT_ANY in faults))):
        return SSL.VERIFY_NONE
    if v.mode == ALLOW_INSECURE_FALLBACK:
        return SSL.VERIFY_NONE if FALLBACK_WITHOUT_CERT_REQUEST in faults else SSL.VERIFY_PEER
    if ACCEPT_NO_CLIENT_CERT in faults or REFUSE_AFTER_PROXYING in faults:
        return SSL.VERIFY_PEER
    return SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


#: Faults that make refgateway's verify callback overrule OpenSSL's verdict.
_CALLBACK_FAULTS = frozenset({ACCEPT_ANY_CLIENT_CERT, INTERNAL_ERROR_FOR_BAD_CLIENT_CERT, REFUSE_AFTER_PROXYING})

# X509_V_ERR_* numbers of OpenSSL 3 (x509_vfy.h; INVALID_CA was 24 before 3.0).
_CERT_SIGNATURE_FAILURE, _CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED = 7, 9, 10
_PATH_LENGTH_EXCEEDED, _INVALID_PURPOSE, _KEYUSAGE_NO_CERTSIGN = 25, 26, 32
_UNHANDLED_CRITICAL_EXTENSION, _PERMITTED_VIOLATION, _EXCLUDED_VIOLATION, _INVALID_CA = 34, 47, 48, 79

#: Faults that overrule one RFC 5280 rule OpenSSL enforces: a verify callback that returns
#: 1 for these errors (at depth > 0: on the intermediates only), as a gateway with its own
#: callback ships it. fault -> (errors, intermediates only). Real ones: CryptoAPI did not
#: check intermediates' basicConstraints (CVE-2002-0862); BIND ignored EVP_VerifyFinal's
#: result and so the chain's signatures (CVE-2009-0265); OpenLDAP and libsoup checked the
#: validity of the end-entity certificate only (GNUTLS-SA-2009-3, CVE-2009-1417); wolfSSL
#: parsed URI name constraints but did not enforce them (CVE-2026-5263).
_RULE_FAULTS: dict[str, tuple[frozenset[int], bool]] = {
    # OpenSSL reports a non-CA intermediate as INVALID_CA and, for the sslclient purpose, INVALID_PURPOSE.
    ACCEPT_NON_CA_INTERMEDIATE: (frozenset({_INVALID_CA, _INVALID_PURPOSE}), True),
    IGNORE_PATH_LENGTH: (frozenset({_PATH_LENGTH_EXCEEDED}), False),
    # CA-ness from basicConstraints alone: the three errors a CA without keyCertSign causes,
    # overruled only where the certificate asserts cA=TRUE (_asserts_ca).
    IGNORE_CA_KEY_USAGE: (frozenset({_INVALID_CA, _INVALID_PURPOSE, _KEYUSAGE_NO_CERTSIGN}), True),
    IGNORE_NAME_CONSTRAINTS: (frozenset({_PERMITTED_VIOLATION, _EXCLUDED_VIOLATION}), False),
    IGNORE_UNKNOWN_CRITICAL_EXTENSIONS: (frozenset({_UNHANDLED_CRITICAL_EXTENSION}), False),
    ACCEPT_BAD_CERTIFICATE_SIGNATURE: (frozenset({_CERT_SIGNATURE_FAILURE}), False),
    CHECK_LEAF_VALIDITY_ONLY: (frozenset({_CERT_HAS_EXPIRED, _CERT_NOT_YET_VALID}), True),
}


def overrules_rule(faults: frozenset[str], errno: int, depth: int, cert) -> bool:
    """Whether one of the RFC 5280 rule faults turns this verification error into success."""
    for fault, (errors, intermediates_only) in _RULE_FAULTS.items():
        if fault in faults and errno in errors and (depth > 0 or not intermediates_only):
            if fault != IGNORE_CA_KEY_USAGE or _asserts_ca(cert):
                return True
    return False


def _asserts_ca(cert) -> bool:
    try:
        return cert.to_cryptography().extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


#: OpenSSL security level of the listeners (SSL_CTX_set_security_level): 2 refuses client
#: chains with RSA keys under 2048 bits and SHA-1 signatures (level 1 refuses SHA-1 only);
#: refgateway's profile (refused_weak_crypto) says so. The cipher list stays OpenSSL's DEFAULT.
def _security_level(faults: frozenset[str]) -> int:
    if CLIENT_SECURITY_LEVEL_0 in faults:
        return 0
    return 1 if CLIENT_SECURITY_LEVEL_1 in faults else 2


def needs_verify_callback(v: Validation | None, faults: frozenset[str]) -> bool:
    """Whether a connection on a listener needs refgateway's verify callback.

    Only AllowInsecureFallback (accept a bad certificate, remember why), pins (checked on
    the leaf) and a few faults need it. Otherwise OpenSSL's own verification decides
    alone: a handshake that completes with a client certificate verified it, and a
    Python callback per certificate of the chain is a good part of a handshake's cost.
    """
    return v is not None and (v.mode == ALLOW_INSECURE_FALLBACK or bool(v.pin_hashes or v.pin_sans)
                              or not _CALLBACK_FAULTS.isdisjoint(faults) or not faults.isdisjoint(_RULE_FAULTS))


# --------------------------------------------------------------------------- session resumption


def session_scope(v: Validation | None, faults: frozenset[str], max_chain_depth: int) -> bytes:
    """The session-ID context of a listener's client validation: 32 bytes that change with
    anything the verdict on a client certificate depends on (mode, CA bundles, pins, verify
    depth). Listeners with equal scopes would judge every client alike, so a session may
    pass between them.

    Fault ``sessions-across-listeners``: one scope for every listener (one session cache
    and ticket key for the whole gateway, nginx CVE-2014-3616 / CVE-2025-23419).
    """
    if SESSIONS_ACROSS_LISTENERS in faults:
        return hashlib.sha256(b"refgateway one session scope").digest()
    h = hashlib.sha256(b"refgateway session scope v1\0")
    if v is None:
        h.update(b"no client validation")
    else:
        h.update(v.mode.encode() + b"\0" + str(max_chain_depth).encode() + b"\0")
        for pem in sorted(v.ca_pems):
            h.update(hashlib.sha256(pem).digest())
        h.update(b"\0sans\0" + "\0".join(sorted(v.pin_sans)).encode())
        h.update(b"\0hashes\0" + "\0".join(sorted(v.pin_hashes)).encode())
    return h.digest()


def _leaf_key(leaf: crypto.X509) -> bytes:
    return hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf)).digest()


def _now_generalized() -> bytes:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime()).encode()


class SessionMemory:
    """What a full handshake verified, for the resumptions of its sessions.

    Keyed by (listener scope, SHA-256 of the client leaf's DER, b"" for none): the
    earliest notAfter of the verified chain (GeneralizedTime bytes, which order like the
    times they name) and the verification error (AllowInsecureFallback lets a failed one
    in). A session whose entry is missing (made under another scope, or evicted) is not
    served: the client's connection is refused and its next one is a full handshake.
    Bounded: the entries least recently recorded go first (65536 of them, a few MB,
    cover that many distinct clients within a session's lifetime).
    """

    def __init__(self, faults: frozenset[str], limit: int = 65536):
        self._faults = faults
        self._limit = limit
        self._entries: OrderedDict[tuple[bytes, bytes], tuple[bytes, int | str | None]] = OrderedDict()

    def record(self, scope: bytes, conn: SSL.Connection, verify_error: int | str | None) -> None:
        """After a full handshake: remember what it verified."""
        leaf = conn.get_peer_certificate()
        if leaf is None:
            key, not_after = (scope, b""), b"99991231235959Z"
        else:
            chain = conn.get_verified_chain() or [leaf]  # None: not verified (fallback)
            key = (scope, _leaf_key(leaf))
            not_after = min(c.get_notAfter() or b"" for c in chain)
        self._entries[key] = (not_after, verify_error)
        self._entries.move_to_end(key)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def resumable(self, scope: bytes, conn: SSL.Connection) -> tuple[str | None, int | str | None]:
        """In the SNI callback of a resumed session: (why this listener may not serve it,
        "unknown" or "expired", or None; the verification error its full handshake recorded)."""
        leaf = conn.get_peer_certificate()
        entry = self._entries.get((scope, _leaf_key(leaf) if leaf is not None else b""))
        if entry is None:
            return "unknown", None
        not_after, error = entry
        if RESUMPTION_CHECKS_LEAF_EXPIRY_ONLY in self._faults and leaf is not None:
            not_after = leaf.get_notAfter() or b""  # Go CVE-2025-68121 (#77217): the leaf only
        return (None if _now_generalized() < not_after else "expired"), error


class ContextCache:
    """Builds and memoises one server Context per distinct listener TLS configuration,
    and one session context per distinct set of a port's validation scopes."""

    def __init__(self, *, faults: frozenset[str], sni_callback: Callable, verify_callback: Callable,
                 alpn: tuple[bytes, ...] = (b"h2", b"http/1.1"), max_chain_depth: int = MAX_CLIENT_CHAIN_DEPTH):
        self._faults = faults
        self._max_chain_depth = max_chain_depth
        self._sni = sni_callback
        self._verify = verify_callback
        self._alpn = alpn
        self._cache: dict[tuple, SSL.Context] = {}
        self._x509: dict[bytes, list[crypto.X509]] = {}
        self._scopes: dict[Validation | None, bytes] = {}
        self._sessions: dict[bytes, SSL.Context] = {}

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

    def scope(self, ls: Listener) -> bytes:
        """The listener's session scope (``session_scope``)."""
        scope = self._scopes.get(ls.validation)
        if scope is None:
            scope = self._scopes[ls.validation] = session_scope(ls.validation, self._faults, self._max_chain_depth)
        return scope

    def session_context(self, scopes: list[bytes]) -> SSL.Context:
        """The context a port's connections start on: its session cache and ticket keys
        are those of the set of validation scopes on the port, so a session never leaves
        the ports that judge its client alike, and a changed validation (a new CA bundle)
        starts a new context with new ticket keys and an empty cache: the sessions made
        before are not resumed (the client gets a full handshake). It holds no
        certificate: the SNI callback, which OpenSSL calls with or without SNI, switches
        every connection to its listener's context.

        Fault ``sessions-across-listeners``: one session context for the whole gateway.
        """
        key = hashlib.sha256(b"".join(sorted(set(scopes)))).digest()
        if SESSIONS_ACROSS_LISTENERS in self._faults:
            key = b"\0" * 32
        ctx = self._sessions.get(key)
        if ctx is None:
            ctx = self._sessions[key] = SSL.Context(SSL.TLS_SERVER_METHOD)
            ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
            ctx.set_session_id(key)
            ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
            ctx.set_timeout(SESSION_LIFETIME)
            ctx.set_tlsext_servername_callback(self._sni)
            # A connection keeps the verify parameters of the context it started on (the
            # SNI switch does not copy them): the verify depth must be set here.
            if IGNORE_CHAIN_DEPTH not in self._faults:
                ctx.set_verify_depth(self._max_chain_depth)
        return ctx

    def retain(self, listeners: list[Listener], session_contexts: list[SSL.Context] = ()) -> None:
        """Forget contexts no current listener uses (old ones stay alive in their connections)."""
        keep = {(ls.cert_pem, ls.key_pem, ls.validation) for ls in listeners}
        self._cache = {k: v for k, v in self._cache.items() if k in keep}
        self._scopes = {k: v for k, v in self._scopes.items() if k in {ls.validation for ls in listeners}}
        in_use = set(map(id, session_contexts))
        self._sessions = {k: v for k, v in self._sessions.items() if id(v) in in_use}
        pems = {p for k in keep for p in ((k[2].ca_pems if k[2] else ()) + (k[0],)) if p}
        self._x509 = {k: v for k, v in self._x509.items() if k in pems}

    def _build(self, ls: Listener) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        # Sessions live in the port's session context (session_context). The cache mode of
        # the context the SNI callback switches to still decides whether OpenSSL caches a
        # TLS 1.2 session ID at all (SESS_CACHE_OFF here: none, while tickets still work),
        # so it keeps OpenSSL's default.
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
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=%d" % _security_level(self._faults))
        v = ls.validation
        if v is not None:
            store = ctx.get_cert_store()
            seen = set()
            for pem in () if DISTRUST_CLIENT_CA in self._faults else v.ca_pems:
                for ca in self._certs(pem):
                    fp = ca.digest("sha256")
                    if fp not in seen:  # duplicates across refs make add_cert fail
                        seen.add(fp)
                        store.add_cert(ca)
            if ACCEPT_EXPIRED_CLIENT_CERT in self._faults:
                store.set_flags(_X509_V_FLAG_NO_CHECK_TIME)
            if IGNORE_CHAIN_DEPTH not in self._faults:
                ctx.set_verify_depth(self._max_chain_depth)
        # OpenSSL verifies client certificates for the purpose "sslclient" by default
        # on the server side, so a serverAuth-only certificate fails with bad-purpose.
        # A connection keeps the verify callback of the context it started on
        # (SSL_set_verify cannot remove one), so only listeners that need it get one.
        if needs_verify_callback(v, self._faults):
            set_verify(ctx, verify_mode(v, self._faults), self._verify, self._faults)
        else:
            ctx.set_verify(verify_mode(v, self._faults))
        return ctx


# --------------------------------------------------------------------------- backend TLS
#
# The gateway as a TLS *client* of its backends (BackendTLSPolicy). This side uses the
# stdlib ssl module through asyncio: nothing here needs the alerts a client sees, and the
# certificate identity is checked after the handshake, before a byte of the request is
# sent, because the policy may ask for subjectAltNames that OpenSSL's own hostname check
# cannot express.


class BackendIdentityError(Exception):
    """The backend's certificate does not carry the identity its BackendTLSPolicy asks for."""


def _dns_match(pattern: str, name: str) -> bool:
    """RFC 6125 6.4: exact, or a wildcard standing for the whole leftmost label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def backend_identity_problem(der: bytes | None, tls: BackendTLS, faults: frozenset[str]) -> str | None:
    """Why the backend's leaf certificate fails the policy's identity check, or None.

    With subjectAltNames, one of them must be in the certificate and the hostname is not
    used for authentication; without, the hostname must match a DNS SAN.
    """
    if not tls.verify or BACKEND_SKIP_HOSTNAME_VERIFICATION in faults:
        return None
    if der is None:
        return "the backend sent no certificate"
    try:
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        dns, uris = san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        dns, uris = [], []
    wanted = tls.subject_alt_names if BACKEND_IGNORE_SUBJECT_ALT_NAMES not in faults else ()
    if wanted:
        for kind, value in wanted:
            if kind == "Hostname" and any(_dns_match(d, value) or d.lower() == value.lower() for d in dns):
                return None
            if kind == "URI" and value in uris:
                return None
        return (f"certificate SANs {dns + uris} match none of the policy's subjectAltNames "
                f"{[v for _, v in wanted]}")
    if any(_dns_match(d, tls.hostname) for d in dns):
        return None
    return f"certificate DNS SANs {dns} do not match hostname {tls.hostname!r}"


def _load_cert_chain_from_memory(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # The stdlib loads credentials only from files; a memfd keeps the key off the disk.
    fd = os.memfd_create("refgateway-client-credential", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem + b"\n" + cert_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class BackendContexts:
    """Client contexts for TLS to backends, one per distinct policy (and system bundle)."""

    def __init__(self, *, faults: frozenset[str], system_ca_bundle: Path | None = None):
        self._faults = faults
        self._bundle = system_ca_bundle
        self._cache: dict[tuple, ssl.SSLContext] = {}
        self._last_client_cert: dict[BackendTLS, tuple[bytes, bytes]] = {}  # keep-last-backend-client-cert

    def _bundle_version(self) -> tuple | None:
        # The bundle is read when a context is built, so a harness may write it after the
        # gateway started; its identity is part of the cache key.
        if self._bundle is None:
            return None
        try:
            st = self._bundle.stat()
        except OSError:
            return ("missing",)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def context(self, tls: BackendTLS) -> ssl.SSLContext:
        if KEEP_LAST_BACKEND_CLIENT_CERT in self._faults:
            shared = replace(tls, client_cert=None)
            if tls.client_cert is not None:
                self._last_client_cert[shared] = tls.client_cert
            else:
                tls = replace(tls, client_cert=self._last_client_cert.get(shared))
        system = tls.system or BACKEND_TRUST_SYSTEM_ROOTS in self._faults
        key = (tls, self._bundle_version() if system else None)
        ctx = self._cache.get(key)
        if ctx is None:
            if len(self._cache) > 256:
                self._cache.clear()
            ctx = self._cache[key] = self._build(tls, system)
        return ctx

    def _build(self, tls: BackendTLS, system: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_TICKET
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.check_hostname = False  # backend_identity_problem() checks the identity
        if FAIL_TLS_BACKENDS in self._faults:
            pass  # CERT_REQUIRED with an empty trust store: nothing verifies
        elif not tls.verify or BACKEND_SKIP_CHAIN_VERIFICATION in self._faults:
            ctx.verify_mode = ssl.CERT_NONE
        elif system:
            if self._bundle is None:
                ctx.load_default_certs()
            else:
                try:
                    ctx.load_verify_locations(cafile=str(self._bundle))
                except (OSError, ssl.SSLError) as exc:  # missing or empty: no system root at all
                    log.warning("system CA bundle %s unusable (%s): no backend certificate verifies", self._bundle, exc)
        else:
            seen = set()
            for pem in tls.ca_pems:
                for cert in x509.load_pem_x509_certificates(pem):
                    der = cert.public_bytes(Encoding.DER)
                    if der not in seen:
                        seen.add(der)
                        ctx.load_verify_locations(cadata=der)
        if tls.client_cert is not None:
            _load_cert_chain_from_memory(ctx, *tls.client_cert)
        return ctx
