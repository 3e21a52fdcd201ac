"""What a probe observed, and how a failed one is classified (``probe``'s theory of operation).

The closed set of outcomes (:class:`Response`, :class:`Rejection` by the gateway,
:class:`ProbeFailure` caused by the probe), the names of TLS alerts, what the OpenSSL
message callback saw on a connection (``_Observer``), and the rules that turn a socket or
TLS exception into an outcome (``_classify``, ``_outcome_of``). The public names are
``mtls_conformance.probe``'s.
"""

from __future__ import annotations

import errno
import json as _json
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h11


# RFC 8446 6 / RFC 5246 7.2 alert descriptions, spelled as OpenSSL prints them
# ("tlsv13 alert certificate required") minus the prefix.
_ALERT_NAMES = {
    0: "close notify",
    10: "unexpected message",
    20: "bad record mac",
    21: "decryption failed",
    22: "record overflow",
    30: "decompression failure",
    40: "handshake failure",
    41: "no certificate",
    42: "bad certificate",
    43: "unsupported certificate",
    44: "certificate revoked",
    45: "certificate expired",
    46: "certificate unknown",
    47: "illegal parameter",
    48: "unknown ca",
    49: "access denied",
    50: "decode error",
    51: "decrypt error",
    60: "export restriction",
    70: "protocol version",
    71: "insufficient security",
    80: "internal error",
    86: "inappropriate fallback",
    90: "user canceled",
    100: "no renegotiation",
    109: "missing extension",
    110: "unsupported extension",
    111: "certificate unobtainable",
    112: "unrecognized name",
    113: "bad certificate status response",
    114: "bad certificate hash value",
    115: "unknown psk identity",
    116: "certificate required",
    120: "no application protocol",
}

#: Alerts a server sends when it refuses the client's certificate (or its absence):
#: RFC 8446 4.4.2.4 / RFC 5246 7.4.6, plus ``handshake failure`` (OpenSSL's TLS 1.2
#: answer to a missing certificate), ``decrypt error`` (a CertificateVerify that does not
#: verify) and ``access denied`` (a valid certificate the server's policy refuses, e.g. a
#: pinned SAN or hash). Every other alert (protocol version, unrecognized name, no
#: application protocol, insufficient security, ...) refuses something else.
CERTIFICATE_ALERTS = frozenset({
    "handshake failure", "no certificate", "bad certificate", "unsupported certificate",
    "certificate revoked", "certificate expired", "certificate unknown", "unknown ca",
    "access denied", "decrypt error", "certificate required", "certificate unobtainable",
    "bad certificate status response", "bad certificate hash value",
})

# OpenSSL reason codes for a *received* alert: SSLV3_ALERT_BAD_CERTIFICATE,
# TLSV1_ALERT_UNKNOWN_CA, TLSV13_ALERT_CERTIFICATE_REQUIRED, and the odd one
# out, TLSV1_UNRECOGNIZED_NAME.
_ALERT_REASON = re.compile(r"^(?:SSLV3|TLSV1|TLSV13)_(?:ALERT_)?(?P<name>[A-Z_]+)$")

# The TLS record and handshake constants the message callback reports.
_CONTENT_ALERT = 21
_CONTENT_HANDSHAKE = 22
_HANDSHAKE_CERTIFICATE_REQUEST = 13
_HANDSHAKE_SERVER_HELLO = 2


def alert_name(reason: str | None) -> str | None:
    """Map an OpenSSL reason code for a received alert to the alert's name.

    >>> alert_name("TLSV13_ALERT_CERTIFICATE_REQUIRED")
    'certificate required'
    >>> alert_name("CERTIFICATE_VERIFY_FAILED") is None
    True
    """
    if not reason:
        return None
    match = _ALERT_REASON.match(reason)
    if not match:
        return None
    name = match.group("name").replace("_", " ").lower()
    return name if name in _ALERT_NAMES.values() else None


class ClientCertificate(Protocol):
    chain_file: Path
    key_file: Path


