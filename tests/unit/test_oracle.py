"""The typed oracle: only what the gateway did can be a rejection, and pairs differ only in the client.

Real TLS servers on loopback, one behaviour each, seen through the same probe, judges and
GatewayClient the scenarios use. The two reproductions of issue 11 are here: a server that
lets everyone in behind a certificate from another CA, and a TLS-1.3-only server that lets
everyone in, probed by the TLS 1.2 rejection case. Both used to pass as "rejected".
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import types
from collections.abc import Callable, Iterator

import pytest

from mtls_conformance.client import GatewayClient, Settings, Sibling
from mtls_conformance.expect import ExpectationFailed, Timing, judge_backend_refused, judge_ok, judge_rejected
from mtls_conformance.probe import (CERTIFICATE_ALERTS, ProbeFailure, Rejection, Response, TLSInfo, _Failure,
                               _Observer, _outcome_of, probe)
from mtls_conformance.fixtures.pki import PKI, Authority, Credential

HOST = "gw.example.org"
ECHO = {"namespace": "ns", "service": "svc"}


# -- servers -------------------------------------------------------------------------------


class Server:
    """Serves every connection until stopped: TLS with ``context`` (None: plain TCP), then
    ``answer(sock)`` on the TLS socket."""

    def __init__(self, context: ssl.SSLContext | None, answer: Callable[[socket.socket], None]) -> None:
        self.context, self.answer = context, answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            sock = self.context.wrap_socket(conn, server_side=True) if self.context else conn
            self.answer(sock)
        except Exception:  # the probe went away, or refused us: the test judges the probe's side
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        except OSError:
            pass
        self.listener.close()
        self.thread.join(timeout=5)


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def answer_json(status: int = 200, body: dict | None = None) -> Callable[[socket.socket], None]:
    payload = json.dumps(ECHO if body is None else body).encode()

    def answer(sock: socket.socket) -> None:
        read_head(sock)
        sock.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + payload)

    return answer


def tls_context(credential: Credential, *, client_ca: Authority | None = None, version: str | None = None,
                alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(credential.chain_file, credential.key_file)
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca.cert_pem.decode())
        context.verify_mode = ssl.CERT_REQUIRED
    if version is not None:
        tls = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}[version]
        context.minimum_version = context.maximum_version = tls
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("oracle-pki"))


@pytest.fixture(scope="module")
def server_ca(pki):
    return pki.authority("server-ca")


@pytest.fixture(scope="module")
def client_ca(pki):
    return pki.authority("client-ca")


@pytest.fixture(scope="module")
def server_cred(server_ca):
    return server_ca.issue_server(HOST)


@pytest.fixture(scope="module")
def valid_client(client_ca):
    return client_ca.issue_client("valid", common_name="valid")


@pytest.fixture(scope="module")
def untrusted_client(pki):
    return pki.authority("untrusted-ca").issue_client("untrusted", common_name="untrusted")


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(context, answer=None) -> Server:
        server = Server(context, answer or answer_json())
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class StubTarget:
    """Just enough of a Target for GatewayClient: every listener port maps to one address;
    ``gateway``, the Gateway object (spec and status) ``get`` returns."""

    _progress = None

    def __init__(self, ports: dict[int, tuple[str, int]], gateway: dict | None = None) -> None:
        self.ports = ports
        self.gateway = gateway

    def listener_address(self, gateway, port: int) -> tuple[str, int]:
        return self.ports[port]

    def get(self, ref) -> dict | None:
        return self.gateway


def client_for(ports: dict[int, tuple[str, int]], server_ca, *, strict: bool = False,
               rejection_statuses: frozenset[int] = frozenset(), gateway: dict | None = None) -> GatewayClient:
    settings = Settings(timing=Timing(max_time_to_consistency=0.3, required_consecutive=1, request_timeout=2),
                        strict_rejection=strict)
    profile = types.SimpleNamespace(rejection_statuses=rejection_statuses, identity=None)
    return GatewayClient(StubTarget(ports, gateway), types.SimpleNamespace(namespace="ns"), trust=server_ca,
                         profile=profile, settings=settings)


# -- the two reproductions -----------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True], ids=["default-rule", "strict-rejection"])
def test_fail_open_server_with_a_foreign_certificate_is_not_a_rejection(serve, pki, server_ca, untrusted_client,
                                                                        strict):
    """Requests no client certificate, lets everyone in, serves a certificate of another CA."""
    foreign = pki.authority("foreign-ca").issue_server(HOST)
    server = serve(tls_context(foreign))
    outcome = probe(server.address, sni=HOST, client_cert=untrusted_client, trust_pem=server_ca.cert_pem)
    why = judge_rejected(outcome, strict=strict)
    assert why is not None, f"judged a rejection: {outcome.describe()}"
    assert "the probe could not verify the listener's certificate" in why
    gw = client_for({443: server.address}, server_ca, strict=strict)
    with pytest.raises(ExpectationFailed, match="the probe could not verify the listener's certificate"):
        gw.expect_rejected(443, sni=HOST, cert=untrusted_client, what="a certificate from an untrusted CA")


@pytest.mark.parametrize("strict", [False, True], ids=["default-rule", "strict-rejection"])
def test_tls13_only_server_that_accepts_everyone_fails_the_tls12_rejection_case(
        serve, server_ca, server_cred, valid_client, untrusted_client, strict):
    server = serve(tls_context(server_cred, version="TLSv1.3"))
    outcome = probe(server.address, sni=HOST, client_cert=untrusted_client, trust_pem=server_ca.cert_pem,
                    tls_version="TLSv1.2")
    assert isinstance(outcome, Rejection) and outcome.alert == "protocol version", outcome.describe()
    why = judge_rejected(outcome, strict=strict)
    assert why is not None, f"judged a rejection: {outcome.describe()}"
    assert "refused something other than the client certificate (protocol version)" in why
    # As scenarios/test_frontend_default.py now asks: the pair shares the TLS version, so
    # the accepted half already fails, and says which check it was setting up.
    gw = client_for({443: server.address}, server_ca, strict=strict)
    with pytest.raises(ExpectationFailed,
                       match=r"setup for the check 'untrusted CA \(TLSv1.2\)' \(not reached\)") as failed:
        gw.expect_pair(443, sni=HOST, accepted=valid_client, refused=untrusted_client, tls_version="TLSv1.2",
                       what="untrusted CA (TLSv1.2)")
    assert "protocol version" in str(failed.value)


# -- every outcome kind --------------------------------------------------------------------


def test_certificate_alert_from_the_server_is_a_rejection(serve, server_ca, server_cred, client_ca,
                                                          untrusted_client):
    server = serve(tls_context(server_cred, client_ca=client_ca, version="TLSv1.2"))
    outcome = probe(server.address, sni=HOST, client_cert=untrusted_client, trust_pem=server_ca.cert_pem)
    assert isinstance(outcome, Rejection), outcome.describe()
    assert (outcome.phase, outcome.kind, outcome.alert) == ("handshake", "alert", "unknown ca")
    assert outcome.certificate_alert
    assert judge_rejected(outcome) is None and judge_rejected(outcome, strict=True) is None


def test_unrecognized_name_alert_is_not_a_certificate_rejection(serve, server_ca, server_cred, untrusted_client):
    context = tls_context(server_cred)
    context.sni_callback = lambda sock, name, ctx: ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
    server = serve(context)
    outcome = probe(server.address, sni=HOST, client_cert=untrusted_client, trust_pem=server_ca.cert_pem)
    assert isinstance(outcome, Rejection) and outcome.alert == "unrecognized name", outcome.describe()
    assert not outcome.certificate_alert
    assert "(unrecognized name)" in judge_rejected(outcome)


def test_no_application_protocol_alert_is_not_a_certificate_rejection(serve, server_ca, server_cred):
    from OpenSSL import SSL  # Python's ssl server ignores an ALPN mismatch; pyOpenSSL can refuse it

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate_chain_file(str(server_cred.chain_file))
    context.use_privatekey_file(str(server_cred.key_file))

    def select(conn, offered):
        raise LookupError("only h2")  # pyOpenSSL answers an exception with SSL_TLSEXT_ERR_ALERT_FATAL

    context.set_alpn_select_callback(select)

    def refuse_alpn(sock):
        sock.setblocking(True)  # pyOpenSSL on a socket with a timeout would see WantReadError
        conn = SSL.Connection(context, sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
        except SSL.Error:
            pass

    server = serve(None, refuse_alpn)
    outcome = probe(server.address, sni=HOST, trust_pem=server_ca.cert_pem)  # offers only http/1.1
    assert isinstance(outcome, Rejection) and outcome.alert == "no application protocol", outcome.describe()
    assert "(no application protocol)" in judge_rejected(outcome, strict=True)


def test_no_h2_via_alpn_is_a_probe_failure(serve, server_ca, server_cred):
    server = serve(tls_context(server_cred, alpn=["http/1.1"]))
    outcome = probe(server.address, sni=HOST, trust_pem=server_ca.cert_pem, http2=True)
    assert isinstance(outcome, ProbeFailure), outcome.describe()
    assert outcome.cause == "alpn"
    assert "did not select h2 via ALPN" in judge_rejected(outcome)


def overlapping_gateway(overlapping: str | None) -> dict:
    """A Gateway with two HTTPS listeners on 443, ``exact`` (HOST) and ``wildcard``
    (*.example.org), and listener ``overlapping``'s status OverlappingTLSConfig=True (as
    Envoy Gateway v1.9.1 reports it where certificates overlap)."""
    condition = {"type": "OverlappingTLSConfig", "status": "True", "reason": "OverlappingCertificates",
                 "message": "The certificate SANs in the listener overlap with the certificate SANs in "
                            "the listener wildcard. ALPN will default to HTTP/1.1."}
    listeners = [{"name": "exact", "port": 443, "protocol": "HTTPS", "hostname": HOST},
                 {"name": "wildcard", "port": 443, "protocol": "HTTPS", "hostname": "*.example.org"}]
    return {"spec": {"listeners": listeners},
            "status": {"listeners": [{"name": entry["name"], "conditions": [
                {"type": "Accepted", "status": "True"},
                *([condition] if entry["name"] == overlapping else [])]} for entry in listeners]}}


def test_h2_withheld_by_a_listener_that_reports_overlapping_tls_skips(serve, server_ca, server_cred):
    """GEP-3567 lets an implementation keep HTTP/2 off a listener whose TLS overlaps another's:
    an h2 check there cannot be made, and says why (Envoy Gateway, guide steps [h2])."""
    server = serve(tls_context(server_cred, alpn=["http/1.1"]))
    gw = client_for({443: server.address}, server_ca, gateway=overlapping_gateway("exact"))
    with pytest.raises(pytest.skip.Exception) as info:
        gw.expect_ok(443, sni=HOST, http2=True, what="h2 on the exact listener")
    assert str(info.value).startswith(
        f"h2 on the exact listener: listener port 443 (SNI {HOST}, HTTP/2) with no client certificate: listener "
        f"'exact' reports OverlappingTLSConfig=True (OverlappingCertificates: The certificate SANs")
    assert "did not select h2 via ALPN (selected None)" in str(info.value)
    assert "GEP-3567" in str(info.value)


@pytest.mark.parametrize("overlapping", [None, "wildcard"], ids=["no-condition", "another-listener"])
def test_h2_withheld_without_the_overlapping_condition_still_fails(serve, server_ca, server_cred, overlapping):
    """Without OverlappingTLSConfig on the listener the SNI selects (the exact one beats the
    wildcard), no h2 is a failed check as before: nothing in the status says why."""
    server = serve(tls_context(server_cred, alpn=["http/1.1"]))
    gw = client_for({443: server.address}, server_ca, gateway=overlapping_gateway(overlapping))
    with pytest.raises(ExpectationFailed, match="did not select h2 via ALPN"):
        gw.expect_ok(443, sni=HOST, http2=True, what="h2 on the exact listener")


def test_malformed_http_is_a_probe_failure(serve, server_ca, server_cred):
    def garbage(sock):
        read_head(sock)
        sock.sendall(b"this is not HTTP\r\n\r\n")

    server = serve(tls_context(server_cred), garbage)
    outcome = probe(server.address, sni=HOST, trust_pem=server_ca.cert_pem)
    assert isinstance(outcome, ProbeFailure), outcome.describe()
    assert outcome.cause == "http"
    assert "the probe could not parse the HTTP response" in judge_rejected(outcome)


def test_plaintext_answer_to_tls_is_a_probe_failure(serve, server_ca):
    """The probe gives up on bytes that are not TLS: its doing, not a refusal."""
    def plain(sock):
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")

    server = serve(None, plain)
    outcome = probe(server.address, sni=HOST, trust_pem=server_ca.cert_pem)
    assert isinstance(outcome, ProbeFailure), outcome.describe()
    assert outcome.cause == "tls"
    assert judge_rejected(outcome) is not None


def test_local_error_is_a_probe_failure(monkeypatch):
    def fail(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(socket, "create_connection", fail)
    outcome = probe(("127.0.0.1", 9), sni=HOST)
    assert isinstance(outcome, ProbeFailure), outcome.describe()
    assert outcome.cause == "local"
    assert "the probe failed locally" in judge_rejected(outcome, listener_may_be_down=True)


def test_an_alert_the_probe_sent_first_is_never_the_gateways():
    """Whatever arrives after the probe's own alert is an answer to it."""
    observer = _Observer()
    observer.available = True
    observer.first_alert, observer.sent_alert, observer.received_alert = "write", "protocol version", "bad certificate"
    for failure in (_Failure("handshake", "alert", "x", alert="bad certificate"),
                    _Failure("handshake", "probe", "the probe ended the TLS connection itself: x", cause="tls")):
        outcome = _outcome_of(failure, observer, None)
        assert isinstance(outcome, ProbeFailure), outcome
        assert outcome.sent_alert == "protocol version"
        assert judge_rejected(outcome) is not None
    # The same alert received first is the gateway's.
    observer.first_alert = "read"
    outcome = _outcome_of(_Failure("handshake", "closed", "x"), observer, None)
    assert isinstance(outcome, Rejection) and outcome.alert == "bad certificate"


