"""One TLS request on a fresh connection, classified as a Response or a Rejection.

Theory of operation
-------------------
An mTLS check needs to know *how* a listener refused a client, not merely that
"something failed". The same refusal reaches the client in different shapes:

* TLS 1.2: the server verifies the client certificate inside the handshake, so
  a fatal alert ends ``do_handshake()``.
* TLS 1.3: the client finishes its side of the handshake before the server has
  looked at the certificate. ``do_handshake()`` succeeds and the alert only
  arrives on the first read. A connection is therefore never called accepted
  until a response has been read.
* Some servers complete the handshake and then close (NGINX ``444``), reset, or
  answer with an HTTP error status.

:func:`probe` returns one of three types, a closed set:

* :class:`Response`: an HTTP status (from the backend or the gateway itself);
* :class:`Rejection`: what the *gateway* did instead of answering, with its phase
  (``connect``, ``handshake``, ``first-read``) and kind (``alert`` received from
  the gateway, ``reset``, ``closed`` without a response, ``refused``, ``timeout``);
* :class:`ProbeFailure`: what the *probe* caused, with its cause: its own
  verification of the listener's certificate (``server-certificate``), no h2 via
  ALPN (``alpn``), an HTTP answer it could not parse (``http``), a TLS handshake
  it ended itself, e.g. with an alert it sent (``tls``), a local error (``local``).
  A ProbeFailure is never the gateway's verdict, so no judge may count it as a
  rejection.

Alert names come from two places that should agree: the OpenSSL message callback
(CPython's private ``SSLContext._msg_callback``, also used to see whether the
server sent a CertificateRequest, and which side sent the first alert) and, when
that hook is missing, the reason code of the ``SSLError`` (OpenSSL's
``*_ALERT_*`` reasons name only alerts *received* from the peer).

Each call builds its own ``SSLContext``: no pooling and no session resumption,
so one probe's SNI or client certificate can never leak into the next. The one
exception is explicit: a :class:`Resumption` passed to :func:`probe` carries one client
context and the session it last received from probe to probe, for the checks about
session resumption.

This module must not import ``mtls_conformance.fixtures``; the client certificate is any object
with ``chain_file`` and ``key_file`` paths.
"""

from __future__ import annotations

import http
import shlex
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h11

# What a probe observed (its outcome types, the TLS alerts, the message callback) and how
# a failure is classified live in _outcomes; its public names are this module's too.
from ._outcomes import (CERTIFICATE_ALERTS, ClientCertificate, Outcome, ProbeFailure, Rejection,
                        Response, TLSInfo, _classify, _Failure, _Observer, _outcome_of, _probe_failure, alert_name)

__all__ = [
    "CERTIFICATE_ALERTS",
    "Outcome",
    "ProbeFailure",
    "Rejection",
    "Response",
    "Resumption",
    "TLSInfo",
    "alert_name",
    "curl_command",
    "openssl_command",
    "probe",
    "probe_coalesced",
]

_TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}

def _build_context(
    *,
    sni: str | None,
    client_cert: ClientCertificate | None,
    trust_pem: bytes | None,
    tls_version: str | None,
    http2: bool,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if trust_pem is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=trust_pem.decode("ascii"))
        # Without SNI there is no name to check; the chain is still verified.
        context.check_hostname = sni is not None
    if tls_version is not None:
        if tls_version not in _TLS_VERSIONS:
            raise ValueError(f"tls_version must be one of {sorted(_TLS_VERSIONS)} or None, got {tls_version!r}")
        context.minimum_version = context.maximum_version = _TLS_VERSIONS[tls_version]
    if client_cert is not None:
        level = getattr(client_cert, "security_level", None)
        if level is not None:
            # Python's own level 2 refuses to send a chain with SHA-1 signatures or RSA-1024
            # keys; whether they are refused is the gateway's verdict, never the probe's.
            # Both halves of such a pair carry the same level (fixtures/chains.py).
            context.set_ciphers(f"DEFAULT:@SECLEVEL={int(level)}")
        context.load_cert_chain(str(client_cert.chain_file), str(client_cert.key_file))
    context.set_alpn_protocols(["h2"] if http2 else ["http/1.1"])
    return context


