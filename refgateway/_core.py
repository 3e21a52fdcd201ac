"""The per-connection logic of the data plane, without sockets (sans-IO, in the style of h11).

``EdgeCore`` is one client connection: bytes from the client go in with
``receive_data()`` (``b""`` is the client's end of stream), bytes for the client come
out of ``data_to_send()``, and everything else the connection needs from the outside
world comes out of ``next_event()``:

- ``ProxyRequest``: a request routed to a backend endpoint. The caller performs it
  (``refgateway._edge.proxy``) and hands the answer back with ``backend_response()``
  (or ``backend_failed()``); the core never opens a connection itself.
- ``Linger``: a fatal alert was sent. Stop writing (send FIN), drop what the client
  still sends, close after ``seconds``.
- ``Close``: close the connection once ``data_to_send()`` has been written.

TLS runs through pyOpenSSL memory BIOs, so every alert OpenSSL produces (``certificate
required``, ``unknown ca``...) is in ``data_to_send()`` and reaches the client, which
asyncio's own TLS transport does not guarantee. Plaintext goes to an h11 state machine,
or to an h2 one when ALPN chose "h2".

HTTP/2 matters for mTLS because of connection coalescing: a client may send requests
for several hostnames over one connection whose certificate covers them all. Every
stream is therefore judged against the listener the handshake selected (SNI), exactly
like an HTTP/1.1 request: another listener's Host gets 421.

A connection keeps the TLS configuration it was accepted with (a config change does
not disturb established connections), while routing looks at the site's *current*
plan for every request, so route changes apply to keep-alive connections too.

``site`` is anything with ``port``, ``contexts``, ``base_context`` and ``faults``
(``refgateway._server.Site``); the unit tests pass a plain namespace.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import h2.connection
import h11
from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _ssl_lib  # SSL_session_reused: pyOpenSSL has no wrapper

from . import routing
from ._core_h2 import HOP_BY_HOP, H2Side
from ._tls import (ALERT_HANDSHAKE_FAILURE, leaf_identity, needs_verify_callback, overrules_rule, pin_mismatch, set_verify,
                   short_reason, verify_mode, version_refusal)
from ._plan import ALLOW_INSECURE_FALLBACK, BackendTLS, Listener
from .faults import (ACCEPT_ANY_CLIENT_CERT, BACKEND_SNI_FROM_HOST, FIRST_LISTENER_CERTIFICATE_PER_PORT,
                     IGNORE_MISDIRECTED_REQUESTS, KEEP_CLIENT_IDENTITY_HEADERS, MISDIRECTED_ONLY_WITH_CLIENT_VALIDATION,
                     MISDIRECTED_ON_ANY_HOST_MISMATCH, NO_SNI_SKIPS_CLIENT_VALIDATION, REFUSE_AFTER_PROXYING,
                     REPORT_FALLBACK_AS_VERIFIED, ROUTE_HOST_WITH_PORT, UNMATCHED_HOST_TO_FIRST_ROUTE)

__all__ = ["EdgeCore", "ProxyRequest", "Linger", "Close", "on_sni", "on_verify", "HOP_BY_HOP", "LINGER"]

log = logging.getLogger("refgateway.edge")

IDENTITY_PREFIX = b"x-refgateway-"
#: How long a connection refused by a fatal alert keeps draining what the client sends.
LINGER = 2.0
#: The stream id of the HTTP/1.1 request in flight (h2 streams are odd numbers >= 1).
H11_REF = 0
_rng = random.Random()
_X509_V_ERR_CERT_HAS_EXPIRED = 10


@dataclass
class ProxyRequest:
    """Send ``request`` (with ``headers`` and ``body``) to ``endpoint``; answer with backend_response(ref, ...)."""
    ref: int
    endpoint: tuple[str, int]
    request: h11.Request
    headers: list
    body: bytes
    #: (the policy's TLS settings, SNI) to originate TLS, or None for plain HTTP.
    upstream: tuple[BackendTLS, str] | None


@dataclass
class Linger:
    """A fatal alert was sent: half-close, drain the client, close after ``seconds``."""
    seconds: float


@dataclass
class Close:
    """Close the connection after writing what data_to_send() returned."""


def on_sni(conn: SSL.Connection) -> None:
    core = conn.get_app_data()
    if core is not None:
        core.choose_listener(conn)


def on_verify(conn: SSL.Connection, cert, errno: int, depth: int, ok: int) -> bool:
    core = conn.get_app_data()
    return core.verify(cert, errno, depth, ok) if core is not None else bool(ok)


@functools.lru_cache(maxsize=1024)
def _identity_headers(der: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The identity headers of a client certificate, computed once per certificate seen."""
    digest, subject = leaf_identity(x509.load_der_x509_certificate(der))
    return ((b"x-refgateway-client-cert-sha256", digest.encode()),
            (b"x-refgateway-client-cert-subject", subject.encode("utf-8", "replace")))