TLS = TLSInfo("TLSv1.3", None, None, True, None)
JUDGED = {
    # outcome -> (default rule, strict rule, listener may be down): None = counts as a rejection
    "certificate alert on first read": (Rejection("first-read", "alert", "certificate required", "", TLS),
                                        None, None, None),
    "certificate alert in handshake": (Rejection("handshake", "alert", "unknown ca", "", TLS), None, None, None),
    "protocol version alert": (Rejection("handshake", "alert", "protocol version", "", TLS),
                               "protocol version", "protocol version", "protocol version"),
    "reset": (Rejection("handshake", "reset", None, "", TLS), None, None, None),
    "closed": (Rejection("first-read", "closed", None, "", TLS), None, None, None),
    "refused": (Rejection("connect", "refused", None, "", None), "not serving at all", "not serving at all", None),
    "timeout": (Rejection("handshake", "timeout", None, "", TLS), "no answer", "no answer", "no answer"),
    "HTTP 400": (Response(400, "Bad Request", (), b"", TLS), None, "--strict-rejection", None),
    "HTTP 200 from a backend": (Response(200, "OK", (("content-type", "application/json"),),
                                         json.dumps(ECHO).encode(), TLS), "let through", "let through", "let through"),
    **{f"probe failure ({cause})": (ProbeFailure("handshake", cause, f"the probe {cause}", TLS),
                                    f"the probe {cause}", f"the probe {cause}", f"the probe {cause}")
       for cause in ("server-certificate", "alpn", "http", "tls", "local")},
}


