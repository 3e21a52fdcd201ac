"""The probe against real sockets and real TLS, one tiny server per behaviour.

The servers here are deliberately not fixtures/echo.py: each one does exactly
one thing (answer, close, reset, stay silent) so the classification under test
is the only thing that can vary.
"""

from __future__ import annotations

import datetime
import json
import shlex
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from mtls_conformance.probe import ProbeFailure, Rejection, Response, Resumption, TLSInfo, alert_name, curl_command, openssl_command, probe
from mtls_conformance.fixtures.echo import EchoServer, ServerTLS
from mtls_conformance.fixtures.pki import PKI, Authority, Credential

HOST = "gw.example.org"
BOTH_VERSIONS = pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("probe-pki"))


@pytest.fixture(scope="module")
def ca(pki: PKI) -> Authority:
    return pki.authority("trusted")


@pytest.fixture(scope="module")
def server_cred(ca: Authority) -> Credential:
    return ca.issue_server(HOST)


@pytest.fixture(scope="module")
def client_cred(ca: Authority) -> Credential:
    return ca.issue_client("client", common_name="client")


def server_context(server_cred: Credential, *, client_ca: Authority | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cred.chain_file, server_cred.key_file)
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca.cert_pem.decode())
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class OneShotServer:
    """Accepts connections on an ephemeral port and runs ``behaviour(sock)`` on each."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.done = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # listener closed by stop()
        try:
            conn.settimeout(10)
            self.behaviour(conn)
        except (OSError, ssl.SSLError) as exc:
            self.errors.append(exc)
        finally:
            conn.close()
            self.done.set()

    def stop(self) -> None:
        self.listener.close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "test server thread did not finish"


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket], None]], OneShotServer]]:
    servers: list[OneShotServer] = []

    def start(behaviour: Callable[[socket.socket], None]) -> OneShotServer:
        server = OneShotServer(behaviour)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def read_request_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def tls_answer(context: ssl.SSLContext, body: bytes = b'{"ok": true}', content_type: str = "application/json"):
    def behaviour(sock: socket.socket) -> None:
        with context.wrap_socket(sock, server_side=True) as tls:
            read_request_head(tls)
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type.encode() + b"\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )

    return behaviour


def reset(sock: socket.socket) -> None:
    # SO_LINGER with a zero timeout turns close() into an RST.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# -- responses ---------------------------------------------------------------------------


@BOTH_VERSIONS
def test_200_is_a_response_with_tls_details(serve, ca, server_cred, version) -> None:
    server = serve(tls_answer(server_context(server_cred)))
    outcome = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, tls_version=version)
    assert isinstance(outcome, Response), outcome.describe()
    assert (outcome.status, outcome.reason) == (200, "OK")
    assert outcome.json == {"ok": True}
    assert outcome.header("CONTENT-TYPE") == "application/json"
    assert outcome.tls is not None
    assert outcome.tls.version == version
    assert outcome.tls.alpn is None  # this server offers no ALPN
    assert outcome.tls.certificate_requested is False
    assert outcome.tls.server_certificate_pem is not None
    assert ssl.PEM_cert_to_DER_cert(outcome.tls.server_certificate_pem) == ssl.PEM_cert_to_DER_cert(
        server_cred.cert_pem.decode()
    )
    assert outcome.describe() == f"HTTP 200 OK over {version}, the listener requested no client certificate"


def test_json_is_parsed_only_for_application_json(serve, server_cred) -> None:
    server = serve(tls_answer(server_context(server_cred), body=b'{"a": 1}', content_type="text/plain"))
    outcome = probe(server.address, sni=HOST)
    assert isinstance(outcome, Response), outcome.describe()
    assert outcome.body == b'{"a": 1}'
    assert outcome.json is None


def test_certificate_requested_is_true_when_the_server_asks(serve, ca, server_cred, client_cred) -> None:
    server = serve(tls_answer(server_context(server_cred, client_ca=ca)))
    outcome = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, client_cert=client_cred)
    assert isinstance(outcome, Response), outcome.describe()
    assert outcome.tls is not None and outcome.tls.certificate_requested is True
    assert outcome.describe() == "HTTP 200 OK over TLSv1.3, the listener requested a client certificate"


def test_request_line_and_headers_are_what_was_asked_for(serve, server_cred) -> None:
    seen: list[bytes] = []
    context = server_context(server_cred)

    def behaviour(sock: socket.socket) -> None:
        with context.wrap_socket(sock, server_side=True) as tls:
            seen.append(read_request_head(tls))
            tls.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    server = serve(behaviour)
    outcome = probe(server.address, sni=HOST, host="app.example.org", path="/x?y=1", method="PUT", headers=[("X-Test", "1")])
    assert isinstance(outcome, Response), outcome.describe()
    assert outcome.status == 204
    head = seen[0].decode()
    assert head.startswith("PUT /x?y=1 HTTP/1.1\r\n")
    assert "host: app.example.org\r\n" in head.lower()
    assert "x-test: 1\r\n" in head.lower()


def test_http2_response(serve, ca, server_cred) -> None:
    context = server_context(server_cred)
    context.set_alpn_protocols(["h2"])
    seen: dict[str, str] = {}

    def behaviour(sock: socket.socket) -> None:
        with context.wrap_socket(sock, server_side=True) as tls:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
            conn.initiate_connection()
            tls.sendall(conn.data_to_send())
            while True:
                data = tls.recv(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        seen.update(dict(event.headers))
                        conn.send_headers(event.stream_id, [(":status", "421"), ("content-type", "application/json")])
                        conn.send_data(event.stream_id, b'{"h2": true}', end_stream=True)
                        tls.sendall(conn.data_to_send())
                        return
                tls.sendall(conn.data_to_send())

    server = serve(behaviour)
    outcome = probe(server.address, sni=HOST, host="other.example.org", trust_pem=ca.cert_pem, http2=True)
    assert isinstance(outcome, Response), outcome.describe()
    assert (outcome.status, outcome.reason) == (421, "Misdirected Request")
    assert outcome.json == {"h2": True}
    assert outcome.tls is not None and outcome.tls.alpn == "h2"
    assert seen[":authority"] == "other.example.org"


# -- rejections by the server -----------------------------------------------------------


def test_missing_client_cert_tls13_is_an_alert_on_first_read(serve, ca, server_cred) -> None:
    server = serve(tls_answer(server_context(server_cred, client_ca=ca)))
    outcome = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, tls_version="TLSv1.3")
    assert isinstance(outcome, Rejection), outcome.describe()
    assert (outcome.phase, outcome.kind, outcome.alert) == ("first-read", "alert", "certificate required")
    assert outcome.tls is not None and outcome.tls.certificate_requested is True
    assert "TLSV13_ALERT_CERTIFICATE_REQUIRED" in outcome.detail
    assert outcome.describe() == (
        "TLS alert 'certificate required' on first read (TLSv1.3, the listener requested a client certificate)"
    )


def test_missing_client_cert_tls12_is_an_alert_during_handshake(serve, ca, server_cred) -> None:
    server = serve(tls_answer(server_context(server_cred, client_ca=ca)))
    outcome = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, tls_version="TLSv1.2")
    assert isinstance(outcome, Rejection), outcome.describe()
    # TLS 1.2 has no "certificate required" alert; OpenSSL sends handshake_failure.
    assert (outcome.phase, outcome.kind, outcome.alert) == ("handshake", "alert", "handshake failure")
    assert outcome.tls is not None and outcome.tls.certificate_requested is True
    assert outcome.describe() == (
        "TLS alert 'handshake failure' during handshake (TLSv1.2, the listener requested a client certificate)"
    )


# Each bad client certificate, and the alert OpenSSL's server sends for it.
BAD_CLIENT_CERTS = {
    "unknown ca": lambda pki, ca: pki.authority("untrusted").issue_client("stranger"),
    "certificate expired": lambda pki, ca: ca.issue_client(
        "expired", not_after=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    ),
    # X509_V_ERR_CERT_NOT_YET_VALID maps to bad_certificate, not a dedicated alert.
    "bad certificate": lambda pki, ca: ca.issue_client(
        "future", not_before=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    ),
    # X509_V_ERR_INVALID_PURPOSE (EKU serverAuth only).
    "unsupported certificate": lambda pki, ca: ca.issue_client("server-auth-only", server_auth_only=True),
}


@pytest.mark.parametrize("alert", sorted(BAD_CLIENT_CERTS))
@pytest.mark.parametrize(("version", "phase"), [("TLSv1.3", "first-read"), ("TLSv1.2", "handshake")])
def test_bad_client_cert_alerts(serve, pki, ca, server_cred, alert, version, phase) -> None:
    client = BAD_CLIENT_CERTS[alert](pki, ca)
    server = serve(tls_answer(server_context(server_cred, client_ca=ca)))
    outcome = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, client_cert=client, tls_version=version)
    assert isinstance(outcome, Rejection), outcome.describe()
    assert (outcome.phase, outcome.kind, outcome.alert) == (phase, "alert", alert)
    assert outcome.tls is not None and outcome.tls.version == version


def test_good_client_cert_passes_the_same_server(serve, ca, server_cred, client_cred) -> None:
    # Proves the rejections above were about the certificates, not the server.
    server = serve(tls_answer(server_context(server_cred, client_ca=ca)))
    outcome = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, client_cert=client_cred, tls_version="TLSv1.2")
    assert isinstance(outcome, Response), outcome.describe()


def test_close_after_handshake_is_closed_on_first_read(serve, server_cred) -> None:
    context = server_context(server_cred)

    def behaviour(sock: socket.socket) -> None:
        with context.wrap_socket(sock, server_side=True) as tls:
            read_request_head(tls)
            tls.unwrap()  # close_notify, then close: NGINX's "444" shape

    server = serve(behaviour)
    outcome = probe(server.address, sni=HOST)
    assert isinstance(outcome, Rejection), outcome.describe()
    assert (outcome.phase, outcome.kind, outcome.alert) == ("first-read", "closed", None)
    assert outcome.describe() == "connection closed without a response on first read (TLSv1.3, the listener requested no client certificate)"


def test_reset_after_handshake_is_reset_on_first_read(serve, server_cred) -> None:
    context = server_context(server_cred)

    def behaviour(sock: socket.socket) -> None:
        tls = context.wrap_socket(sock, server_side=True)
        read_request_head(tls)
        reset(tls)
        tls.close()

    server = serve(behaviour)
    outcome = probe(server.address, sni=HOST)
    assert isinstance(outcome, Rejection), outcome.describe()
    assert (outcome.phase, outcome.kind) == ("first-read", "reset"), outcome
    assert "ECONNRESET" in outcome.detail or "reset" in outcome.detail.lower()


def test_reset_before_handshake_is_reset_during_handshake(serve) -> None:
    def behaviour(sock: socket.socket) -> None:
        sock.recv(1)  # the ClientHello has arrived
        reset(sock)

    server = serve(behaviour)
    outcome = probe(server.address, sni=HOST)
    assert isinstance(outcome, Rejection), outcome.describe()
    assert (outcome.phase, outcome.kind, outcome.alert) == ("handshake", "reset", None)


def read_client_hello(sock: socket.socket) -> None:
    # All of it: closing with unread input would send RST instead of FIN.
    header = sock.recv(5, socket.MSG_WAITALL)
    sock.recv(int.from_bytes(header[3:5], "big"), socket.MSG_WAITALL)


def test_close_before_handshake_is_closed_during_handshake(serve) -> None:
    server = serve(read_client_hello)
    outcome = probe(server.address, sni=HOST)
    assert isinstance(outcome, Rejection), outcome.describe()
    assert (outcome.phase, outcome.kind) == ("handshake", "closed")


def test_silent_server_is_a_timeout(serve) -> None:
    release = threading.Event()
    server = serve(lambda sock: release.wait(10))
    outcome = probe(server.address, sni=HOST, timeout=0.3)
    release.set()
    assert isinstance(outcome, Rejection), outcome.describe()
    assert (outcome.phase, outcome.kind) == ("handshake", "timeout")
    assert "no progress within 0.3s" in outcome.detail


def test_refused_port() -> None:
    # Bound but not listening: the kernel answers SYN with RST, and nobody else can take the port.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        outcome = probe(placeholder.getsockname(), sni=HOST)
    assert isinstance(outcome, Rejection), outcome.describe()
    assert (outcome.phase, outcome.kind, outcome.alert, outcome.tls) == ("connect", "refused", None, None)
    assert outcome.describe() == "connection refused on connect"


# -- rejections by the probe itself ------------------------------------------------------


def test_untrusted_server_cert_is_a_probe_failure_not_an_alert(serve, pki, server_cred) -> None:
    server = serve(tls_answer(server_context(server_cred)))
    outcome = probe(server.address, sni=HOST, trust_pem=pki.authority("untrusted").cert_pem)
    assert isinstance(outcome, ProbeFailure), outcome.describe()
    assert (outcome.phase, outcome.cause) == ("handshake", "server-certificate")
    assert outcome.detail == ("the probe could not verify the listener's certificate: "
                              "unable to get local issuer certificate")
    # The probe's own alert is recorded as the probe's, never as the server's.
    assert outcome.sent_alert == "unknown ca"


def test_wrong_sni_fails_hostname_check(serve, ca, server_cred) -> None:
    server = serve(tls_answer(server_context(server_cred)))
    outcome = probe(server.address, sni="other.example.org", trust_pem=ca.cert_pem)
    assert isinstance(outcome, ProbeFailure), outcome.describe()
    assert outcome.cause == "server-certificate"
    assert "Hostname mismatch" in outcome.detail


def test_bad_tls_version_argument() -> None:
    with pytest.raises(ValueError, match=r"tls_version must be one of \['TLSv1.2', 'TLSv1.3'\] or None, got 'TLSv1.1'"):
        probe(("127.0.0.1", 1), sni=HOST, tls_version="TLSv1.1")


# -- pure helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "name"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "certificate required"),
        ("TLSV1_ALERT_UNKNOWN_CA", "unknown ca"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "bad certificate"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate expired"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", "handshake failure"),
        ("SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "unsupported certificate"),
        ("TLSV1_UNRECOGNIZED_NAME", "unrecognized name"),
        ("CERTIFICATE_VERIFY_FAILED", None),
        ("UNEXPECTED_EOF_WHILE_READING", None),
        (None, None),
    ],
)
def test_alert_name(reason, name) -> None:
    assert alert_name(reason) == name


def test_describe_without_tls_details() -> None:
    rejection = Rejection(phase="handshake", kind="timeout", alert=None, detail="x", tls=None)
    assert rejection.describe() == "timed out during handshake"
    response = Response(status=404, reason="", headers=(), body=b"", tls=TLSInfo(None, None, None, None, None))
    assert response.describe() == "HTTP 404 over TLS version unknown"


def test_probe_module_does_not_import_fixtures() -> None:
    code = "import sys, mtls_conformance.probe; print([m for m in sys.modules if m.startswith('mtls_conformance.fixtures')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- reproduction commands, run for real ------------------------------------------------


@pytest.fixture
def mtls_echo(ca: Authority, server_cred: Credential) -> Iterator[EchoServer]:
    tls = ServerTLS(server_cred.chain_pem, server_cred.key_pem, client_ca_pem=ca.cert_pem, require_client_cert=True)
    with EchoServer(namespace="ns", service="echo", pod="echo-0", tls=tls) as server:
        yield server


def test_curl_command_reproduces_the_probe(mtls_echo, ca, client_cred) -> None:
    command = curl_command(
        mtls_echo.address,
        sni=HOST,
        client_cert=client_cred,
        trust_file=ca.cert_file,
        tls_version="TLSv1.3",
        headers=[("X-Probe", "curl")],
    )
    assert command.startswith(f"curl -v --no-progress-meter --http1.1 --resolve {HOST}:{mtls_echo.port}:127.0.0.1 ")
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    answer = json.loads(done.stdout)
    assert answer["tls"]["serverName"] == HOST
    assert answer["tls"]["version"] == "TLSv1.3"
    assert answer["headers"]["X-Probe"] == ["curl"]
    assert answer["tls"]["peerCertificates"][0] == client_cred.cert_pem.decode()

    # Without the client certificate curl sees the same alert the probe does.
    no_cert = curl_command(mtls_echo.address, sni=HOST, trust_file=ca.cert_file, tls_version="TLSv1.3")
    refused = subprocess.run(shlex.split(no_cert), capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    assert "tlsv13 alert certificate required" in refused.stderr
    outcome = probe(mtls_echo.address, sni=HOST, trust_pem=ca.cert_pem, tls_version="TLSv1.3")
    assert isinstance(outcome, Rejection) and outcome.alert == "certificate required"


def test_curl_command_without_trust_or_sni() -> None:
    command = curl_command(("::1", 8443), sni=None, host="h.example", method="POST", http2=True)
    assert command == "curl -v --no-progress-meter --http2 --insecure -X POST -H 'Host: h.example' 'https://[::1]:8443/'"


def test_curl_command_for_a_plaintext_request_reaches_the_server() -> None:
    with EchoServer(namespace="ns", service="echo", pod="echo-0") as server:
        command = curl_command(server.address, sni=None, host="h.example", path="/p", plaintext=True,
                               headers=[("X-Probe", "curl")])
        assert command == (f"curl -v --no-progress-meter --http1.1 -H 'Host: h.example' -H 'X-Probe: curl' "
                           f"http://127.0.0.1:{server.port}/p")
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    answer = json.loads(done.stdout)
    assert (answer["path"], answer["host"], answer["headers"]["X-Probe"]) == ("/p", "h.example", ["curl"])
    assert "tls" not in answer


def test_openssl_command_reproduces_the_handshake(mtls_echo, ca, client_cred) -> None:
    command = openssl_command(mtls_echo.address, sni=HOST, client_cert=client_cred, trust_file=ca.cert_file)
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    done = subprocess.run(
        [*shlex.split(command), "-ign_eof"], input=request, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    assert "Verification: OK" in done.stdout
    assert "HTTP/1.1 200 OK" in done.stdout
    assert mtls_echo.requests and mtls_echo.requests[-1]["tls"]["peerCertificates"][0] == client_cred.cert_pem.decode()


# -- Ctrl-C ------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["connect", "handshake", "first-read"])
def test_ctrl_c_during_a_probe_ends_it(serve, server_cred, monkeypatch, phase) -> None:
    """A KeyboardInterrupt (Ctrl-C, or SIGTERM through terminate_as_interrupt) is the
    user's, never the gateway's answer: a probe that filed it as a failure kept a 60 s
    wait going after the signal (seen in CI: the run outlived its interrupt)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if phase == "connect":  # no server: the connection is never made
        monkeypatch.setattr(socket, "create_connection", interrupted)
        with pytest.raises(KeyboardInterrupt):
            probe(("127.0.0.1", 9), sni=HOST)
        return
    server = serve(tls_answer(server_context(server_cred)))
    if phase == "handshake":
        monkeypatch.setattr(ssl.SSLObject, "do_handshake", interrupted)
    else:
        monkeypatch.setattr(ssl.SSLObject, "read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        probe(server.address, sni=HOST)


def test_a_body_is_sent_with_its_content_length(serve, server_cred) -> None:
    seen: list[bytes] = []
    context = server_context(server_cred)

    def behaviour(sock: socket.socket) -> None:
        with context.wrap_socket(sock, server_side=True) as tls:
            data = read_request_head(tls)
            while len(data) < data.index(b"\r\n\r\n") + 4 + 9:
                data += tls.recv(65536)
            seen.append(data)
            tls.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    server = serve(behaviour)
    outcome = probe(server.address, sni=HOST, path="/orders", method="POST", body=b'{"n": 1}\n')
    assert isinstance(outcome, Response), outcome.describe()
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /orders HTTP/1.1\r\n")
    assert b"content-length: 9\r\n" in head.lower() + b"\r\n"
    assert body == b'{"n": 1}\n'


def test_curl_command_sends_the_same_body() -> None:
    with EchoServer(namespace="ns", service="echo", pod="echo-0") as server:
        command = curl_command(server.address, sni=None, host="h.example", path="/p", plaintext=True,
                               method="POST", body=b'{"order": 1}')
        assert command.endswith(f"-X POST -H 'Host: h.example' --data-binary '{{\"order\": 1}}' "
                                f"http://127.0.0.1:{server.port}/p")
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert server.requests[-1]["method"] == "POST"
        assert server.requests[-1]["headers"]["Content-Length"] == ["12"]
# -- session resumption ------------------------------------------------------------------


def tls_answer_and_close_notify(context: ssl.SSLContext):
    """tls_answer, then a close_notify: a server (OpenSSL) drops a TLS 1.2 session from
    its cache when the connection ends without one."""
    def behaviour(sock: socket.socket) -> None:
        tls = context.wrap_socket(sock, server_side=True)
        read_request_head(tls)
        body = b'{"ok": true}'
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        try:
            tls.unwrap()
        except (OSError, ssl.SSLError):
            pass  # the probe closed first

    return behaviour


@pytest.mark.parametrize("version,tickets", [("TLSv1.3", True), ("TLSv1.2", False), ("TLSv1.2", True)],
                         ids=["TLSv1.3-ticket", "TLSv1.2-session-id", "TLSv1.2-ticket"])
def test_resumption_offers_the_session_of_the_probe_before(serve, ca, server_cred, version, tickets) -> None:
    context = server_context(server_cred)
    client = Resumption(tickets=tickets)
    seen = []
    for _ in range(2):
        server = serve(tls_answer_and_close_notify(context))
        outcome = probe(server.address, sni=HOST, trust_pem=ca.cert_pem, tls_version=version, resumption=client)
        assert isinstance(outcome, Response), outcome.describe()
        seen.append((client.offered, client.reused))
        assert client.resumable
    assert seen == [(False, False), (True, True)]
    assert client.session.has_ticket is tickets