@dataclass(frozen=True)
class TLSInfo:
    version: str | None
    cipher: str | None
    alpn: str | None
    # None when the message callback is unavailable and we cannot tell.
    certificate_requested: bool | None
    server_certificate_pem: str | None

    def describe(self) -> str:
        parts = [self.version or "TLS version unknown"]
        if self.certificate_requested is True:
            parts.append("the listener requested a client certificate")
        elif self.certificate_requested is False:
            parts.append("the listener requested no client certificate")
        return ", ".join(parts)


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    tls: TLSInfo | None

    @property
    def json(self) -> dict | None:
        content_type = (self.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return None
        try:
            value = _json.loads(self.body)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def describe(self) -> str:
        text = f"HTTP {self.status}"
        if self.reason:
            text += f" {self.reason}"
        if self.tls is not None:
            text += f" over {self.tls.describe()}"
        return text


_WHERE = {"connect": "on connect", "handshake": "during handshake", "first-read": "on first read"}

#: Rejection kinds: what the gateway did instead of answering.
REJECTION_KINDS = ("alert", "reset", "closed", "refused", "timeout")
#: ProbeFailure causes: what the probe itself caused.
PROBE_FAILURE_CAUSES = ("server-certificate", "alpn", "http", "tls", "local")


@dataclass(frozen=True)
class Rejection:
    """The gateway did not answer: it sent an alert, reset, closed, refused the
    connection, or let the probe time out."""

    phase: str  # "connect" | "handshake" | "first-read"
    kind: str  # one of REJECTION_KINDS
    alert: str | None  # kind "alert": the alert received from the gateway
    detail: str
    tls: TLSInfo | None
    #: Why the target knows nothing listens, where it found out without connecting (kind
    #: "refused"; see target.NotListening); describe() says it.
    note: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in REJECTION_KINDS:
            raise ValueError(f"Rejection kind must be one of {REJECTION_KINDS}, got {self.kind!r}")
        if (self.kind == "alert") != (self.alert is not None):
            raise ValueError("a Rejection names an alert exactly when its kind is 'alert'")

    @property
    def certificate_alert(self) -> bool:
        """An alert that refuses the client certificate (see CERTIFICATE_ALERTS)."""
        return self.kind == "alert" and self.alert in CERTIFICATE_ALERTS

    def describe(self) -> str:
        what = {
            "alert": f"TLS alert {self.alert!r}",
            "reset": "connection reset",
            "closed": "connection closed without a response",
            "timeout": "timed out",
            "refused": "connection refused",
        }[self.kind]
        text = f"{what} {_WHERE[self.phase]}"
        if self.tls is not None and (self.tls.version or self.tls.certificate_requested is not None):
            text += f" ({self.tls.describe()})"
        if self.note:
            text += f" ({self.note})"
        return text


@dataclass(frozen=True)
class ProbeFailure:
    """The probe failed on its own: never a verdict on the gateway.

    ``detail`` starts with what the probe could not do ("the probe could not verify the
    listener's certificate: ...").
    """

    phase: str  # "connect" | "handshake" | "first-read"
    cause: str  # one of PROBE_FAILURE_CAUSES
    detail: str
    tls: TLSInfo | None
    sent_alert: str | None = None  # the alert the probe itself sent, if any

    def __post_init__(self) -> None:
        if self.cause not in PROBE_FAILURE_CAUSES:
            raise ValueError(f"ProbeFailure cause must be one of {PROBE_FAILURE_CAUSES}, got {self.cause!r}")

    def describe(self) -> str:
        text = f"a failure of the probe itself {_WHERE[self.phase]}: {self.detail}"
        if self.sent_alert is not None and self.sent_alert not in self.detail:
            text += f" (the probe sent TLS alert {self.sent_alert!r})"
        return text


Outcome = Response | Rejection | ProbeFailure


class _Observer:
    """What the OpenSSL message callback saw on one connection."""

    def __init__(self) -> None:
        self.available = False
        self.certificate_requested = False
        self.received_alert: str | None = None
        self.sent_alert: str | None = None
        # Which side sent the first (fatal) alert: "read" (the server) or "write" (the probe).
        self.first_alert: str | None = None
        self.version: str | None = None

    def install(self, context: ssl.SSLContext) -> None:
        try:
            context._msg_callback = self._callback  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            return  # not CPython, or a build without the hook: reason codes only
        self.available = True

    def _callback(self, conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: bytes) -> None:
        content_type = int(content_type)
        if content_type == _CONTENT_HANDSHAKE and direction == "read":
            if int(msg_type) == _HANDSHAKE_CERTIFICATE_REQUEST:
                self.certificate_requested = True
            if isinstance(version, ssl.TLSVersion) and int(msg_type) != _HANDSHAKE_SERVER_HELLO:
                # After ServerHello OpenSSL reports the negotiated version; the
                # ServerHello itself carries the TLS 1.2 legacy version.
                self.version = _VERSION_NAMES.get(version, self.version)
        elif content_type == _CONTENT_ALERT and len(data) >= 2:
            # close_notify is a normal end of stream, not a refusal.
            if data[1] == 0:
                return
            name = _ALERT_NAMES.get(data[1], f"alert {data[1]}")
            if self.first_alert is None:
                self.first_alert = direction
            if direction == "read" and self.received_alert is None:
                self.received_alert = name
            elif direction == "write" and self.sent_alert is None:
                self.sent_alert = name

    def tls_info(self, sock: ssl.SSLObject | None) -> TLSInfo:
        version = cipher = alpn = pem = None
        if sock is not None:
            version = sock.version()
            cipher_tuple = sock.cipher()
            cipher = cipher_tuple[0] if cipher_tuple else None
            alpn = sock.selected_alpn_protocol()
            try:
                der = sock.getpeercert(binary_form=True)
            except (ValueError, OSError):
                der = None
            pem = ssl.DER_cert_to_PEM_cert(der) if der else None
        return TLSInfo(
            version=version or self.version,
            cipher=cipher,
            alpn=alpn,
            certificate_requested=self.certificate_requested if self.available else None,
            server_certificate_pem=pem,
        )


_VERSION_NAMES = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}


