"""The echo server in this process: ``EchoServer`` and its TLS settings ``ServerTLS``
(``echo``'s docstring says what it answers). Public through ``mtls_conformance.echo``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import ssl
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

# Go's tls.CipherSuiteName spelling for what OpenSSL 3 negotiates by default.
# TLS 1.3 suites already carry their IANA names in OpenSSL.
_GO_CIPHER_NAMES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-AES128-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
}

# Bounds a connection that neither sends nor closes; stop() does not wait for it.
_IDLE_TIMEOUT = 30.0
# How long closing a connection may wait for the peer's close_notify or FIN.
_CLOSE_TIMEOUT = 1.0


@dataclass(frozen=True)
class ServerTLS:
    cert_chain_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    client_ca_pem: bytes | None = field(default=None, repr=False)
    require_client_cert: bool = False

    def context(self) -> ssl.SSLContext:
        if self.require_client_cert and self.client_ca_pem is None:
            raise ValueError("ServerTLS(require_client_cert=True) needs client_ca_pem to verify against")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _load_cert_chain_from_memory(context, self.cert_chain_pem, self.key_pem)
        if self.client_ca_pem is not None:
            context.load_verify_locations(cadata=self.client_ca_pem.decode("ascii"))
            context.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
        # Only HTTP/1.1 is spoken here; offering h2 would be a lie.
        context.set_alpn_protocols(["http/1.1"])
        return context


def _load_cert_chain_from_memory(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    # The stdlib only loads certificates from files (bpo-16487). A memfd keeps
    # the key off the filesystem; /proc/self/fd lets OpenSSL open it by name.
    fd = os.memfd_create("echo-server-credential", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem + b"\n" + chain_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _canonical_header_name(name: str) -> str:
    # Go's textproto.CanonicalMIMEHeaderKey; names with unusual bytes are left alone.
    if not name or any(not (c.isalnum() or c == "-") for c in name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class _Connection:
    """Holder for a connection's socket, which changes when TLS wraps it."""

    __slots__ = ("sock", "server_name")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.server_name: str | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _EchoHTTPServer
    timeout = _IDLE_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request logs would drown pytest's captured output

    def __getattr__(self, name: str) -> Callable[[], None]:
        # Every method is echoed, as upstream does; http.server dispatches on do_<METHOD>.
        if name.startswith("do_"):
            return self._echo
        raise AttributeError(name)

    def _echo(self) -> None:
        self._discard_body()
        answer = self.server.echo.describe_request(self)
        body = json.dumps(answer, indent=1).encode("utf-8")
        # Recorded before answering: a client holding the response may assert on it.
        self.server.echo._record(answer)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _discard_body(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            # Not worth a chunked decoder: answer, then close instead of guessing framing.
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                break
            length -= len(chunk)


class _EchoHTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    # Joined in server_close(); stop() first unblocks them by shutting sockets down.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, echo: EchoServer, address: tuple[str, int], context: ssl.SSLContext | None) -> None:
        self.echo = echo
        self.ssl_context = context
        self.connections: set[_Connection] = set()
        self.connections_lock = threading.Lock()
        self.stopping = False
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) we do not need.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        conn = _Connection(request)
        with self.connections_lock:
            if self.stopping:
                self.shutdown_request(request)
                return
            self.connections.add(conn)
        super().process_request(conn, client_address)  # type: ignore[arg-type]

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn: _Connection = request
        sock = conn.sock
        sock.settimeout(_IDLE_TIMEOUT)
        # As Go's net package sets on every TCP connection (echo-basic): http.server writes
        # the headers and the body apart, and with Nagle's algorithm the body waited for the
        # peer's delayed ACK, 40 ms of every answer (benchmarks/results-2026-12-06-turns.md).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            try:
                tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except OSError:
                return
            with self.connections_lock:
                conn.sock = tls
                if self.stopping:
                    return
            try:
                tls._echo_connection = conn  # type: ignore[attr-defined]  # read by the SNI callback
                tls.do_handshake()
            except (OSError, ValueError) as exc:
                self.echo._record_handshake_failure(client_address, exc)
                _lingering_close(tls)
                return
            sock = tls
        self.RequestHandlerClass(sock, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        conn = request if isinstance(request, _Connection) else _Connection(request)
        with self.connections_lock:
            self.connections.discard(conn)
        sock = conn.sock
        if isinstance(sock, ssl.SSLSocket) and not self.stopping:
            # close_notify first, as Go's server does: peers such as
            # `openssl s_client` report a bare TCP close as an error.
            try:
                sock.settimeout(_CLOSE_TIMEOUT)
                sock.unwrap()
            except (OSError, ValueError):
                pass  # the peer left first, or the handshake never finished
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Peers hanging up mid-request are normal in rejection tests; anything
        # else is a bug in this server and must not vanish silently.
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, OSError):
            self.echo._record_error(client_address, exc)

    def abort_connections(self) -> None:
        with self.connections_lock:
            self.stopping = True
            connections = list(self.connections)
        for conn in connections:
            try:
                # socket.socket.shutdown, not SSLSocket's: no TLS state touched
                # while a handler thread may be inside a read on it.
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
            except OSError:
                pass


