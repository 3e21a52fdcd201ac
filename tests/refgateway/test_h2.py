"""The HTTP/2 edge (refgateway/_edge.py, ALPN "h2") driven by a real h2 client.

Each test opens a fresh TLS connection that offers only ALPN ``h2`` and runs a
client-side ``h2.connection.H2Connection`` over it, so every frame the gateway sends is
parsed by the same library a real client would use. Sockets have bounded timeouts and
nothing sleeps: a gateway that stops answering fails the test with a timeout.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from hyperframe.frame import Frame, GoAwayFrame

from .conftest import _Echo, gateway, gateway_class, http_route, https_listener, service_objects, tls_secret
from .test_e2e import mtls_setup  # noqa: F401  (fixture: Gateway "mtls", :443 AllowValidOnly)

TIMEOUT = 10.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Answer:
    status: int | None = None
    headers: dict = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None

    def json(self) -> dict:
        return json.loads(self.body)


class H2Client:
    """One TLS connection with ALPN h2, a client-side H2Connection on top of it."""

    def __init__(self, port: int, pki: dict, *, sni: str = "example.com", cert: str | None = "client",
                 preface: bool = True):
        ctx = ssl.create_default_context(cafile=str(pki["files"]["server-ca"]))
        ctx.set_alpn_protocols(["h2"])
        if cert:
            ctx.load_cert_chain(*map(str, pki["files"][cert]))
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        except BaseException:
            raw.close()
            raise
        assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        self.port = port
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.answers: dict[int, Answer] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        if preface:
            self.conn.initiate_connection()
            self.flush()

    def __enter__(self) -> "H2Client":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(self, method: str, path: str, authority: str, *, end: bool = True, headers=(), then: bytes = b"") -> int:
        """Open a stream; ``then``: raw bytes sent in the same write, after the request's frames."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", method), (":scheme", "https"), (":authority", authority),
                                     (":path", path), *headers], end_stream=end)
        self.answers[sid] = Answer()
        self.sock.sendall(self.conn.data_to_send() + then)
        return sid

    def send_body(self, sid: int, body: bytes) -> None:
        """All of ``body`` then END_STREAM, within the flow-control windows the gateway grants."""
        view = memoryview(body)
        while view:
            n = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, len(view))
            if n <= 0:
                self.receive()  # until the gateway's WINDOW_UPDATE
                continue
            self.conn.send_data(sid, view[:n].tobytes())
            view = view[n:]
            self.flush()
        self.conn.end_stream(sid)
        self.flush()

    def receive(self) -> None:
        """One read from the socket, its events applied to ``answers``. Raises on timeout."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the gateway closed the connection")
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                a = self.answers[ev.stream_id]
                a.headers = dict(ev.headers)
                a.status = int(a.headers[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self.answers[ev.stream_id].body += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.answers[ev.stream_id].ended = True
            elif isinstance(ev, h2.events.StreamReset):
                self.answers[ev.stream_id].reset = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.terminated = ev
        self.flush()

    def wait(self, *sids: int) -> list[Answer]:
        while not all(self.answers[s].ended or self.answers[s].reset is not None for s in sids):
            if self.terminated is not None:
                raise AssertionError(f"GOAWAY before streams {sids} ended: {self.terminated}")
            self.receive()
        return [self.answers[s] for s in sids]


class _BodyEcho(_Echo):
    """conftest's echo backend, plus POST: the answer carries the request body it received."""

    def do_POST(self):
        received = self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"path": self.path, "method": self.command,
                           "headers": {k.lower(): v for k, v in self.headers.items()},
                           "body_sha256": hashlib.sha256(received).hexdigest(), "body_length": len(received),
                           "body": received.decode("latin-1")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def body_backend():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _BodyEcho)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def serve(start_gateway) -> int:
    gw = start_gateway()
    gw.wait_condition("Gateway", "mtls", "Programmed")
    return gw.port("mtls", 443)