class Resumption:
    """One client's TLS sessions across probes (what a browser or curl's session cache does).

    Python binds a session to the ``SSLContext`` that made it, so the first probe's context
    is kept and used again. ``tickets=False`` asks for no session ticket (TLS 1.2: the
    server's session-ID cache); TLS 1.3 always resumes with tickets. After each probe:
    ``offered`` (whether a session was offered), ``reused`` (whether the server resumed
    it, None when no handshake completed) and ``session`` (the one to offer next: a TLS
    1.3 ticket arrives after the handshake, so it is taken after the response was read).
    """

    def __init__(self, *, tickets: bool = True) -> None:
        self.tickets = tickets
        self.context: ssl.SSLContext | None = None
        self.session: ssl.SSLSession | None = None
        self.offered = False
        self.reused: bool | None = None

    def _context(self, build) -> ssl.SSLContext:
        if self.context is None:
            self.context = build()
            if not self.tickets:
                self.context.options |= ssl.OP_NO_TICKET
        return self.context

    def _handshaken(self, tls: ssl.SSLObject) -> None:
        self.reused = tls.session_reused

    def _taken(self, tls: ssl.SSLObject) -> None:
        if self.reused is not None and tls.session is not None:
            self.session = tls.session

    @property
    def resumable(self) -> bool:
        """Whether the server gave this client something to resume (a ticket or a session ID)."""
        s = self.session
        return s is not None and (s.has_ticket or bool(s.id))


class _PlainConnection:
    """HTTP/1.1 over bare TCP (an HTTP listener); each phase has its own deadline."""

    tls = None

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.deadline = 0.0
        self.peer_eof = False
        self.close_reason = ""

    def start_phase(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def _settimeout(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout(f"deadline of {self.timeout:g}s passed")
        self.sock.settimeout(remaining)

    def send(self, data: bytes) -> None:
        self._settimeout()
        self.sock.sendall(data)

    def recv(self) -> bytes:
        self._settimeout()
        data = self.sock.recv(65536)
        if not data:
            self.peer_eof = True
            self.close_reason = "TCP FIN"
        return data


class _TLSConnection(_PlainConnection):
    """TLS over memory BIOs, with the socket I/O done here.

    ``SSLSocket`` cannot tell a reset from a clean close on CPython 3.11 with
    OpenSSL 3: both surface from a read as ``SSLEOFError`` (or an empty read).
    Feeding an ``SSLObject`` ourselves keeps the socket-level outcome (RST,
    FIN) apart from the TLS-level one (alert, close_notify).
    """

    def __init__(self, context: ssl.SSLContext, sock: socket.socket, sni: str | None, timeout: float,
                 session: ssl.SSLSession | None = None) -> None:
        super().__init__(sock, timeout)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=sni, session=session)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self._settimeout()
            self.sock.sendall(data)

    def _fill(self) -> None:
        self._settimeout()
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.peer_eof = True
            self.incoming.write_eof()

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                # The ClientHello or our Finished may still be queued; send before waiting.
                self._flush()
                self._fill()
                continue
            self._flush()
            return

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def recv(self) -> bytes:
        """Plaintext bytes; b"" after a close_notify or a bare TCP close."""
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._flush()  # e.g. a key update answer
                self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError) as exc:
                self.close_reason = "close_notify" if isinstance(exc, ssl.SSLZeroReturnError) else "TCP FIN without close_notify"
                return b""