class EchoServer:
    """A threaded HTTP/1.1 echo backend on an ephemeral port."""

    def __init__(
        self,
        *,
        namespace: str,
        service: str,
        pod: str,
        tls: ServerTLS | None = None,
        host: str = "127.0.0.1",
        ingress: str = "",
        port: int = 0,
    ) -> None:
        self.namespace = namespace
        self.service = service
        self.pod = pod
        self.ingress = ingress
        self.tls = tls
        self.host = host
        self._bind_port = port  # 0: any free one
        self.requests: list[dict] = []
        # Handshakes that failed on this server: (client address, error text).
        self.handshake_failures: list[tuple[Any, str]] = []
        # Exceptions inside the request handler (bugs here), with tracebacks.
        self.errors: list[tuple[Any, str]] = []
        self._lock = threading.Condition()
        self._server: _EchoHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"on {self.host}:{self.port}" if self._server else "stopped"
        return f"<EchoServer {self.namespace}/{self.service} {'https' if self.tls else 'http'} {state}>"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"echo server {self.namespace}/{self.service} is not running; call start() first")
        return self._server.server_address[1]

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> EchoServer:
        if self._server is not None:
            raise RuntimeError(f"echo server {self.namespace}/{self.service} is already running on port {self.port}")
        context = self.tls.context() if self.tls is not None else None
        if context is not None:
            context.sni_callback = _remember_sni
        self._server = _EchoHTTPServer(self, (self.host, self._bind_port), context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"echo-{self.service}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        server.abort_connections()
        server.server_close()  # closes the listener and joins handler threads
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def describe_request(self, handler: BaseHTTPRequestHandler) -> dict:
        headers: dict[str, list[str]] = {}
        for name, value in handler.headers.items():
            canonical = _canonical_header_name(name)
            if canonical == "Host":
                continue  # Go moves Host out of Header into Request.Host
            headers.setdefault(canonical, []).append(value)
        answer: dict[str, Any] = {
            "path": handler.path,
            "host": handler.headers.get("Host", ""),
            "method": handler.command,
            "proto": handler.request_version,
            "headers": headers,
            "httpPort": str(self.port),
            "namespace": self.namespace,
            "ingress": self.ingress,
            "service": self.service,
            "pod": self.pod,
        }
        sock = handler.connection
        if isinstance(sock, ssl.SSLSocket):
            answer["tls"] = _tls_state(sock)
        return answer

    def _record(self, answer: dict) -> None:
        with self._lock:
            self.requests.append(answer)

    def _record_error(self, client_address: Any, exc: BaseException) -> None:
        with self._lock:
            self.errors.append((client_address, "".join(traceback.format_exception(exc))))

    def _record_handshake_failure(self, client_address: Any, exc: BaseException) -> None:
        with self._lock:
            self.handshake_failures.append((client_address, f"{type(exc).__name__}: {exc}"))
            self._lock.notify_all()

    def wait_for_handshake_failures(self, count: int, *, timeout: float = 10.0) -> list[tuple[Any, str]]:
        """Block until ``count`` handshakes have failed here; a client sees the
        alert before this server's thread has recorded it."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.handshake_failures) >= count, timeout):
                raise AssertionError(
                    f"echo server {self.namespace}/{self.service}: expected {count} failed handshakes "
                    f"within {timeout:g}s, saw {len(self.handshake_failures)}: {self.handshake_failures}"
                )
            return list(self.handshake_failures)


def _lingering_close(sock: ssl.SSLSocket) -> None:
    """Close after a failed handshake without turning the alert into a reset.

    Closing a socket with unread input makes the kernel send RST, which can
    overtake the alert we just sent (TLS 1.3 clients write their request right
    after their Finished). Send FIN, drain briefly, then close.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)
        sock.settimeout(_CLOSE_TIMEOUT)
        while socket.socket.recv(sock, 65536):
            pass
    except OSError:
        pass


def _remember_sni(sock: Any, server_name: str | None, context: ssl.SSLContext) -> None:
    conn = getattr(sock, "_echo_connection", None)
    if conn is not None:
        conn.server_name = server_name


def _tls_state(sock: ssl.SSLSocket) -> dict:
    conn = getattr(sock, "_echo_connection", None)
    cipher = (sock.cipher() or ("",))[0]
    state: dict[str, Any] = {
        "version": sock.version() or "",
        "serverName": (conn.server_name if conn is not None else None) or "",
        "cipherSuite": _GO_CIPHER_NAMES.get(cipher, cipher),
    }
    alpn = sock.selected_alpn_protocol()
    if alpn:
        state["negotiatedProtocol"] = alpn
    peers = _peer_chain_pem(sock)
    if peers:
        state["peerCertificates"] = peers
    return state


def _peer_chain_pem(sock: ssl.SSLSocket) -> list[str]:
    # Upstream echoes every certificate the client sent, not just the leaf. The
    # stdlib exposes that chain only privately before Python 3.13.
    sslobj = getattr(sock, "_sslobj", None)
    get_chain = getattr(sslobj, "get_unverified_chain", None)
    if get_chain is not None:
        # Python 3.11 answers [None] when the client sent no certificate.
        chain = [cert for cert in (get_chain() or []) if cert is not None]
        return [ssl.DER_cert_to_PEM_cert(cert.public_bytes(ssl._ssl.ENCODING_DER)) for cert in chain]  # type: ignore[attr-defined]
    der = sock.getpeercert(binary_form=True)
    return [ssl.DER_cert_to_PEM_cert(der)] if der else []
