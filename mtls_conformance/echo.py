"""Echo backend that answers like the upstream ``echo-basic`` image.

The JSON body carries the fields the Gateway API conformance suite reads from
``conformance/echo-basic``: ``path`` (the raw request target), ``host``,
``method``, ``proto``, ``headers`` (canonical names, Host excluded, as Go's
net/http does), ``httpPort`` (a string), ``namespace``, ``ingress``,
``service``, ``pod`` and, on TLS connections only, ``tls``. As upstream,
``tls.peerCertificates`` and ``tls.negotiatedProtocol`` are omitted when empty,
and ``cipherSuite`` uses Go's (IANA) names where we know them.

It is part of the harness, not a fixture module: the targets run it as the backends of
the scenarios (``Target.start_backend``), in this process or as a child process
(``EchoProcess``), and the echo image runs it (``--from-environment``); the
``mtls_echo_server`` fixture lives in mtls_conformance/fixtures/echo.py.

The TLS variant uses the stdlib ``ssl`` module. That is fine for a backend: the
alerts that scenarios assert come from the gateway, not from here.
``client_ca_pem`` alone means "verify a client certificate if one is sent"
(upstream's ``VerifyClientCertIfGiven``); ``require_client_cert`` makes it
mandatory.
"""

from __future__ import annotations

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

__all__ = ["EchoProcess", "EchoServer", "ServerTLS"]

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


# -- the echo server as a child process ---------------------------------------------
#
# A target whose gateway cannot reach this process's loopback (the kubernetes target:
# the API server refuses loopback endpoints) runs the echo server in a child process
# somewhere else, e.g. inside a network namespace. The protocol is JSON lines:
#
#   parent -> child stdin:  the configuration (one line), then "sync <n>" lines
#   child -> parent stdout: {"port": N}, then {"request": ...}, {"handshake_failure":
#                           [address, text]}, {"error": [address, text]}, {"sync": n}
#
# The child exits when its stdin reaches EOF, so it never outlives the parent, and on
# SIGTERM. Private keys travel through the pipe, never through files.


class _ReportingEchoServer(EchoServer):
    """An EchoServer that also reports what it records on stdout."""

    _emit_lock = threading.Lock()

    @classmethod
    def emit(cls, message: dict) -> None:
        with cls._emit_lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    def _record(self, answer: dict) -> None:
        super()._record(answer)
        self.emit({"request": answer})

    def _record_error(self, client_address: Any, exc: BaseException) -> None:
        super()._record_error(client_address, exc)
        self.emit({"error": [client_address, self.errors[-1][1]]})

    def _record_handshake_failure(self, client_address: Any, exc: BaseException) -> None:
        super()._record_handshake_failure(client_address, exc)
        self.emit({"handshake_failure": [client_address, self.handshake_failures[-1][1]]})


def _tls_to_json(tls: ServerTLS | None) -> dict | None:
    if tls is None:
        return None
    return {"cert_chain_pem": tls.cert_chain_pem.decode("ascii"), "key_pem": tls.key_pem.decode("ascii"),
            "client_ca_pem": tls.client_ca_pem.decode("ascii") if tls.client_ca_pem else None,
            "require_client_cert": tls.require_client_cert}


def _tls_from_json(data: dict | None) -> ServerTLS | None:
    if data is None:
        return None
    return ServerTLS(cert_chain_pem=data["cert_chain_pem"].encode("ascii"), key_pem=data["key_pem"].encode("ascii"),
                     client_ca_pem=data["client_ca_pem"].encode("ascii") if data.get("client_ca_pem") else None,
                     require_client_cert=bool(data.get("require_client_cert")))