class _Failure(Exception):
    """kind: a Rejection kind, or "probe" with a ProbeFailure cause."""

    def __init__(self, phase: str, kind: str, detail: str, alert: str | None = None,
                 cause: str | None = None) -> None:
        super().__init__(detail)
        self.phase, self.kind, self.detail, self.alert, self.cause = phase, kind, detail, alert, cause


def _probe_failure(phase: str, cause: str, detail: str) -> _Failure:
    return _Failure(phase, "probe", detail, cause=cause)


def _classify(exc: Exception, phase: str, timeout: float) -> _Failure:
    """Turn a socket or TLS exception into (phase, kind, alert, detail)."""
    if isinstance(exc, _Failure):
        return exc
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return _Failure(phase, "timeout", f"no progress within {timeout:g}s ({detail})")
    if isinstance(exc, ConnectionRefusedError):
        return _Failure(phase, "refused", detail)
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)) or (
        isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)
    ):
        return _Failure(phase, "reset", detail)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _probe_failure(phase, "server-certificate",
                              f"the probe could not verify the listener's certificate: {exc.verify_message}")
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return _Failure(phase, "closed", detail)
    if isinstance(exc, ssl.SSLError):
        alert = alert_name(getattr(exc, "reason", None))
        if alert is not None:
            return _Failure(phase, "alert", detail, alert)
        if getattr(exc, "reason", None) == "UNEXPECTED_EOF_WHILE_READING":
            return _Failure(phase, "closed", detail)
        return _probe_failure(phase, "tls", f"the probe ended the TLS connection itself: {detail}")
    if isinstance(exc, h11.RemoteProtocolError) or _is_h2_protocol_error(exc):
        return _probe_failure(phase, "http", f"the probe could not parse the HTTP response: {detail}")
    return _probe_failure(phase, "local", f"the probe failed locally: {detail}")


def _is_h2_protocol_error(exc: Exception) -> bool:
    try:
        import h2.exceptions
    except ImportError:  # pragma: no cover - h2 is a dependency
        return False
    return isinstance(exc, h2.exceptions.ProtocolError)


def _outcome_of(failure: _Failure, observer: _Observer, conn: Any) -> Rejection | ProbeFailure:
    """The typed outcome of a failed probe (``conn``: the probe's TLS connection, or None).

    The message callback, when available, tells who sent the first alert. An alert
    received from the gateway before the probe sent one is the gateway's, whatever
    exception surfaced. An alert the probe sent first is never taken for the gateway's:
    an alert received after it (a peer answering our alert) is the probe's doing too.
    When the gateway closed or reset, OpenSSL may record an alert of its own as sent
    (``decode error`` on a bare EOF); the close, not that alert, is the outcome.
    """
    tls = observer.tls_info(conn.tls if conn else None) if failure.phase != "connect" else None
    probe_first = observer.available and observer.first_alert == "write"
    if failure.phase != "connect" and observer.received_alert is not None and not probe_first:
        return Rejection(phase=failure.phase, kind="alert", alert=observer.received_alert,
                         detail=failure.detail, tls=tls)
    if failure.kind == "probe":
        return ProbeFailure(phase=failure.phase, cause=failure.cause or "local", detail=failure.detail, tls=tls,
                            sent_alert=observer.sent_alert)
    if failure.kind == "alert" and probe_first:
        return ProbeFailure(phase=failure.phase, cause="tls", tls=tls, sent_alert=observer.sent_alert,
                            detail=f"the probe ended the TLS connection itself with alert "
                                   f"{observer.sent_alert!r}; the listener answered with {failure.alert!r}")
    return Rejection(phase=failure.phase, kind=failure.kind, alert=failure.alert, detail=failure.detail, tls=tls)