@pytest.fixture
def mtls_port(mtls_setup, start_gateway):  # noqa: F811
    """Port 443 of Gateway "mtls" (AllowValidOnly), routing to conftest's GET echo."""
    return serve(start_gateway)


@pytest.fixture
def post_echo_port(mtls_setup, body_backend, start_gateway):  # noqa: F811
    """The same, with the Service's endpoints moved to the echo that answers POST with the body."""
    mtls_setup.apply(service_objects(body_backend)[1])  # the EndpointSlice
    return serve(start_gateway)


def test_get_reaches_backend(mtls_port, pki):
    with H2Client(mtls_port, pki) as c:
        sid = c.start("GET", "/x?q=1", f"example.com:{mtls_port}", headers=[("x-test", "h2")])
        [a] = c.wait(sid)
    assert a.status == 200, bytes(a.body)
    assert a.headers["content-type"] == "application/json"
    assert int(a.headers["content-length"]) == len(a.body)
    echo = a.json()
    assert echo["path"] == "/x?q=1"
    # :authority became the Host the backend sees; the stream carried the client's identity.
    assert echo["headers"]["host"] == f"example.com:{mtls_port}"
    assert echo["headers"]["x-test"] == "h2"
    assert echo["headers"]["x-forwarded-proto"] == "https"
    assert echo["headers"]["x-refgateway-client-verify"] == "SUCCESS"


def test_concurrent_streams_on_one_connection(post_echo_port, pki):
    """Stream 3 is answered while stream 1's request body is still open: no head-of-line wait."""
    with H2Client(post_echo_port, pki) as c:
        slow = c.start("POST", "/one", "example.com", end=False)
        fast = c.start("GET", "/two", "example.com")
        [second] = c.wait(fast)
        assert c.answers[slow].status is None, "stream 1 was answered before its request ended"
        c.send_body(slow, b"late body")
        [first] = c.wait(slow)
    assert (first.status, second.status) == (200, 200), (bytes(first.body), bytes(second.body))
    assert first.json()["path"] == "/one" and first.json()["body"] == "late body"
    assert second.json()["path"] == "/two"


@pytest.fixture
def two_listeners(cluster, pki, backend):
    """Gateway "vhosts": listeners a.example.com and b.example.com on :443 (the cert covers both)."""
    for obj in [gateway_class(), tls_secret("server-cert", pki["server"]), *service_objects(backend)]:
        cluster.apply(obj)
    cluster.apply(gateway("vhosts", [https_listener("a", 443, hostname="a.example.com"),
                                     https_listener("b", 443, hostname="b.example.com")]))
    cluster.apply(http_route("echo", "vhosts"))


@pytest.mark.parametrize("faults, misdirected", [((), 421), (("ignore-misdirected-requests",), 200)],
                         ids=["421", "fault-ignore-misdirected-requests"])
def test_authority_of_another_listener_is_misdirected(two_listeners, start_gateway, pki, faults, misdirected):
    """SNI picked listener a; a stream for b's hostname on that connection gets 421 (routing.misdirected)."""
    gw = start_gateway(*faults)
    gw.wait_condition("Gateway", "vhosts", "Programmed", listener="b")
    port = gw.port("vhosts", 443)
    with H2Client(port, pki, sni="a.example.com", cert=None) as c:
        own = c.start("GET", "/", f"a.example.com:{port}")
        other = c.start("GET", "/", f"b.example.com:{port}")
        unknown = c.start("GET", "/", "other.org")
        answers = c.wait(own, other, unknown)
    assert [a.status for a in answers] == [200, misdirected, 404], [bytes(a.body) for a in answers]
    if misdirected == 421:
        assert b"misdirected" in answers[1].body