#: The client's h11 state once its whole request is read (MUST_CLOSE: it said Connection: close).
_REQUEST_READ = (h11.DONE, h11.MUST_CLOSE)


def _fast_path(req: h11.Request) -> str | None:
    """How an answer to ``req`` may skip h11: "keep-alive" (an HTTP/1.1 request, not HEAD),
    "close" (the same with ``Connection: close``), or None (h11 writes it: HTTP/1.0, HEAD)."""
    if req.http_version != b"1.1" or req.method == b"HEAD":
        return None
    for k, v in req.headers:
        if k == b"connection" and b"close" in [t.strip() for t in v.lower().split(b",")]:
            return "close"
    return "keep-alive"


def response_bytes(status: int, headers: list, payload: bytes, close: bool = False) -> bytes:
    """An HTTP/1.1 response as h11 writes it: no reason phrase, Host first, then
    Content-Length, then (``close``: the client asked for it) ``Connection: close``.

    ``headers`` are valid field lines (ours, or a backend's as refgateway._edge parsed
    them) without hop-by-hop ones.
    """
    lines = [b"HTTP/1.1 %d \r\n" % status]
    lines += [b"%s: %s\r\n" % (k, v) for k, v in headers if k.lower() == b"host"]
    lines += [b"%s: %s\r\n" % (k, v) for k, v in headers if k.lower() != b"host"]
    lines.append(b"content-length: %d\r\n" % len(payload))
    lines.append(b"Connection: close\r\n\r\n" if close else b"\r\n")
    lines.append(payload)
    return b"".join(lines)