@pytest.mark.parametrize("case", list(JUDGED))
def test_only_what_the_gateway_did_counts(case):
    outcome, default, strict, may_be_down = JUDGED[case]
    for why, expected in ((judge_rejected(outcome, rejection_statuses=frozenset({400})), default),
                          (judge_rejected(outcome, rejection_statuses=frozenset({400}), strict=True), strict),
                          (judge_rejected(outcome, rejection_statuses=frozenset({400}), listener_may_be_down=True),
                           may_be_down)):
        if expected is None:
            assert why is None, why
        else:
            assert why is not None and expected in why, why


def test_kinds_are_a_closed_set():
    with pytest.raises(ValueError, match="Rejection kind"):
        Rejection("handshake", "error", None, "", None)
    with pytest.raises(ValueError, match="ProbeFailure cause"):
        ProbeFailure("handshake", "gateway", "", None)
    with pytest.raises(ValueError, match="names an alert"):
        Rejection("handshake", "alert", None, "", None)
    assert {"protocol version", "unrecognized name", "no application protocol"}.isdisjoint(CERTIFICATE_ALERTS)


# -- the other judges ----------------------------------------------------------------------


def test_service_check_is_strict():
    nameless = Response(200, "OK", (("content-type", "application/json"),),
                        json.dumps({"namespace": "ns"}).encode(), None)
    assert judge_ok(nameless, namespace="ns") is None
    assert "does not say which service" in judge_ok(nameless, namespace="ns", service="svc")
    other = Response(200, "OK", (("content-type", "application/json"),),
                     json.dumps({"namespace": "ns", "service": "other"}).encode(), None)
    assert "from service 'other', expected 'svc'" in judge_ok(other, namespace="ns", service="svc")


