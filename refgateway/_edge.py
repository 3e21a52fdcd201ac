"""The data plane: one asyncio.Protocol per client connection.

Bytes from the socket go into a pyOpenSSL memory BIO; OpenSSL's output is read back
out of the BIO and written to the socket. That way every TLS alert OpenSSL produces
(``certificate required``, ``unknown ca``...) reaches the client, which asyncio's
own TLS transport does not guarantee. Plaintext goes to an h11 state machine, or to
an h2 one when ALPN chose "h2"; each request is proxied to the backend over a fresh
plain HTTP/1.1 connection.

HTTP/2 matters for mTLS because of connection coalescing: a client may send requests
for several hostnames over one connection whose certificate covers them all. Every
stream is therefore judged against the listener the handshake selected (SNI), exactly
like an HTTP/1.1 request: another listener's Host gets 421.

A connection keeps the TLS configuration it was accepted with (a config change does
not disturb established connections), while routing looks at the port's *current*
plan for every request, so route changes apply to keep-alive connections too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h11
from OpenSSL import SSL

from . import routing
from ._tls import (ALERT_HANDSHAKE_FAILURE, BackendContexts, backend_identity_problem, leaf_identity,
                   pin_mismatch, short_reason, verify_mode)
from .translator import ALLOW_INSECURE_FALLBACK, BackendTLS, Listener

if TYPE_CHECKING:
    from ._server import Site

log = logging.getLogger("refgateway.edge")

IDENTITY_PREFIX = b"x-refgateway-"
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
              b"trailer", b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"content-length"}
BACKEND_TIMEOUT = 10.0
#: How long a connection refused by a fatal alert keeps draining what the client sends.
LINGER = 2.0
_rng = random.Random()


def on_sni(conn: SSL.Connection) -> None:
    edge = conn.get_app_data()
    if edge is not None:
        edge.choose_listener(conn)


def on_verify(conn: SSL.Connection, cert, errno: int, depth: int, ok: int) -> bool:
    edge = conn.get_app_data()
    return edge.verify(cert, errno, depth, ok) if edge is not None else bool(ok)


class Edge(asyncio.Protocol):
    def __init__(self, site: "Site"):
        self.site = site
        self.port = site.port  # TLS snapshot
        self.contexts = site.contexts
        self.faults = site.faults
        self.transport: asyncio.Transport | None = None
        self.tls: SSL.Connection | None = None
        self.listener: Listener | None = None
        self.handshaken = False
        self.reject = False
        self.verify_error: int | str | None = None
        self.identity: list[tuple[bytes, bytes]] = [(b"x-refgateway-client-verify", b"NONE")]
        self.h = h11.Connection(h11.SERVER)
        self.h2: h2.connection.H2Connection | None = None  # set when ALPN chose h2
        self.h2_streams: dict[int, tuple[list, bytearray]] = {}  # requests still arriving
        self.h2_pending: dict[int, bytes] = {}  # stream -> response body not yet sent
        self.h2_skip = 24  # bytes before the next frame header: the client preface, then frame bodies
        self.h2_head = b""  # the next frame header while incomplete
        self.data = asyncio.Event()
        self.eof = False
        self.closed = False
        self.lingering = False
        self.task: asyncio.Task | None = None

    # ------------------------------------------------------------------ transport side
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.site.edges.add(self)
        if self.port.protocol == "HTTPS":
            base = self.site.base_context
            if base is None:
                self.reject = True
            else:
                self.tls = SSL.Connection(base, None)
                self.tls.set_app_data(self)
                self.tls.set_accept_state()
        else:
            self.handshaken = True
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.eof = True
        self.data.set()
        self.site.edges.discard(self)
        if self.tls is not None:
            self.tls.set_app_data(None)  # break the reference cycle

    def eof_received(self):
        if self.lingering:
            self.close(graceful=False)
            return False
        self.eof = True
        self.data.set()
        return True  # keep the write side open to finish an in-flight response

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # drained, see _linger
        if self.tls is None:
            if self.reject:
                return self._refuse()
            self.h.receive_data(data)
            self.data.set()
            return
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
                self._flush()
                return self._linger()
            else:
                self.handshaken = True
                self._record_identity()
                if self.tls.get_alpn_proto_negotiated() == b"h2":
                    self._h2_start()
            if self.reject:
                return self._refuse()
            self._flush()
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
                self._flush()
                return self.close()
            if self.h2 is not None:
                self._h2_receive(chunk)
            else:
                self.h.receive_data(chunk)
        self._flush()
        self.data.set()

    def _refuse(self) -> None:
        """Fail closed: drop whatever OpenSSL prepared and send a handshake_failure alert."""
        if self.tls is not None:
            while True:
                try:
                    if not self.tls.bio_read(65536):
                        break
                except SSL.WantReadError:
                    break
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ALERT_HANDSHAKE_FAILURE)
        self.close(graceful=False)

    def _linger(self) -> None:
        """After a fatal alert: stop writing, drop what the client still sends, then close.

        Closing at once makes the kernel answer the client's bytes in flight (under TLS
        1.3 its Finished and first request arrive before it has read our alert) with a
        reset, and a reset can discard the alert from the client's receive buffer
        before the client reads it: the client would see a reset instead of the alert.
        """
        self.lingering = True
        if self.transport is None or self.transport.is_closing():
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER, self.close, False)

    def _flush(self) -> None:
        if self.tls is None or self.transport is None:
            return
        out = bytearray()
        while True:
            try:
                chunk = self.tls.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        if out and not self.transport.is_closing():
            self.transport.write(bytes(out))

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        if self.tls is None:
            self.transport.write(data)
            return
        view = memoryview(data)
        while view:
            n = self.tls.send(view[:16384].tobytes())
            view = view[n:]
        self._flush()

    def close(self, graceful: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if graceful and self.tls is not None and self.handshaken:
            try:
                self.tls.shutdown()
            except SSL.Error:
                pass
            self._flush()
        if self.transport is not None:
            self.transport.close()
        self.data.set()

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
        if not ls.servable or ctx is None:
            self.reject = True
            return
        conn.set_context(ctx)
        conn.set_verify(verify_mode(ls.validation, self.faults), on_verify)

    def verify(self, cert, errno: int, depth: int, ok: int) -> bool:
        v = self.listener.validation if self.listener else None
        if not ok:
            if self.verify_error is None:
                self.verify_error = errno
        elif depth == 0 and v is not None and self.verify_error is None:
            problem = pin_mismatch(cert.to_cryptography(), v)
            if problem:
                self.verify_error = problem
                ok = 0
        if v is not None and v.mode == ALLOW_INSECURE_FALLBACK:
            return True
        if "accept-any-client-cert" in self.faults:
            return True
        return bool(ok)

    def _record_identity(self) -> None:
        v = self.listener.validation if self.listener else None
        cert = self.tls.get_peer_certificate(as_cryptography=True)
        if v is None or cert is None:
            verdict = "NONE"
        elif self.verify_error is None:
            verdict = "SUCCESS"
        elif v.mode == ALLOW_INSECURE_FALLBACK and "report-fallback-as-verified" in self.faults:
            verdict = "SUCCESS"
        else:
            verdict = "FAILED:" + short_reason(self.verify_error)
        self.identity = [(b"x-refgateway-client-verify", verdict.encode())]
        if cert is not None:
            digest, subject = leaf_identity(cert)
            self.identity += [(b"x-refgateway-client-cert-sha256", digest.encode()),
                              (b"x-refgateway-client-cert-subject", subject.encode("utf-8", "replace"))]

    # ------------------------------------------------------------------ HTTP/2 side
    # The h11 loop in _serve keeps running in h2 mode: it never gets bytes, so it only
    # notices the end of the connection and closes it, as for HTTP/1.1.
    def _h2_start(self) -> None:
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        self._h2_flush()

    def _h2_flush(self) -> None:
        data = self.h2.data_to_send() if self.h2 is not None else b""
        if data:
            self.write(data)

    def _h2_receive(self, chunk: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(chunk)
        except h2.exceptions.ProtocolError as exc:
            log.debug("HTTP/2 protocol error: %s", exc)
            self._h2_flush()  # the GOAWAY h2 prepared
            return self.close()
        if self._h2_oversized_frame(chunk):
            log.debug("HTTP/2 frame header announces more than %d bytes", self.h2.max_inbound_frame_size)
            self.h2.close_connection(error_code=h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
            self._h2_flush()
            return self.close()
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.h2_streams[ev.stream_id] = (ev.headers, bytearray())
            elif isinstance(ev, h2.events.DataReceived):
                if ev.stream_id in self.h2_streams:
                    self.h2_streams[ev.stream_id][1].extend(ev.data)
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self._h2_dispatch(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.h2_streams.pop(ev.stream_id, None)
                self.h2_pending.pop(ev.stream_id, None)
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._h2_send_pending()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.eof = True
        self._h2_flush()

    def _h2_oversized_frame(self, chunk: bytes) -> bool:
        """Whether a frame header received so far announces more than SETTINGS_MAX_FRAME_SIZE.

        h2 checks a frame's length only once the whole frame has arrived: garbage after
        the preface (text reads as a multi-megabyte length) would leave the connection
        open and unanswered until up to 16 MB came in. RFC 9113 4.2: FRAME_SIZE_ERROR.
        """
        data = self.h2_head + chunk
        pos = self.h2_skip
        while pos + 9 <= len(data):
            length = int.from_bytes(data[pos:pos + 3], "big")
            if length > self.h2.max_inbound_frame_size:
                return True
            pos += 9 + length
        self.h2_skip = max(0, pos - len(data))
        self.h2_head = data[pos:] if pos < len(data) else b""
        return False

    def _h2_dispatch(self, stream_id: int) -> None:
        entry = self.h2_streams.pop(stream_id, None)
        if entry is not None:
            asyncio.get_running_loop().create_task(self._h2_serve_stream(stream_id, *entry))

    async def _h2_serve_stream(self, stream_id: int, headers: list, body: bytearray) -> None:
        pseudo = {k: v for k, v in headers if k.startswith(b":")}
        regular = [(k, v) for k, v in headers if not k.startswith(b":")]
        if not any(k == b"host" for k, _ in regular) and pseudo.get(b":authority"):
            regular.insert(0, (b"host", pseudo[b":authority"]))  # RFC 9113 8.3.1
        try:
            req = h11.Request(method=pseudo.get(b":method", b""), target=pseudo.get(b":path", b""),
                              headers=regular)
        except h11.LocalProtocolError:
            status, resp_headers, payload = 400, [], b"bad request\n"
        else:
            try:
                status, resp_headers, payload = await self._handle(req, bytes(body))
            except Exception:  # a bug must not take the gateway down
                log.exception("HTTP/2 stream handler failed")
                status, resp_headers, payload = 500, [], b"internal error\n"
        if self.closed or self.h2 is None:
            return
        out = [(b":status", str(status).encode())]
        out += [(k.lower(), v) for k, v in resp_headers if k.lower() not in HOP_BY_HOP]
        out.append((b"content-length", str(len(payload)).encode()))
        try:
            self.h2.send_headers(stream_id, out, end_stream=not payload)
        except h2.exceptions.ProtocolError:  # the client reset the stream meanwhile
            return
        if payload:
            self.h2_pending[stream_id] = payload
            self._h2_send_pending()
        self._h2_flush()

    def _h2_send_pending(self) -> None:
        for stream_id in list(self.h2_pending):
            payload = self.h2_pending[stream_id]
            try:
                while payload:
                    window = min(self.h2.local_flow_control_window(stream_id),
                                 self.h2.max_outbound_frame_size)
                    if window <= 0:
                        break
                    self.h2.send_data(stream_id, payload[:window])
                    payload = payload[window:]
                if payload:
                    self.h2_pending[stream_id] = payload
                    continue
                self.h2.end_stream(stream_id)
            except h2.exceptions.ProtocolError:
                pass
            del self.h2_pending[stream_id]
        self._h2_flush()

    # ------------------------------------------------------------------ HTTP side
    async def _next(self):
        while True:
            ev = self.h.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            if self.eof or self.closed:
                self.h.receive_data(b"")
                ev = self.h.next_event()
                return ev if ev is not h11.NEED_DATA else h11.ConnectionClosed()
            self.data.clear()
            await self.data.wait()

    async def _serve(self) -> None:
        try:
            while not self.closed:
                ev = await self._next()
                if isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                    break
                if not isinstance(ev, h11.Request):
                    continue
                body = bytearray()
                while True:
                    part = await self._next()
                    if isinstance(part, h11.Data):
                        body += part.data
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
                status, headers, payload = await self._handle(ev, bytes(body))
                self._respond(status, headers, payload)
                if self.h.our_state is not h11.DONE or self.h.their_state is not h11.DONE:
                    break
                self.h.start_next_cycle()
        except h11.RemoteProtocolError:
            if self.h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self._respond(400, [], b"bad request\n")
        except Exception:  # a bug must not take the gateway down
            log.exception("connection handler failed")
        finally:
            self.close()

    def _respond(self, status: int, headers: list, payload: bytes) -> None:
        headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        headers.append((b"content-length", str(len(payload)).encode()))
        out = self.h.send(h11.Response(status_code=status, headers=headers))
        if payload:
            out += self.h.send(h11.Data(data=payload))
        out += self.h.send(h11.EndOfMessage())
        self.write(out)

    async def _handle(self, req: h11.Request, body: bytes) -> tuple[int, list, bytes]:
        headers = [(k.lower(), v) for k, v in req.headers]
        host = routing.split_host(next((v.decode("latin-1") for k, v in headers if k == b"host"), ""))
        port = self.site.port  # current plan, for routing
        if port.protocol == "HTTPS":
            sni = self.listener
            if sni is None:
                return 421, [], b"misdirected request\n"
            if "ignore-misdirected-requests" in self.faults:
                sni = routing.select_listener(port.listeners, host) or sni
            elif routing.misdirected(port, sni, host):
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
        if "keep-client-identity-headers" not in self.faults:
            headers = [(k, v) for k, v in headers if not k.startswith(IDENTITY_PREFIX)]
        headers += self.identity
        target = req.target.decode("latin-1")
        rule = routing.select_rule(listener.rules, host=host, path=target, method=req.method.decode(),
                                   headers={k.decode("latin-1"): v.decode("latin-1") for k, v in headers})
        if rule is None:
            return 404, [], b"no route\n"
        status, endpoint, backend = routing.pick_endpoint(rule.backends, _rng)
        if endpoint is None:
            return status, [], b"no usable backend for this rule\n"
        upstream = None
        if backend.tls is not None:
            sni = host if "backend-sni-from-host" in self.faults else backend.tls.hostname
            upstream = (self.site.backend_contexts, backend.tls, sni)
        return await proxy(endpoint, req, headers, body, tls=self.tls is not None,
                           client=self.transport.get_extra_info("peername"), upstream=upstream,
                           faults=self.faults)


async def proxy(endpoint: tuple[str, int], req: h11.Request, headers: list, body: bytes, *,
                tls: bool, client, upstream: tuple[BackendContexts, BackendTLS, str] | None = None,
                faults: frozenset[str] = frozenset()) -> tuple[int, list, bytes]:
    """Send one request to a backend over HTTP/1.1 and buffer its response.

    ``upstream`` = (contexts, the policy's TLS settings, SNI) originates TLS; the
    backend's identity is checked after the handshake and before the request is sent,
    so a backend that fails it never sees the request (502).
    """
    out = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
    if client:
        out.append((b"x-forwarded-for", str(client[0]).encode()))
    out.append((b"x-forwarded-proto", b"https" if tls else b"http"))
    out.append((b"connection", b"close"))
    if body or req.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        out.append((b"content-length", str(len(body)).encode()))
    conn = h11.Connection(h11.CLIENT)
    writer = None
    try:
        if upstream is None:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*endpoint), BACKEND_TIMEOUT)
        else:
            contexts, backend_tls, sni = upstream
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                *endpoint, ssl=contexts.context(backend_tls), server_hostname=sni), BACKEND_TIMEOUT)
            try:
                der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            except (AttributeError, ValueError):
                # The backend ended the connection right after the handshake (TLS 1.3: it
                # refused our certificate): no ssl_object, or "handshake not done yet".
                log.info("backend %s:%s closed the TLS connection after the handshake", *endpoint)
                return 502, [], b"backend closed the TLS connection\n"
            problem = backend_identity_problem(der, backend_tls, faults)
            if problem:
                log.info("backend %s:%s (BackendTLSPolicy %s) refused: %s",
                         endpoint[0], endpoint[1], backend_tls.policy, problem)
                return 502, [], b"backend certificate rejected\n"
        data = conn.send(h11.Request(method=req.method, target=req.target, headers=out))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        response, payload = None, bytearray()
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(reader.read(65536), BACKEND_TIMEOUT))
            elif isinstance(ev, h11.Response):
                response = ev
            elif isinstance(ev, h11.Data):
                payload += ev.data
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if response is None:
            return 502, [], b"backend closed without a response\n"
        return response.status_code, list(response.headers), bytes(payload)
    except (OSError, asyncio.TimeoutError, h11.ProtocolError) as exc:
        log.info("backend %s:%s failed: %r", endpoint[0], endpoint[1], exc)
        return 502, [], b"backend unavailable\n"
    finally:
        if writer is not None:
            writer.close()