def serve_from_environment(environ: dict[str, str]) -> int:
    """The echo image's entry point (deploy/echo/Containerfile): upstream echo-basic's
    environment contract, so that ``--echo-image`` may name either image.

    HTTP on ``HTTP_PORT`` (3000); HTTPS on ``HTTPS_PORT`` (8443) when ``TLS_SERVER_CERT``
    and ``TLS_SERVER_PRIVKEY`` name PEM files; ``TLS_CLIENT_CACERTS`` verifies a client
    certificate if one is sent. ``NAMESPACE``, ``SERVICE_NAME``, ``POD_NAME`` and
    ``INGRESS_NAME`` go into the answer. Each request is one JSON line on stdout,
    ``{"request": <answer>}``: the pod's log is the harness's request log, and unlike
    echo-basic's it says whether the request came over TLS. Runs until SIGTERM.
    """
    import signal
    from pathlib import Path

    def setting(name: str, default: str = "") -> str:
        return environ.get(name) or default

    try:
        tls = None
        if setting("TLS_SERVER_CERT") and setting("TLS_SERVER_PRIVKEY"):
            ca = setting("TLS_CLIENT_CACERTS")
            tls = ServerTLS(cert_chain_pem=Path(setting("TLS_SERVER_CERT")).read_bytes(),
                            key_pem=Path(setting("TLS_SERVER_PRIVKEY")).read_bytes(),
                            client_ca_pem=Path(ca).read_bytes() if ca else None)
        ports = [(int(setting("HTTP_PORT", "3000")), None)]
        if tls is not None:
            ports.append((int(setting("HTTPS_PORT", "8443")), tls))
    except (OSError, ValueError) as exc:
        print(f"mtls_conformance.echo: {exc}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    servers = []
    try:
        for port, port_tls in ports:
            servers.append(_ReportingEchoServer(
                namespace=setting("NAMESPACE"), service=setting("SERVICE_NAME"), pod=setting("POD_NAME"),
                ingress=setting("INGRESS_NAME"), tls=port_tls, host="0.0.0.0", port=port).start())
            print(f"Starting server, listening on port {port} ({'https' if port_tls else 'http'})", flush=True)
        stopped.wait()
    except (OSError, ssl.SSLError) as exc:
        print(f"mtls_conformance.echo: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            server.stop()
    return 0


def serve_by_hand(argv: list[str]) -> int:
    """``python -m mtls_conformance.echo --port 8080 [--tls-cert F --tls-key F [--client-ca F]]``:
    an echo backend to put behind a gateway when checking a guide by hand."""
    import argparse
    import signal
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m mtls_conformance.echo",
                                     description="an echo backend answering like upstream's echo-basic")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the key of --tls-cert (PEM)")
    parser.add_argument("--client-ca", type=Path, help="verify client certificates against this CA (PEM)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--service", default="echo")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls = None
    try:
        if args.tls_cert:
            tls = ServerTLS(cert_chain_pem=args.tls_cert.read_bytes(), key_pem=args.tls_key.read_bytes(),
                            client_ca_pem=args.client_ca.read_bytes() if args.client_ca else None)
        server = EchoServer(namespace=args.namespace, service=args.service, pod=f"{args.service}-0",
                            tls=tls, host=args.host, port=args.port).start()
    except (OSError, ValueError, ssl.SSLError) as exc:
        print(f"mtls_conformance.echo: {exc}", file=sys.stderr)
        return 1
    print(f"echo backend: {'https' if tls else 'http'}://{args.host}:{server.port}/ (Ctrl-C stops it)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
    return 0


def main() -> int:
    """``python -m mtls_conformance.echo``: serve one echo server as described above;
    ``python -m mtls_conformance.echo --from-environment``: the echo image (serve_from_environment)."""
    import signal

    if sys.argv[1:] == ["--from-environment"]:
        return serve_from_environment(dict(os.environ))
    if sys.argv[1:]:
        return serve_by_hand(sys.argv[1:])

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    config = json.loads(sys.stdin.readline() or "null")
    if not isinstance(config, dict):
        print("mtls_conformance.echo: expected a JSON configuration line on stdin", file=sys.stderr)
        return 2
    server = _ReportingEchoServer(namespace=config["namespace"], service=config["service"], pod=config["pod"],
                                  tls=_tls_from_json(config.get("tls")), host=config.get("host", "127.0.0.1"))
    server.start()
    try:
        server.emit({"port": server.port})
        for line in sys.stdin:
            if line.startswith("sync "):
                server.emit({"sync": int(line.split()[1])})
    finally:
        server.stop()
    return 0


class EchoProcess:
    """An :class:`EchoServer` in a child process: same ``requests``, ``address`` and waits.

    ``command_prefix`` runs the child somewhere else, e.g. ``["ip", "netns", "exec", NS]``;
    ``host`` is the address it binds there.
    """

    def __init__(self, *, namespace: str, service: str, pod: str, host: str, tls: ServerTLS | None = None,
                 command_prefix: tuple[str, ...] = (), log_path: str | None = None) -> None:
        self.namespace, self.service, self.pod, self.host, self.tls = namespace, service, pod, host, tls
        self.command_prefix = tuple(command_prefix)
        self.log_path = log_path
        self._requests: list[dict] = []
        self._handshake_failures: list[tuple[Any, str]] = []
        self._errors: list[tuple[Any, str]] = []
        self._synced = 0
        self._sync_sent = 0
        self._port: int | None = None
        self._lock = threading.Condition()
        self._proc: Any = None
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"on {self.host}:{self._port} pid {self._proc.pid}" if self._proc else "stopped"
        return f"<EchoProcess {self.namespace}/{self.service} {'https' if self.tls else 'http'} {state}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"echo process {self.namespace}/{self.service} is not running; call start() first")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _log_tail(self) -> str:
        try:
            with open(self.log_path or "", errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-5:]) or "(no output)"
        except OSError:
            return "(no output)"

    def start(self, *, timeout: float = 15.0) -> EchoProcess:
        import subprocess
        from pathlib import Path

        if self._proc is not None:
            raise RuntimeError(f"echo process {self.namespace}/{self.service} is already running")
        argv = [*self.command_prefix, sys.executable, "-m", "mtls_conformance.echo"]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            # Its own session: a Ctrl-C in the terminal reaches the harness only, which
            # then stops this child in order (closing stdin).
            from .processes import spawn  # not at the top: the echo image runs this module alone

            self._proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                               cwd=Path(__file__).resolve().parent.parent)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        config = {"namespace": self.namespace, "service": self.service, "pod": self.pod, "host": self.host,
                  "tls": _tls_to_json(self.tls)}
        try:
            self._proc.stdin.write(json.dumps(config).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError:
            pass  # it died already; reported below
        self._reader = threading.Thread(target=self._read, name=f"echo-process-{self.service}", daemon=True)
        self._reader.start()
        with self._lock:
            started = self._lock.wait_for(lambda: self._port is not None or self._proc.poll() is not None, timeout)
        if self._port is None:
            status = self._proc.poll()
            self.stop()
            why = f"exited with status {status}" if started else f"did not report its port within {timeout:g} s"
            raise RuntimeError(f"echo process {self.namespace}/{self.service} ({' '.join(argv)}) {why}: "
                               f"{self._log_tail()}")
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if "port" in event:
                    self._port = int(event["port"])
                elif "request" in event:
                    self._requests.append(event["request"])
                elif "handshake_failure" in event:
                    self._handshake_failures.append(tuple(event["handshake_failure"]))
                elif "error" in event:
                    self._errors.append(tuple(event["error"]))
                elif "sync" in event:
                    self._synced = max(self._synced, int(event["sync"]))
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def _sync(self, timeout: float = 10.0) -> None:
        # The child records a request before answering it, but its report may still be
        # in the pipe when the client has the answer: a round trip flushes it.
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                return
            self._sync_sent += 1
            n = self._sync_sent
            try:
                self._proc.stdin.write(f"sync {n}\n".encode())
                self._proc.stdin.flush()
            except OSError:
                return
            if not self._lock.wait_for(lambda: self._synced >= n or self._proc.poll() is not None, timeout):
                raise AssertionError(f"echo process {self.namespace}/{self.service} did not answer a sync "
                                     f"within {timeout:g} s")

    @property
    def requests(self) -> list[dict]:
        self._sync()
        with self._lock:
            return list(self._requests)

    @property
    def handshake_failures(self) -> list[tuple[Any, str]]:
        self._sync()
        with self._lock:
            return list(self._handshake_failures)

    @property
    def errors(self) -> list[tuple[Any, str]]:
        self._sync()
        with self._lock:
            return list(self._errors)

    def wait_for_handshake_failures(self, count: int, *, timeout: float = 10.0) -> list[tuple[Any, str]]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._handshake_failures) >= count, timeout):
                raise AssertionError(
                    f"echo process {self.namespace}/{self.service}: expected {count} failed handshakes "
                    f"within {timeout:g}s, saw {len(self._handshake_failures)}: {self._handshake_failures}")
            return list(self._handshake_failures)

    def stop(self, *, timeout: float = 5.0) -> None:
        import subprocess

        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # EOF: the child stops its server and exits
        except OSError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=timeout)
        proc.stdout.close()
        self._port = None


if __name__ == "__main__":
    sys.exit(main())