def test_backend_reached_in_plaintext_says_so():
    plain = Response(200, "OK", (("content-type", "application/json"),), json.dumps(ECHO).encode(), None)
    assert judge_backend_refused(plain).endswith("the request was let through in plaintext")
    over_tls = Response(200, "OK", (("content-type", "application/json"),),
                        json.dumps({**ECHO, "tls": {"serverName": "abc"}}).encode(), None)
    assert "plaintext" not in judge_backend_refused(over_tls)


def test_certificate_requested_unknown_never_passes(server_ca):
    gw = client_for({}, server_ca)
    unknown = Response(200, "OK", (), b"", TLSInfo("TLSv1.3", None, None, None, None))
    with pytest.raises(pytest.skip.Exception, match="cannot check whether listener port 443 requested"):
        gw.require_certificate_requested(unknown, True, port=443, what="AllowValidOnly")
    not_requested = Response(200, "OK", (), b"", TLSInfo("TLSv1.3", None, None, False, None))
    with pytest.raises(ExpectationFailed, match="expected the listener to request a client certificate"):
        gw.require_certificate_requested(not_requested, True, port=443, what="AllowValidOnly")
    gw.require_certificate_requested(not_requested, False, port=443, what="fallback")


# -- pairs, fail-closed listeners, backend siblings ----------------------------------------