def probe(
    address: tuple[str, int],
    *,
    sni: str | None,
    host: str | None = None,
    path: str = "/",
    client_cert: ClientCertificate | None = None,
    trust_pem: bytes | None = None,
    tls_version: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    method: str = "GET",
    body: bytes | None = None,
    http2: bool = False,
    plaintext: bool = False,
    timeout: float = 10.0,
    resumption: Resumption | None = None,
) -> Outcome:
    """Send one request over a new TCP+TLS connection and classify what came back.

    ``plaintext=True`` speaks HTTP/1.1 over bare TCP instead (an HTTP listener).
    ``body``: the request's content, sent with its Content-Length (e.g. a POST).
    ``resumption``: offer its session (if any), and keep the one this connection ends with.

    ``timeout`` bounds each phase (connect, handshake, the whole response).
    ``trust_pem=None`` skips server verification; otherwise the chain is checked
    against it and the hostname against ``sni``.
    """
    def build() -> ssl.SSLContext:
        return _build_context(sni=sni, client_cert=client_cert, trust_pem=trust_pem, tls_version=tls_version,
                              http2=http2)

    context = build() if resumption is None else resumption._context(build)
    observer = _Observer()
    observer.install(context)
    authority = host or sni or _format_host(address[0])

    raw: socket.socket | None = None
    conn: _TLSConnection | None = None
    try:
        try:
            raw = socket.create_connection(address, timeout=timeout)
        except Exception as exc:
            raise _classify(exc, "connect", timeout) from exc
        if plaintext:
            plain = _PlainConnection(raw, timeout)
            plain.start_phase()
            status, reason, resp_headers, content = _exchange_h11(
                plain, method=method, authority=authority, path=path, headers=headers, body=body)
            return Response(status, reason, resp_headers, content, None)
        try:
            offer = resumption.session if resumption is not None else None
            if resumption is not None:
                resumption.offered, resumption.reused = offer is not None, None
            conn = _TLSConnection(context, raw, sni, timeout, session=offer)
            conn.start_phase()
            conn.handshake()
        except Exception as exc:
            failure = _classify(exc, "handshake", timeout)
            if failure.kind == "closed" and conn is not None and conn.peer_eof:
                failure = _Failure("handshake", "closed", f"server closed the connection during the handshake ({failure.detail})")
            raise failure from exc
        if resumption is not None:
            resumption._handshaken(conn.tls)
        conn.start_phase()
        if http2:
            if conn.tls.selected_alpn_protocol() != "h2":
                raise _probe_failure(
                    "handshake", "alpn",
                    f"the probe needs HTTP/2, but the listener did not select h2 via ALPN "
                    f"(selected {conn.tls.selected_alpn_protocol()!r})")
            status, reason, resp_headers, content = _exchange_h2(
                conn, method=method, authority=authority, path=path, headers=headers, body=body
            )
        else:
            status, reason, resp_headers, content = _exchange_h11(
                conn, method=method, authority=authority, path=path, headers=headers, body=body
            )
        return Response(status, reason, resp_headers, content, observer.tls_info(conn.tls))
    except _Failure as failure:
        # The callback saw the alert's exact description; the reason code is the
        # fallback and covers builds without the hook.
        return _outcome_of(failure, observer, conn)
    finally:
        if resumption is not None and conn is not None:
            resumption._taken(conn.tls)
        if raw is not None:
            raw.close()


def _send_then_read(conn: _TLSConnection, data: bytes) -> bytes:
    """Send the request and return the first bytes of the answer.

    A server that rejects the client certificate under TLS 1.3 may already have
    sent its alert and closed by the time we write; the write then fails with
    EPIPE/ECONNRESET while the alert is still waiting in our receive buffer. We
    read anyway so the alert, not the broken pipe, is what gets reported.
    """
    try:
        conn.send(data)
    except Exception as write_exc:
        try:
            conn.recv()
        except Exception as read_exc:
            read_failure = _classify(read_exc, "first-read", conn.timeout)
            if read_failure.kind == "alert":
                raise read_failure from read_exc
        raise _classify(write_exc, "first-read", conn.timeout) from write_exc
    try:
        chunk = conn.recv()
    except Exception as exc:
        raise _classify(exc, "first-read", conn.timeout) from exc
    if not chunk:
        raise _Failure(
            "first-read", "closed", f"server closed the connection ({conn.close_reason}) before sending any response bytes"
        )
    return chunk


def _exchange_h11(
    conn: _TLSConnection,
    *,
    method: str,
    authority: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | None = None,
) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
    http = h11.Connection(our_role=h11.CLIENT)
    request_headers = list(headers)
    names = {name.lower() for name, _ in request_headers}
    if "host" not in names:
        request_headers.insert(0, ("Host", authority))
    if body is not None and "content-length" not in names:
        request_headers.append(("Content-Length", str(len(body))))
    if "connection" not in names:
        # Matches the upstream suite's transport with keep-alives disabled.
        request_headers.append(("Connection", "close"))
    data = http.send(h11.Request(method=method, target=path, headers=request_headers))
    if body:
        data += http.send(h11.Data(data=body))
    data += http.send(h11.EndOfMessage())

    http.receive_data(_send_then_read(conn, data))
    response: h11.Response | None = None
    content = bytearray()
    try:
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(conn.recv())  # b"" = EOF; h11 decides if that was a valid end
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                content += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
            # InformationalResponse (1xx) is skipped; the final response follows.
    except Exception as exc:
        failure = _classify(exc, "first-read", conn.timeout)
        if response is not None:
            failure = _Failure(
                "first-read",
                failure.kind,
                f"response HTTP {response.status_code} began but did not complete: {failure.detail}",
                failure.alert,
            )
        raise failure from exc
    if response is None:
        raise _probe_failure("first-read", "http",
                             "the probe could not parse the HTTP response: the connection ended before a final response")
    return (
        response.status_code,
        response.reason.decode("latin-1"),
        tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers),
        bytes(content),
    )


