"""refgateway's connection core (refgateway/_core.py) without sockets.

A real TLS client (pyOpenSSL over memory BIOs) and real h11/h2 clients talk to a real
EdgeCore; bytes go in with receive_data() and come out of data_to_send(). The backend
is the test itself: each ProxyRequest event is answered with the request as JSON.
"""

from __future__ import annotations

import json

import h11
import h2.config
import h2.connection
import h2.events
import pytest
from OpenSSL import SSL

from refgateway._core import Close, EdgeCore, Linger
from refgateway._tls import ALERT_HANDSHAKE_FAILURE
from refgateway.translator import ALLOW_INSECURE_FALLBACK

from .sansio import Pair, Pki, client_context, make_site

VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}


@pytest.fixture(scope="module")
def pki():
    return Pki()


def get(host: str, path: str = "/", extra: tuple = ()) -> bytes:
    c = h11.Connection(h11.CLIENT)
    return c.send(h11.Request(method="GET", target=path, headers=[("host", host), *extra])) + \
        c.send(h11.EndOfMessage())


def parse(raw: bytes) -> list[tuple[int, dict, bytes]]:
    """Every HTTP/1.1 response in ``raw``: (status, headers, body)."""
    c = h11.Connection(h11.CLIENT)
    c.receive_data(raw)
    out = []
    while True:
        c.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        c.send(h11.EndOfMessage())
        resp = c.next_event()
        if resp is h11.NEED_DATA:
            return out
        body = b""
        while isinstance(ev := c.next_event(), h11.Data):
            body += ev.data
        out.append((resp.status_code, {k.decode(): v.decode() for k, v in resp.headers}, body))
        if c.our_state is not h11.DONE or c.their_state is not h11.DONE:
            return out
        c.start_next_cycle()


def backend_headers(ev) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in ev.headers}


@pytest.mark.parametrize("version", VERSIONS)
def test_verified_client_reaches_the_backend_with_its_identity(pki, version):
    p = Pair(make_site(pki), client_context(pki, version=VERSIONS[version]))
    p.pump(get("strict.example.com", "/hello"))
    assert p.alert is None and p.handshaken
    assert p.client.get_protocol_version_name() == version
    [ev] = p.proxied
    h = backend_headers(ev)
    assert h["x-refgateway-client-verify"] == "SUCCESS"
    assert len(h["x-refgateway-client-cert-sha256"]) == 64
    assert "O=trustme" in h["x-refgateway-client-cert-subject"]
    [(status, headers, body)] = parse(bytes(p.plain))
    assert status == 200 and json.loads(body)["path"] == "/hello"


@pytest.mark.parametrize("version,alert", [("TLSv1.2", "handshake failure"), ("TLSv1.3", "certificate required")])
def test_missing_client_certificate_is_refused_with_an_alert(pki, version, alert):
    p = Pair(make_site(pki), client_context(pki, version=VERSIONS[version], cert=None))
    p.pump(get("strict.example.com"))
    assert p.alert and alert in p.alert, p.alert
    assert p.lingering and not p.proxied and not p.plain
    # The core drains the client and closes when the client ends its side.
    assert p.feed(b"more bytes from the client") == b""
    p.core.receive_data(b"")
    p._drain()
    assert p.closed


@pytest.mark.parametrize("version", VERSIONS)
def test_untrusted_client_certificate_is_refused(pki, version):
    p = Pair(make_site(pki), client_context(pki, version=VERSIONS[version], cert="stranger"))
    p.pump(get("strict.example.com"))
    assert p.alert and "unknown ca" in p.alert, p.alert
    assert not p.proxied


@pytest.mark.parametrize("cert,verdict", [("client", "SUCCESS"), ("stranger", "FAILED:unknown-ca"), (None, "NONE")])
def test_insecure_fallback_requests_verifies_and_reports(pki, cert, verdict):
    """A certificate is requested (the client only sends one when asked), verified, and the result told."""
    p = Pair(make_site(pki, mode=ALLOW_INSECURE_FALLBACK), client_context(pki, cert=cert))
    p.pump(get("strict.example.com"))
    assert p.alert is None
    [ev] = p.proxied
    assert backend_headers(ev)["x-refgateway-client-verify"] == verdict
    assert ("x-refgateway-client-cert-sha256" in backend_headers(ev)) == (cert is not None)


def test_listener_without_validation_asks_for_no_certificate(pki):
    p = Pair(make_site(pki), client_context(pki), sni="open.example.com")
    p.pump(get("open.example.com"))
    [ev] = p.proxied
    assert backend_headers(ev)["x-refgateway-client-verify"] == "NONE"
    assert "x-refgateway-client-cert-sha256" not in backend_headers(ev)  # none was asked for, none sent