def test_pair_uses_the_same_request_for_both_clients(serve, server_ca, server_cred, client_ca, valid_client,
                                                     untrusted_client):
    server = serve(tls_context(server_cred, client_ca=client_ca))
    gw = client_for({443: server.address}, server_ca)
    for version in ("TLSv1.2", "TLSv1.3"):
        pair = gw.expect_pair(443, sni=HOST, accepted=valid_client, refused=(untrusted_client, None),
                              tls_version=version, what=f"untrusted or no certificate ({version})")
        assert pair.accepted.tls.version == version
        assert [o.tls.version for o in pair.refused] == [version, version]


def test_fail_open_listener_with_a_throwaway_certificate_fails_the_fail_closed_check(
        serve, pki, server_ca, server_cred, client_ca, valid_client):
    """As the nginx-based gateway of issue 11 did when every CA ref of a listener was invalid."""
    serving = serve(tls_context(server_cred, client_ca=client_ca))
    throwaway = serve(tls_context(pki.self_signed("throwaway", "localhost")))
    gw = client_for({443: serving.address, 7443: throwaway.address}, server_ca)
    with pytest.raises(ExpectationFailed, match="the backend answered HTTP 200 X over TLSv1.3, the listener requested no client certificate: the request was let through"):
        gw.expect_fail_closed(7443, sni=HOST, clients=[None, valid_client], what="every CA ref invalid",
                              serving_port=443, serving_client=valid_client)
    # Closed (nothing listens) passes; so does a listener that refuses every certificate.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        gw = client_for({443: serving.address, 7443: placeholder.getsockname()}, server_ca)
        gw.expect_fail_closed(7443, sni=HOST, clients=[None, valid_client], what="every CA ref invalid",
                              serving_port=443, serving_client=valid_client)
    nobody = serve(tls_context(server_cred, client_ca=pki.authority("nobody-ca")))
    gw = client_for({443: serving.address, 7443: nobody.address}, server_ca)
    gw.expect_fail_closed(7443, sni=HOST, clients=[None, valid_client], what="every CA ref invalid",
                          serving_port=443, serving_client=valid_client)