def _exchange_h2(
    conn: _TLSConnection,
    *,
    method: str,
    authority: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | None = None,
) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
    return _h2_request(conn, _h2_client(), method=method, authority=authority, path=path, headers=headers,
                       body=body)


def _h2_client():
    import h2.config
    import h2.connection

    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    h2conn.initiate_connection()
    return h2conn


def _h2_request(
    conn: _TLSConnection,
    h2conn: Any,
    *,
    method: str,
    authority: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | None = None,
) -> tuple[int, str, tuple[tuple[str, str], ...], bytes]:
    """One request on a new stream of an open HTTP/2 connection; returns when its stream ends."""
    import h2.events

    stream_id = h2conn.get_next_available_stream_id()
    request_headers = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
    # HTTP/2 forbids connection-specific headers; Host becomes :authority.
    request_headers += [(k.lower(), v) for k, v in headers if k.lower() not in ("host", "connection")]
    if body is not None and not any(k.lower() == "content-length" for k, _ in headers):
        request_headers.append(("content-length", str(len(body))))
    h2conn.send_headers(stream_id, request_headers, end_stream=not body)
    if body:
        # Within the initial flow-control windows (64 KiB): a probe's body is small.
        h2conn.send_data(stream_id, body, end_stream=True)

    chunk = _send_then_read(conn, h2conn.data_to_send())
    status: int | None = None
    resp_headers: tuple[tuple[str, str], ...] = ()
    content = bytearray()
    try:
        while True:
            if not chunk:
                if status is None:
                    raise _Failure("first-read", "closed", f"server closed the HTTP/2 connection ({conn.close_reason}) before a response")
                raise _Failure("first-read", "closed", f"HTTP/2 response {status} truncated ({conn.close_reason})")
            for event in h2conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    pairs = [(str(k), str(v)) for k, v in event.headers]
                    status = int(dict(pairs)[":status"])
                    resp_headers = tuple((k, v) for k, v in pairs if not k.startswith(":"))
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    content += event.data
                    h2conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    if status is None:
                        raise _probe_failure("first-read", "http", "the probe could not parse the HTTP/2 response: "
                                             "the stream ended without response headers")
                    return status, _reason_phrase(status), resp_headers, bytes(content)
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                    raise _Failure("first-read", "reset", f"HTTP/2 RST_STREAM with error code {event.error_code!r}")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise _Failure(
                        "first-read",
                        "closed",
                        f"HTTP/2 GOAWAY with error code {event.error_code!r} before the response completed",
                    )
            outgoing = h2conn.data_to_send()
            if outgoing:
                conn.send(outgoing)
            chunk = conn.recv()
    except _Failure:
        raise
    except Exception as exc:
        raise _classify(exc, "first-read", conn.timeout) from exc