def test_client_sent_identity_headers_are_replaced(pki):
    p = Pair(make_site(pki), client_context(pki, cert=None), sni="open.example.com")
    p.pump(get("open.example.com", extra=(("x-refgateway-client-verify", "SUCCESS"),
                                          ("X-Refgateway-Client-Cert-Sha256", "00" * 32))))
    [ev] = p.proxied
    names = [k for k, _ in ev.headers]
    assert names.count(b"x-refgateway-client-verify") == 1
    assert backend_headers(ev)["x-refgateway-client-verify"] == "NONE"
    assert b"x-refgateway-client-cert-sha256" not in names


def test_keep_client_identity_headers_fault(pki):
    site = make_site(pki, faults=frozenset({"keep-client-identity-headers"}))
    p = Pair(site, client_context(pki, cert=None), sni="open.example.com")
    p.pump(get("open.example.com", extra=(("x-refgateway-client-verify", "SUCCESS"),)))
    assert [v for k, v in p.proxied[0].headers if k == b"x-refgateway-client-verify"] == [b"SUCCESS", b"NONE"]


def test_host_of_another_listener_gets_421(pki):
    """The open listener's handshake cannot be used to reach the strict listener."""
    p = Pair(make_site(pki), client_context(pki, cert=None), sni="open.example.com")
    p.pump(get("strict.example.com") + get("open.example.com"))
    [(s1, _, b1), (s2, _, _)] = parse(bytes(p.plain))
    assert s1 == 421 and b"misdirected" in b1
    assert s2 == 200 and len(p.proxied) == 1  # the connection stays usable


def test_ignore_misdirected_requests_fault(pki):
    site = make_site(pki, faults=frozenset({"ignore-misdirected-requests"}))
    p = Pair(site, client_context(pki, cert=None), sni="open.example.com")
    p.pump(get("strict.example.com"))
    assert [s for s, _, _ in parse(bytes(p.plain))] == [200]


def test_pipelined_requests_wait_for_the_backend_in_order(pki):
    p = Pair(make_site(pki), client_context(pki), answer=None)
    p.pump(get("strict.example.com", "/1") + get("strict.example.com", "/2"))
    assert [e.request.target for e in p.proxied] == [b"/1"]  # one at a time
    assert p.core.busy
    p.respond(0, 200, [], b"one")
    assert [e.request.target for e in p.proxied] == [b"/1", b"/2"]
    p.respond(0, 201, [], b"two")
    assert [(s, b) for s, _, b in parse(bytes(p.plain))] == [(200, b"one"), (201, b"two")]
    assert not p.core.busy


def test_response_still_sent_after_the_client_half_closed(pki):
    p = Pair(make_site(pki), client_context(pki), answer=None)
    p.pump(get("strict.example.com"))
    p.client.shutdown()  # close_notify: the client is done sending
    p.pump()
    assert not p.closed and p.core.busy
    p.respond(0, 200, [], b"late")
    assert [(s, b) for s, _, b in parse(bytes(p.plain))] == [(200, b"late")]
    assert p.closed


def test_malformed_request_gets_400_and_close(pki):
    p = Pair(make_site(pki), client_context(pki))
    p.pump(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
    assert [s for s, _, _ in parse(bytes(p.plain))] == [400]
    assert p.closed and not p.proxied


def test_unservable_port_fails_closed_before_any_server_hello(pki):
    site = make_site(pki)
    site.base_context, site.contexts = None, {}
    p = Pair(site, client_context(pki))
    p.pump()
    assert p.core.tls is None
    assert p.closed
    assert "handshake failure" in (p.alert or "")


def test_unservable_listener_gets_the_handshake_failure_alert_only(pki):
    site = make_site(pki, servable=False)
    core = EdgeCore(site)
    c = SSL.Connection(client_context(pki), None)
    c.set_connect_state()
    c.set_tlsext_host_name(b"strict.example.com")
    with pytest.raises(SSL.WantReadError):
        c.do_handshake()
    core.receive_data(c.bio_read(65536))
    assert core.data_to_send() == ALERT_HANDSHAKE_FAILURE  # no ServerHello before it
    assert isinstance(core.next_event(), Close)


def test_plain_http_port(pki):
    p = Pair(make_site(pki, protocol="HTTP"), None)
    raw = p.feed(get("open.example.com", "/x"))
    [(status, _, body)] = parse(raw)
    assert status == 200 and json.loads(body)["path"] == "/x"
    assert dict((k.decode(), v.decode()) for k, v in p.proxied[0].headers)["x-refgateway-client-verify"] == "NONE"


def test_garbage_instead_of_a_client_hello_gets_an_alert_and_lingers(pki):
    p = Pair(make_site(pki), None)
    out = p.feed(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")  # a ClientHello too short to parse
    assert out[:1] == b"\x15"  # an alert record
    assert isinstance(p.events[-1], Linger)
    p = Pair(make_site(pki), None)
    assert p.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""  # OpenSSL sends no alert to plaintext
    assert isinstance(p.events[-1], Linger)


# --------------------------------------------------------------------------- HTTP/2


class H2:
    def __init__(self, pki, site, sni: str, cert: str | None = "client"):
        self.p = Pair(site, client_context(pki, cert=cert, alpn=(b"h2",)), sni=sni)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.p.pump(self.conn.data_to_send())
        assert self.p.client.get_alpn_proto_negotiated() == b"h2"
        self.read = 0

    def request(self, authority: str, path: str = "/") -> dict:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                     (":authority", authority)], end_stream=True)
        self.p.pump(self.conn.data_to_send())
        events = self.conn.receive_data(bytes(self.p.plain[self.read:]))
        self.read = len(self.p.plain)
        answer = {"body": b""}
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                answer.update({k.decode(): v.decode() for k, v in ev.headers})
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                answer["body"] += ev.data
        return answer