def test_backend_negative_needs_a_sibling_that_answers_over_tls(serve, server_ca):
    """A gateway that answers 5xx to every TLS backend does not pass a backend negative."""
    def route(sock):
        head = read_head(sock).decode()
        if "/good" in head.split("\r\n")[0]:
            body = json.dumps({**ECHO, "service": "good", "tls": {"serverName": "abc.example.com"}}).encode()
            status = 200
        else:
            body, status = b"bad gateway", 502
        sock.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)

    working = serve(None, route)
    refuses_all = serve(None, answer_json(502, {}))
    sibling = Sibling(service="good", backend_sni="abc.example.com", path="/good")
    gw = client_for({80: working.address}, server_ca)
    gw.expect_backend_refused(80, sni=None, host="h", plaintext=True, path="/bad", sibling=sibling, what="bad CA")
    gw = client_for({80: refuses_all.address}, server_ca)
    with pytest.raises(ExpectationFailed,
                       match=r"setup for the check 'bad CA' \(not reached\): the correctly configured sibling"):
        gw.expect_backend_refused(80, sni=None, host="h", plaintext=True, path="/bad", sibling=sibling,
                                  what="bad CA")


# -- messages ------------------------------------------------------------------------------


def test_a_failure_without_its_own_what_names_the_test_property(serve, server_ca, server_cred, client_ca):
    from mtls_conformance import client as client_module

    server = serve(tls_context(server_cred, client_ca=client_ca))
    gw = client_for({443: server.address}, server_ca)
    token = client_module.testing.set(client_module.property_of("test_expired_client_certificate_is_accepted[x]"))
    try:
        with pytest.raises(ExpectationFailed, match=r"^expired client certificate is accepted \[x\]: listener port 443"):
            gw.expect_ok(443, sni=HOST)
    finally:
        client_module.testing.reset(token)


def test_a_response_says_who_requested_the_client_certificate():
    response = Response(200, "OK", (("content-type", "application/json"),), json.dumps(ECHO).encode(),
                        TLSInfo("TLSv1.3", None, None, False, None))
    why = judge_rejected(response)
    assert why == ("the backend answered HTTP 200 OK over TLSv1.3, the listener requested no client "
                   "certificate: the request was let through")