def goaway_then_close(c: H2Client, sent: bytes) -> GoAwayFrame:
    """Send raw bytes, read everything until the gateway closes; the GOAWAY among the frames."""
    c.sock.sendall(sent)
    data = bytearray()
    try:
        while chunk := c.sock.recv(65536):
            data += chunk
    except (ssl.SSLEOFError, ConnectionResetError):
        pass  # a close without close_notify still is a close
    except TimeoutError:
        raise AssertionError(f"the gateway neither closed the connection nor answered within {TIMEOUT}s "
                             f"after {sent!r}; it sent {len(data)} bytes: {bytes(data)!r}") from None
    frames, view = [], memoryview(bytes(data))
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9:9 + length])
        frames.append(frame)
        view = view[9 + length:]
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert len(goaways) == 1, f"expected one GOAWAY before the close, got frames {frames}"
    return goaways[0]


@pytest.mark.parametrize("garbage, error", [
    # A well-formed frame header, but a SETTINGS frame may not be on a stream.
    (b"\x00\x00\x00\x04\x00\x00\x00\x00\x01", h2.errors.ErrorCodes.PROTOCOL_ERROR),
    # HEADERS without the mandatory pseudo-headers.
    (b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\x82", h2.errors.ErrorCodes.PROTOCOL_ERROR),
    # Text: read as a frame header it announces a 4.6 MB frame, far over SETTINGS_MAX_FRAME_SIZE.
    (b"GARBAGE! " * 8, h2.errors.ErrorCodes.FRAME_SIZE_ERROR),
], ids=["settings-on-stream", "headers-without-pseudo-headers", "text"])
def test_garbage_after_preface_gets_goaway_and_close(mtls_port, pki, garbage, error):
    with H2Client(mtls_port, pki, preface=False) as c:
        goaway = goaway_then_close(c, PREFACE + garbage)
    assert goaway.error_code == error, goaway


def test_goaway_after_a_served_stream(mtls_port, pki):
    """A protocol error on a connection that already served a stream: GOAWAY names that stream as the last."""
    with H2Client(mtls_port, pki) as c:
        sid = c.start("GET", "/", "example.com")
        assert c.wait(sid)[0].status == 200
        goaway = goaway_then_close(c, b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0
    assert (goaway.error_code, goaway.last_stream_id) == (h2.errors.ErrorCodes.PROTOCOL_ERROR, sid)


@pytest.mark.xfail(raises=ConnectionError, reason=(
    "python-hyper/h2 #1181: h2's connection state machine goes CLOSED when it receives GOAWAY, so "
    "refgateway cannot answer streams the client opened before it; RFC 9113 6.8 lets them complete"))
def test_client_goaway_lets_open_streams_finish(mtls_port, pki):
    """A client's GOAWAY(NO_ERROR, last_stream_id=0) refuses server pushes, not answers to its own requests."""
    with H2Client(mtls_port, pki) as c:
        sid = c.start("GET", "/", "example.com", then=GoAwayFrame(0, last_stream_id=0).serialize())
        [a] = c.wait(sid)
    assert a.status == 200


@pytest.mark.parametrize("size", [11, 300_000], ids=["small", "over-initial-window"])
def test_request_body_is_forwarded(post_echo_port, pki, size):
    """POST DATA reaches the backend byte for byte; 300 kB needs the gateway's WINDOW_UPDATEs
    for the request and the client's for the answer (which echoes the body back)."""
    body = bytes(i % 251 for i in range(size))
    with H2Client(post_echo_port, pki) as c:
        sid = c.start("POST", "/upload", "example.com", end=False, headers=[("content-type", "application/octet-stream")])
        c.send_body(sid, body)
        [a] = c.wait(sid)
    assert a.status == 200, bytes(a.body)[:300]
    echo = a.json()
    assert echo["method"] == "POST" and echo["path"] == "/upload"
    assert echo["headers"]["content-length"] == str(size)
    assert echo["headers"]["content-type"] == "application/octet-stream"
    assert (echo["body_length"], echo["body_sha256"]) == (size, hashlib.sha256(body).hexdigest())
    assert echo["body"].encode("latin-1") == body