class EdgeCore(H2Side):
    def __init__(self, site: Any):
        self.site = site
        self.port = site.port  # TLS snapshot
        self.contexts = site.contexts
        self.scopes = getattr(site, "scopes", {})  # snapshots, like port and contexts
        self.sessions = getattr(site, "sessions", None)
        self.resumed = False
        self.faults = site.faults
        self.tls: SSL.Connection | None = None
        self.listener: Listener | None = None
        self.handshaken = False
        self.reject = False
        self.reject_alert = ALERT_HANDSHAKE_FAILURE  # what _refuse sends
        self.verify_error: int | str | None = None
        self.identity: list[tuple[bytes, bytes]] = [(b"x-refgateway-client-verify", b"NONE")]
        self.h = h11.Connection(h11.SERVER)
        self.h2: h2.connection.H2Connection | None = None  # set when ALPN chose h2
        self.h2_streams: dict[int, tuple[list, bytearray]] = {}  # requests still arriving
        self.h2_pending: dict[int, bytes] = {}  # stream -> response body not yet sent
        self.h2_inflight: set[int] = set()  # streams with the backend
        self.h2_skip = 24  # bytes before the next frame header: the client preface, then frame bodies
        self.h2_head = b""  # the next frame header while incomplete
        self.eof = False
        self.closed = False
        self.lingering = False
        self._out = bytearray()
        self._events: deque = deque()
        self._request: h11.Request | None = None  # HTTP/1.1 request whose body is arriving
        self._body = bytearray()
        self._waiting = False  # the HTTP/1.1 request is with the backend
        self._fast: str | None = None  # how the request in progress may skip h11 (_fast_path)
        self.answered = 0  # responses sent (the adapter's idle timer restarts on each)
        if self.port.protocol == "HTTPS":
            base = site.base_context
            if base is None:
                self.reject = True
            else:
                self.tls = SSL.Connection(base, None)
                self.tls.set_app_data(self)
                self.tls.set_accept_state()
        else:
            self.handshaken = True

    # ------------------------------------------------------------------ the sans-IO surface
    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` when the client ended its side of the stream."""
        if not data:
            return self._receive_eof()
        if self.lingering or self.closed:
            return  # drained, see _linger
        if self.tls is None:
            if self.reject:
                return self._refuse()
            self.h.receive_data(data)
            return self._serve()
        self.tls.bio_write(data)
        if not self.handshaken:
            try:
                self.tls.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                log.debug("handshake failed: %s", exc)
                if self.reject:
                    return self._refuse()
                self._flush_tls()
                return self._linger()
            else:
                self.handshaken = True
                self._record_identity()
                if self.tls.get_alpn_proto_negotiated() == b"h2":
                    self._h2_start()
            if self.reject:
                return self._refuse()
            self._flush_tls()
            if not self.handshaken:
                return
        while True:
            try:
                chunk = self.tls.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.eof = True
                break
            except SSL.Error:
                self._flush_tls()
                return self.close()
            if self.h2 is not None:
                self._h2_receive(chunk)
            else:
                self.h.receive_data(chunk)
        self._flush_tls()
        self._serve()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> ProxyRequest | Linger | Close | None:
        return self._events.popleft() if self._events else None

    def backend_response(self, ref: int, status: int, headers: list, payload: bytes) -> None:
        """The answer to ProxyRequest ``ref``."""
        if ref == H11_REF:
            if not self._waiting or self.closed:
                return
            self._waiting = False
            if self._refused_after_proxying():
                return self.close()
            self._respond_and_cycle(status, headers, payload)
            self._serve()
        else:
            self.h2_inflight.discard(ref)
            if self._refused_after_proxying():
                return self.close()
            self._h2_respond(ref, status, headers, payload)
            self._serve()

    def backend_failed(self, ref: int) -> None:
        """The adapter could not perform ProxyRequest ``ref`` (a bug, not a backend error)."""
        if ref == H11_REF:
            self._waiting = False
            self.close()
        else:
            self.h2_inflight.discard(ref)
            self._h2_respond(ref, 500, [], b"internal error\n")
            self._serve()

    def connection_lost(self) -> None:
        self.closed = True
        self.eof = True
        if self.tls is not None:
            self.tls.set_app_data(None)  # break the reference cycle

    def close(self, graceful: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if graceful and self.tls is not None and self.handshaken:
            try:
                self.tls.shutdown()
            except SSL.Error:
                pass
            self._flush_tls()
        self._events.append(Close())

    @property
    def busy(self) -> bool:
        """Whether a request is with the backend (idle timeouts do not run meanwhile)."""
        return self._waiting or bool(self.h2_inflight)

    # ------------------------------------------------------------------ transport side
    def _receive_eof(self) -> None:
        if self.lingering:
            return self.close(graceful=False)
        self.eof = True
        self._serve()  # the write side stays open to finish an in-flight response

    def _refuse(self) -> None:
        """Fail closed: drop whatever OpenSSL prepared and send a handshake_failure alert."""
        if self.tls is not None:
            while True:
                try:
                    if not self.tls.bio_read(65536):
                        break
                except SSL.WantReadError:
                    break
        self._out += self.reject_alert
        self.close(graceful=False)

    def _linger(self) -> None:
        """After a fatal alert: stop writing, drop what the client still sends, then close.

        Closing at once makes the kernel answer the client's bytes in flight (under TLS
        1.3 its Finished and first request arrive before it has read our alert) with a
        reset, and a reset can discard the alert from the client's receive buffer
        before the client reads it: the client would see a reset instead of the alert.
        """
        self.lingering = True
        self._events.append(Linger(LINGER))

    def _flush_tls(self) -> None:
        if self.tls is None:
            return
        while True:
            try:
                chunk = self.tls.bio_read(262144)
            except SSL.WantReadError:
                break
            self._out += chunk
            if len(chunk) < 262144:  # a memory BIO hands out all it holds: it is empty now
                break

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.tls is None:
            self._out += data
            return
        view = memoryview(data)
        while view:
            n = self.tls.send(view[:16384])
            view = view[n:]
        self._flush_tls()

    # ------------------------------------------------------------------ TLS callbacks
    def choose_listener(self, conn: SSL.Connection) -> None:
        raw = conn.get_servername()
        name = raw.decode("ascii", "replace").lower() if raw else ""
        ls = routing.select_listener(self.port.listeners, name) if name else None
        if ls is None:
            # No SNI or an unknown name: the first listener without a hostname, else the first one.
            ls = next((x for x in self.port.listeners if x.hostname is None), self.port.listeners[0])
        self.listener = ls
        ctx = self.contexts.get(ls.name)
        if FIRST_LISTENER_CERTIFICATE_PER_PORT in self.faults:
            ctx = self.contexts.get(self.port.listeners[0].name) or ctx
        if not ls.servable or ctx is None:
            self.reject = True
            return
        if _ssl_lib.SSL_session_reused(conn._ssl) and not self._may_resume(conn, ls):
            self.reject = True  # a fatal alert; the client starts afresh on its next connection
            return
        conn.set_context(ctx)
        if NO_SNI_SKIPS_CLIENT_VALIDATION in self.faults and not name:
            conn.set_verify(SSL.VERIFY_NONE, on_verify)
            return
        version = conn.get_protocol_version_name()  # already negotiated when OpenSSL calls back for SNI
        refusal = version_refusal(ls.validation, self.faults, version)
        if refusal is not None:
            self.reject, self.reject_alert = True, refusal
            return
        mode = verify_mode(ls.validation, self.faults, version)
        if needs_verify_callback(ls.validation, self.faults):
            set_verify(conn, mode, on_verify, self.faults)
        else:
            # OpenSSL's verdict stands (a callback kept from the base context returns it
            # unchanged): a completed handshake with a certificate is a verified one.
            conn.set_verify(mode)

    def _may_resume(self, conn: SSL.Connection, ls: Listener) -> bool:
        """Whether this listener may serve the session the client resumed (see _tls's
        theory of operation): one made under its own validation scope, whose verified
        chain has not expired since. Nothing to carry without validation."""
        self.resumed = True
        if ls.validation is None:
            return True
        scope = self.scopes.get(ls.name)
        if self.sessions is None or scope is None:
            return False
        why, self.verify_error = self.sessions.resumable(scope, conn)
        if why == "expired" and ls.validation.mode == ALLOW_INSECURE_FALLBACK:
            # Fallback lets an expired chain in, as the full handshake would, reported as such.
            self.verify_error = self.verify_error or _X509_V_ERR_CERT_HAS_EXPIRED
            return True
        return why is None

    def verify(self, cert, errno: int, depth: int, ok: int) -> bool:
        v = self.listener.validation if self.listener else None
        if not ok and overrules_rule(self.faults, errno, depth, cert):
            ok = 1
        if not ok:
            if self.verify_error is None:
                self.verify_error = errno
        elif depth == 0 and v is not None and self.verify_error is None and (v.pin_hashes or v.pin_sans):
            problem = pin_mismatch(cert.to_cryptography(), v)
            if problem:
                self.verify_error = problem
                ok = 0
        if v is not None and v.mode == ALLOW_INSECURE_FALLBACK:
            return True
        if ACCEPT_ANY_CLIENT_CERT in self.faults or REFUSE_AFTER_PROXYING in self.faults:
            return True  # refuse-after-proxying: the verdict is applied to the backend's answer
        return bool(ok)

    def _refused_after_proxying(self) -> bool:
        """The refuse-after-proxying fault: an AllowValidOnly client that did not verify is
        refused only now, when the backend's answer is back (as a gateway that checks the
        client certificate in a filter on the response path, after the router, would)."""
        v = self.listener.validation if self.listener else None
        if REFUSE_AFTER_PROXYING not in self.faults or v is None or v.mode == ALLOW_INSECURE_FALLBACK:
            return False
        return self.verify_error is not None or self.tls.get_peer_certificate() is None

    def _record_identity(self) -> None:
        v = self.listener.validation if self.listener else None
        if not self.resumed and not self.reject and self.sessions is not None and self.listener is not None:
            scope = self.scopes.get(self.listener.name)
            if scope is not None:
                self.sessions.record(scope, self.tls, self.verify_error)
        cert = self.tls.get_peer_certificate()
        if v is None or cert is None:
            verdict = "NONE"
        elif self.verify_error is None:
            verdict = "SUCCESS"
        elif v.mode == ALLOW_INSECURE_FALLBACK and REPORT_FALLBACK_AS_VERIFIED in self.faults:
            verdict = "SUCCESS"
        else:
            verdict = "FAILED:" + short_reason(self.verify_error)
        self.identity = [(b"x-refgateway-client-verify", verdict.encode())]
        if cert is not None:
            self.identity += _identity_headers(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))

    # ------------------------------------------------------------------ HTTP/1.1 side
    def _next(self):
        ev = self.h.next_event()
        if ev is not h11.NEED_DATA:
            return ev
        if self.eof or self.closed:
            self.h.receive_data(b"")
            ev = self.h.next_event()
            return ev if ev is not h11.NEED_DATA else h11.ConnectionClosed()
        return None

    def _serve(self) -> None:
        """Run the HTTP/1.1 machine until it needs bytes, waits for the backend, or ends."""
        if self.h2 is not None:
            # The client ended the connection (FIN, close_notify or GOAWAY). Streams still
            # with the backend cannot be answered after a GOAWAY anyway: h2's state machine
            # is CLOSED once it received one (python-hyper/h2 #1181).
            if self.eof or self.closed:
                self.close()
            return
        try:
            while not self.closed and not self._waiting:
                ev = self._next()
                if ev is None:
                    return
                if self._request is None:
                    if isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                        return self.close()
                    if isinstance(ev, h11.Request):
                        self._request, self._body = ev, bytearray()
                    continue
                if isinstance(ev, h11.Data):
                    self._body += ev.data
                    continue
                if not isinstance(ev, h11.EndOfMessage):
                    return self.close()
                req, body = self._request, bytes(self._body)
                self._request, self._body = None, bytearray()
                self._fast = _fast_path(req)
                answer = self._handle(req, body, H11_REF)
                if answer is None:
                    self._waiting = True
                    return
                self._respond_and_cycle(*answer)
        except h11.RemoteProtocolError:
            if self.h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self._respond(400, [], b"bad request\n")
            self.close()
        except Exception:  # a bug must not take the gateway down
            log.exception("connection handler failed")
            self.close()

    def _respond_and_cycle(self, status: int, headers: list, payload: bytes) -> None:
        """Answer the request, then get ready for the next one on the connection (or close it).

        Fast path: an HTTP/1.1 request that is not HEAD gets its answer written here, byte
        for byte what h11 would write (tests/refgateway/test_core.py compares them); after
        ``Connection: close`` the connection ends, as h11's would, otherwise a fresh h11
        machine takes over the bytes already received. On the data plane's hot path
        h11's send() (events, state machine, header normalisation) cost as much as
        everything else in a request; the answers it checks are ours.
        """
        if self._fast and self.h.our_state is h11.SEND_RESPONSE and self.h.their_state in _REQUEST_READ \
                and 200 <= status and status not in (204, 304):
            self.answered += 1
            data = response_bytes(status, [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP], payload,
                                  close=self._fast == "close")
            if self._fast == "close":
                self.write(data)
                return self.close()
            leftover, closed = self.h.trailing_data
            self.h = h11.Connection(h11.SERVER)
            if leftover:
                self.h.receive_data(leftover)
            if closed:
                self.h.receive_data(b"")
            self.write(data)
            return
        self._respond(status, headers, payload)
        self._next_cycle()

    def _next_cycle(self) -> None:
        if self.h.our_state is not h11.DONE or self.h.their_state is not h11.DONE:
            return self.close()
        self.h.start_next_cycle()

    def _respond(self, status: int, headers: list, payload: bytes) -> None:
        self.answered += 1
        headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        headers.append((b"content-length", str(len(payload)).encode()))
        out = self.h.send(h11.Response(status_code=status, headers=headers))
        if payload:
            out += self.h.send(h11.Data(data=payload))
        out += self.h.send(h11.EndOfMessage())
        self.write(out)

    # ------------------------------------------------------------------ routing
    def _handle(self, req: h11.Request, body: bytes, ref: int) -> tuple[int, list, bytes] | None:
        """An immediate answer (status, headers, body), or None after queueing a ProxyRequest."""
        headers = [(k.lower(), v) for k, v in req.headers]
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "")
        host = host.strip().lower() if ROUTE_HOST_WITH_PORT in self.faults else routing.split_host(host)
        port = self.site.port  # current plan, for routing
        if port.protocol == "HTTPS":
            sni = self.listener
            if sni is None:
                return 421, [], b"misdirected request\n"
            if IGNORE_MISDIRECTED_REQUESTS in self.faults or (
                    MISDIRECTED_ONLY_WITH_CLIENT_VALIDATION in self.faults
                    and all(x.validation is None for x in port.listeners)):
                sni = routing.select_listener(port.listeners, host) or sni
            elif routing.misdirected(port, sni, host) or (
                    MISDIRECTED_ON_ANY_HOST_MISMATCH in self.faults and self.tls.get_servername()
                    and self.tls.get_servername().decode("ascii", "replace").lower() != host):
                return 421, [], b"misdirected request: Host does not belong to the TLS listener\n"
            listener = next((x for x in port.listeners if x.name == sni.name), sni)
            if not routing.host_matches_listener(listener, host):
                return 404, [], b"no listener for this host\n"
        else:
            listener = routing.select_listener(port.listeners, host)
            if listener is None:
                return 404, [], b"no listener for this host\n"
            if listener.validation is not None:  # only under the validate-http-listeners fault
                return 400, [], b"client certificate required\n"
        if not listener.servable:
            return 404, [], b"listener is not programmed\n"
        if KEEP_CLIENT_IDENTITY_HEADERS not in self.faults:
            headers = [(k, v) for k, v in headers if not k.startswith(IDENTITY_PREFIX)]
        headers += self.identity
        target = req.target.decode("latin-1")
        rules = listener.rules
        wanted = {k for r in rules for k, _ in r.headers}  # the header names any rule matches on
        rule = routing.select_rule(rules, host=host, path=target, method=req.method.decode(),
                                   headers={k.decode("latin-1"): v.decode("latin-1") for k, v in headers
                                            if k.decode("latin-1") in wanted} if wanted else {})
        if rule is None and UNMATCHED_HOST_TO_FIRST_ROUTE in self.faults and listener.rules:
            rule = listener.rules[0]
        if rule is None:
            return 404, [], b"no route\n"
        status, endpoint, backend = routing.pick_endpoint(rule.backends, _rng)
        if endpoint is None:
            return status, [], b"no usable backend for this rule\n"
        upstream = None
        if backend.tls is not None:
            sni = host if BACKEND_SNI_FROM_HOST in self.faults else backend.tls.hostname
            upstream = (backend.tls, sni)
        self._events.append(ProxyRequest(ref, endpoint, req, headers, body, upstream))
        return None