# -- a refused request reaches no backend --------------------------------------------------


def forward_then(backend, *, close_after: int | None = None) -> Callable[[socket.socket], None]:
    """A gateway that forwards each request to ``backend`` (an EchoServer) and then closes the
    client's connection without an answer; with ``close_after``, one that lets the first
    ``close_after`` requests through (answered) and closes the later ones without forwarding."""
    import http.client

    seen = [0]

    def answer(sock: socket.socket) -> None:
        head = read_head(sock)
        method, target = head.split(b" ")[:2]
        seen[0] += 1
        if close_after is not None and seen[0] > close_after:
            return  # refused before anything was forwarded
        upstream = http.client.HTTPConnection(*backend.address, timeout=5)
        upstream.request(method.decode(), target.decode())
        payload = upstream.getresponse().read()
        upstream.close()
        if close_after is not None:
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + payload)

    return answer


@pytest.fixture
def backend():
    from mtls_conformance.echo import EchoServer

    with EchoServer(namespace="ns", service="orders", pod="orders-0") as server:
        yield server


def test_a_refused_request_that_reached_a_backend_fails_the_negative(serve, server_ca, server_cred, backend,
                                                                     untrusted_client):
    server = serve(tls_context(server_cred), forward_then(backend))
    gw = client_for({443: server.address}, server_ca)
    # The target knows its backends; the client asks every one of them.
    gw.target.running_backends = lambda: [backend]
    with pytest.raises(ExpectationFailed) as failed:
        gw.expect_rejected(443, sni=HOST, cert=untrusted_client, what="untrusted CA")
    message = str(failed.value)
    probe_id = backend.requests[-1]["path"].rsplit("=", 1)[1]
    assert message.startswith(f"untrusted CA: listener port 443 (SNI {HOST}) with client certificate 'untrusted': "
                              f"the client was refused (connection closed without a response on first read")
    assert (f"but backend ns/orders had received that request (probe id {probe_id}: "
            f"GET /?mtls-probe-id={probe_id} in plaintext); 1 of the 1 refused attempts that decided the check "
            f"reached a backend") in message
    assert "\nreproduce: curl " in message
    # Without the backend's record, the same gateway passes: only the response was judged.
    gw.target.running_backends = lambda: []
    gw.expect_rejected(443, sni=HOST, cert=untrusted_client, what="untrusted CA")


def test_requests_forwarded_while_the_gateway_converged_do_not_count(serve, server_ca, server_cred, backend,
                                                                      untrusted_client):
    server = serve(tls_context(server_cred), forward_then(backend, close_after=2))
    settings = Settings(timing=Timing(max_time_to_consistency=5, required_consecutive=2, request_timeout=2))
    gw = GatewayClient(StubTarget({443: server.address}), types.SimpleNamespace(namespace="ns"), trust=server_ca,
                       profile=types.SimpleNamespace(rejection_statuses=frozenset(), identity=None),
                       settings=settings)
    gw.target.running_backends = lambda: [backend]
    outcome = gw.expect_rejected(443, sni=HOST, cert=untrusted_client, what="untrusted CA")
    assert isinstance(outcome, Rejection) and outcome.kind == "closed", outcome.describe()
    assert len(backend.requests) == 2  # the two let through before the gateway converged


def test_the_deciding_attempts_are_the_last_accepted_run():
    from mtls_conformance.client import SentProbe, deciding_attempts

    ok = Response(200, "OK", (("content-type", "application/json"),), json.dumps(ECHO).encode(), None)
    closed = Rejection(phase="first-read", kind="closed", alert=None, detail="", tls=None)
    sent = [SentProbe("a", closed), SentProbe("b", ok), SentProbe("c", closed), SentProbe("d", closed)]
    assert [p.probe_id for p in deciding_attempts(sent, judge_rejected)] == ["c", "d"]
    assert deciding_attempts([], judge_rejected) == []