def test_h2_request_is_proxied_with_identity(pki):
    c = H2(pki, make_site(pki), "strict.example.com")
    answer = c.request("strict.example.com", "/h2")
    assert answer[":status"] == "200"
    [ev] = c.p.proxied
    assert ev.ref == 1 and backend_headers(ev)["host"] == "strict.example.com"
    assert backend_headers(ev)["x-refgateway-client-verify"] == "SUCCESS"


def test_h2_coalesced_stream_for_another_listener_gets_421(pki):
    c = H2(pki, make_site(pki), "open.example.com", cert=None)
    assert c.request("strict.example.com")[":status"] == "421"
    assert c.request("open.example.com")[":status"] == "200"
    assert len(c.p.proxied) == 1


def test_h2_garbage_frame_header_closes_with_goaway(pki):
    c = H2(pki, make_site(pki), "strict.example.com")
    c.p.pump(b"GET / HTTP/1.1\r\nHost: strict.example.com\r\n\r\n")
    assert c.p.closed
    events = c.conn.receive_data(bytes(c.p.plain[c.read:]))
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)



def test_h2_frames_after_the_clients_goaway_are_ignored(pki):
    """Not answered with GOAWAY(PROTOCOL_ERROR): the client ended the connection, the gateway closes it."""
    from hyperframe.frame import GoAwayFrame, SettingsFrame

    c = H2(pki, make_site(pki), "strict.example.com")
    # Two TLS records (two writes of the client) that arrive in one read of the gateway.
    c.p.client.sendall(GoAwayFrame(0, last_stream_id=0).serialize())
    c.p.client.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
    c.p.client.bio_write(c.p.feed(c.p.client.bio_read(1 << 16)))
    c.p.pump()
    assert c.p.closed and c.p.client_closed  # closed with close_notify
    events = c.conn.receive_data(bytes(c.p.plain[c.read:]))
    assert not [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]


@pytest.mark.parametrize("status,headers,payload", [
    (200, [], b""),
    (200, [(b"content-type", b"application/json"), (b"x-a", b"b c")], b'{"x": 1}'),
    (404, [], b"no route\n"),
    (421, [], b"misdirected request\n"),
    (502, [(b"Host", b"backend.example"), (b"x-b", b"")], b"backend unavailable\n"),
    (201, [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")], b"x" * 70000),
])
@pytest.mark.parametrize("connection", [b"", b"Connection: close\r\n", b"Connection: keep-alive, Close\r\n"])
def test_fast_response_is_what_h11_writes(status, headers, payload, connection):
    from refgateway._core import _fast_path, response_bytes

    h = h11.Connection(h11.SERVER)
    h.receive_data(b"GET / HTTP/1.1\r\nHost: example.com\r\n" + connection + b"\r\n")
    request, _ = h.next_event(), h.next_event()
    expected = h.send(h11.Response(status_code=status, headers=headers + [(b"content-length", b"%d" % len(payload))]))
    expected += h.send(h11.Data(data=payload)) if payload else b""
    expected += h.send(h11.EndOfMessage())
    close = _fast_path(request) == "close"
    assert close == bool(connection) and (h.our_state is h11.MUST_CLOSE) == close
    assert response_bytes(status, headers, payload, close=close) == expected


@pytest.mark.parametrize("request_head", [
    b"GET / HTTP/1.0\r\nHost: strict.example.com\r\n\r\n",
    # On the fast path since it writes Connection: close itself; the connection must end.
    b"GET / HTTP/1.1\r\nHost: strict.example.com\r\nConnection: keep-alive, Close\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: strict.example.com\r\n\r\n",
])
def test_requests_that_end_or_skip_the_fast_path(pki, request_head):
    p = Pair(make_site(pki), client_context(pki))
    p.pump(request_head + b"GET / HTTP/1.1\r\nHost: strict.example.com\r\n\r\n")
    out = bytes(p.plain)
    assert out.startswith(b"HTTP/1.1 200 \r\n")
    if request_head.startswith(b"HEAD"):  # no body, kept alive: the next request is answered too
        assert len(p.proxied) == 2 and not p.closed and out.count(b"HTTP/1.1 200 ") == 2
        assert out.split(b"\r\n\r\n")[1].startswith(b"HTTP/1.1 200 ")
    else:  # answered with Connection: close, and the connection ends
        assert b"\r\nconnection: close\r\n" in out.lower() and p.closed and len(p.proxied) == 1