def probe_coalesced(
    address: tuple[str, int],
    *,
    sni: str | None,
    authorities: Sequence[str],
    path: str = "/",
    client_cert: ClientCertificate | None = None,
    trust_pem: bytes | None = None,
    tls_version: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> list[Outcome]:
    """Several HTTP/2 requests over ONE TLS connection, one per ``:authority``, in order.

    This is what a browser does when it coalesces connections (RFC 9113 9.1.1): the
    handshake (SNI ``sni``, client certificate) happens once, and each authority gets
    its own stream once the previous one has ended. Unlike :func:`probe`, the
    connection is reused on purpose. One outcome per authority; when the connection
    fails, that request and every later one get the same Rejection.
    """
    if not authorities:
        raise ValueError("probe_coalesced needs at least one authority")
    context = _build_context(sni=sni, client_cert=client_cert, trust_pem=trust_pem, tls_version=tls_version, http2=True)
    observer = _Observer()
    observer.install(context)
    outcomes: list[Outcome] = []
    raw: socket.socket | None = None
    conn: _TLSConnection | None = None
    try:
        try:
            raw = socket.create_connection(address, timeout=timeout)
        except Exception as exc:
            raise _classify(exc, "connect", timeout) from exc
        try:
            conn = _TLSConnection(context, raw, sni, timeout)
            conn.start_phase()
            conn.handshake()
        except Exception as exc:
            raise _classify(exc, "handshake", timeout) from exc
        if conn.tls.selected_alpn_protocol() != "h2":
            raise _probe_failure("handshake", "alpn",
                                 f"the probe needs HTTP/2, but the listener did not select h2 via ALPN "
                                 f"(selected {conn.tls.selected_alpn_protocol()!r})")
        h2conn = _h2_client()
        for authority in authorities:
            conn.start_phase()
            status, reason, resp_headers, body = _h2_request(
                conn, h2conn, method="GET", authority=authority, path=path, headers=headers)
            outcomes.append(Response(status, reason, resp_headers, body, observer.tls_info(conn.tls)))
    except _Failure as failure:
        outcomes += [_outcome_of(failure, observer, conn)] * (len(authorities) - len(outcomes))
    finally:
        if raw is not None:
            raw.close()
    return outcomes


def _reason_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _format_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def curl_command(
    address: tuple[str, int],
    *,
    sni: str | None,
    host: str | None = None,
    path: str = "/",
    client_cert: ClientCertificate | None = None,
    trust_file: Path | str | None = None,
    tls_version: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    method: str = "GET",
    body: bytes | None = None,
    http2: bool = False,
    plaintext: bool = False,
) -> str:
    """The curl command line that repeats a :func:`probe` by hand.

    Trust is a file here (``--cacert``), not PEM bytes; without one the command
    uses ``--insecure``, as ``probe(trust_pem=None)`` does. ``plaintext``: HTTP over
    bare TCP, as ``probe(plaintext=True)`` (an HTTP listener).
    """
    ip, port = address
    argv = ["curl", "-v", "--no-progress-meter", "--http2" if http2 else "--http1.1"]
    if plaintext:
        argv[-1] = "--http2-prior-knowledge" if http2 else "--http1.1"
        if method != "GET":
            argv += ["-X", method]
        for name, value in ([("Host", host)] if host else []) + list(headers):
            argv += ["-H", f"{name}: {value}"]
        argv += _curl_body(body)
        argv.append(f"http://{_format_host(ip)}:{port}{path}")
        return shlex.join(argv)
    if sni is not None:
        argv += ["--resolve", f"{sni}:{port}:{_format_host(ip)}"]
        url = f"https://{sni}:{port}{path}"
    else:
        url = f"https://{_format_host(ip)}:{port}{path}"
    if trust_file is not None:
        argv += ["--cacert", str(trust_file)]
    else:
        argv += ["--insecure"]
    if client_cert is not None:
        argv += ["--cert", str(client_cert.chain_file), "--key", str(client_cert.key_file)]
    if tls_version is not None:
        flag = {"TLSv1.2": "1.2", "TLSv1.3": "1.3"}[tls_version]
        argv += [f"--tlsv{flag}", "--tls-max", flag]
    if method != "GET":
        argv += ["-X", method]
    if host is not None and host != sni:
        argv += ["-H", f"Host: {host}"]
    for name, value in headers:
        argv += ["-H", f"{name}: {value}"]
    argv += _curl_body(body)
    argv.append(url)
    return shlex.join(argv)


def _curl_body(body: bytes | None) -> list[str]:
    # --data-binary sends the bytes as they are (no newline stripping, no urlencoding).
    return [] if body is None else ["--data-binary", body.decode("utf-8", "backslashreplace")]


def openssl_command(
    address: tuple[str, int],
    *,
    sni: str | None,
    client_cert: ClientCertificate | None = None,
    trust_file: Path | str | None = None,
    tls_version: str | None = None,
    http2: bool = False,
) -> str:
    """The ``openssl s_client`` command line for the handshake of a :func:`probe`."""
    ip, port = address
    argv = ["openssl", "s_client", "-connect", f"{_format_host(ip)}:{port}"]
    argv += ["-servername", sni] if sni is not None else ["-noservername"]
    if trust_file is not None:
        argv += ["-CAfile", str(trust_file), "-verify_return_error"]
        if sni is not None:
            argv += ["-verify_hostname", sni]
    if client_cert is not None:
        # -cert reads only the leaf; -cert_chain adds the rest. The chain file
        # starts with the leaf too, so s_client sends the leaf twice; servers
        # tolerate that, and we have no intermediates-only file to offer.
        argv += [
            "-cert",
            str(client_cert.chain_file),
            "-cert_chain",
            str(client_cert.chain_file),
            "-key",
            str(client_cert.key_file),
        ]
    if tls_version is not None:
        argv.append({"TLSv1.2": "-tls1_2", "TLSv1.3": "-tls1_3"}[tls_version])
    argv += ["-alpn", "h2" if http2 else "http/1.1"]
    return shlex.join(argv)
