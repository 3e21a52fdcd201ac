"""The data plane's asyncio side: a thin adapter around ``refgateway._core.EdgeCore``.

``EdgeCore`` holds all per-connection logic (TLS through memory BIOs, h11/h2, routing,
identity headers) without sockets; ``Edge`` moves its bytes to and from the transport,
performs the backend requests it asks for (``proxy``), and runs the timers a core has
no clock for: the handshake timeout and the idle timeout (``Timeouts``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11

from ._core import HOP_BY_HOP, LINGER, Close, EdgeCore, Linger, ProxyRequest, on_sni, on_verify
from ._tls import BackendContexts, backend_identity_problem
from ._plan import BackendTLS

if TYPE_CHECKING:
    from ._server import Site

__all__ = ["Edge", "Timeouts", "proxy", "on_sni", "on_verify", "LINGER"]

log = logging.getLogger("refgateway.edge")

BACKEND_TIMEOUT = 10.0


@dataclass(frozen=True)
class Timeouts:
    """Seconds a client connection may spend without progress before it is closed.

    ``handshake``: from accept to a completed TLS handshake (a half-open connection, or a
    ClientHello trickled byte by byte). ``idle``: from the handshake or the last response
    to a complete request (an idle keep-alive connection, or a request header trickled
    slowloris-style); it does not run while a request is with the backend.
    """
    handshake: float = 10.0
    idle: float = 60.0


class Edge(asyncio.Protocol):
    def __init__(self, site: "Site"):
        self.site = site
        self.timeouts: Timeouts = getattr(site, "timeouts", None) or Timeouts()
        self.core: EdgeCore | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.idle_armed = False
        self.idle_since: float | None = None  # loop time the connection last became idle
        self.peer = None
        self.answered = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.site.edges.add(self)
        self.core = EdgeCore(self.site)
        self.loop = asyncio.get_running_loop()
        if not self.core.handshaken:
            self.timer = self.loop.call_later(self.timeouts.handshake, self._timed_out, "handshake")
        self._arm()

    def connection_lost(self, exc) -> None:
        self.site.edges.discard(self)
        self._cancel()
        self.core.connection_lost()

    def eof_received(self):
        self.core.receive_data(b"")
        self._drive()
        return not self.core.closed  # keep the write side open to finish an in-flight response

    def data_received(self, data: bytes) -> None:
        self.core.receive_data(data)
        self._drive()

    def close(self, graceful: bool = True) -> None:
        self.core.close(graceful)
        self._drive()

    # ------------------------------------------------------------------ the core's output
    def _drive(self) -> None:
        core, transport = self.core, self.transport
        data = core.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)
        while (ev := core.next_event()) is not None:
            if isinstance(ev, ProxyRequest):
                if ev.upstream is None:
                    self._send_plain(ev)
                else:
                    self.loop.create_task(self._proxy(ev))
            elif isinstance(ev, Linger):
                self._cancel()
                if not transport.is_closing():
                    if transport.can_write_eof():
                        transport.write_eof()
                    self.loop.call_later(ev.seconds, self.close, False)
            elif isinstance(ev, Close):
                self._cancel()
                transport.close()
        if not core.closed and not core.lingering:
            self._arm()

    def _send_plain(self, ev: ProxyRequest) -> None:
        """A plain HTTP backend: through the pool, answered by callback (no task per request)."""
        core = self.core
        if self.peer is None:
            self.peer = self.transport.get_extra_info("peername") or ()
        headers = forward_headers(ev.headers, ev.request.method, ev.body, tls=core.tls is not None,
                                  client=self.peer, close=False)
        _pool().send(ev.endpoint, ev.request.method, ev.request.target, headers, ev.body,
                     lambda answer: self._answered(ev.ref, answer))

    def _answered(self, ref: int, answer: tuple[int, list, bytes]) -> None:
        try:
            self.core.backend_response(ref, *answer)
        except Exception:  # a bug must not take the gateway down
            log.exception("answering a request failed")
            self.core.backend_failed(ref)
        self._drive()

    async def _proxy(self, ev: ProxyRequest) -> None:
        core = self.core
        upstream = None
        if ev.upstream is not None:
            upstream = (self.site.backend_contexts, *ev.upstream)
        try:
            answer = await proxy(ev.endpoint, ev.request, ev.headers, ev.body, tls=core.tls is not None,
                                 client=self.transport.get_extra_info("peername"), upstream=upstream,
                                 faults=core.faults)
        except Exception:  # a bug must not take the gateway down
            log.exception("proxying a request failed")
            core.backend_failed(ev.ref)
        else:
            core.backend_response(ev.ref, *answer)
        self._drive()

    # ------------------------------------------------------------------ timers
    # One timer per connection. After the handshake it is the idle timer, checked lazily:
    # when it fires it looks at when the connection last became idle and sleeps again
    # if that was later, so a response costs no timer rescheduling.
    def _arm(self) -> None:
        core = self.core
        if not core.handshaken:
            return
        if core.busy:
            self.idle_since = None
            return
        if self.idle_since is None or core.answered != self.answered:
            self.idle_since = self.loop.time()
            self.answered = core.answered
        if not self.idle_armed:
            if self.timer is not None:
                self.timer.cancel()
            self.idle_armed = True
            self.timer = self.loop.call_at(self.idle_since + self.timeouts.idle, self._idle_check)

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.idle_armed = False

    def _idle_check(self) -> None:
        self.timer = None
        self.idle_armed = False
        if self.core.closed or self.core.lingering:
            return
        if self.idle_since is None or self.idle_since + self.timeouts.idle > self.loop.time():
            self._arm()  # a request is with the backend, or the connection became idle later
            return
        self._timed_out("idle")

    def _timed_out(self, which: str) -> None:
        self.timer = None
        self.idle_armed = False
        log.debug("closing a client connection: %s timeout", which)
        self.close(graceful=which != "handshake")


#: Methods a request of which may be sent again when a kept-alive backend connection
#: turns out to have been closed by the backend before it answered (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def forward_headers(headers: list, method: bytes, body: bytes, *, tls: bool, client, close: bool) -> list:
    """The request headers a backend gets: the client's end-to-end ones, then ours."""
    out = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
    if client:
        out.append((b"x-forwarded-for", str(client[0]).encode()))
    out.append((b"x-forwarded-proto", b"https" if tls else b"http"))
    if close:
        out.append((b"connection", b"close"))
    if body or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        out.append((b"content-length", str(len(body)).encode()))
    return out


async def proxy(endpoint: tuple[str, int], req: h11.Request, headers: list, body: bytes, *,
                tls: bool, client, upstream: tuple[BackendContexts, BackendTLS, str] | None = None,
                faults: frozenset[str] = frozenset()) -> tuple[int, list, bytes]:
    """Send one request to a backend over HTTP/1.1 and buffer its response.

    Plain HTTP backends are reached over kept-alive connections (``BackendPool``).
    ``upstream`` = (contexts, the policy's TLS settings, SNI) originates TLS on a fresh
    connection per request; the backend's identity is checked after the handshake and
    before the request is sent, so a backend that fails it never sees the request (502).
    """
    out = forward_headers(headers, req.method, body, tls=tls, client=client, close=upstream is not None)
    if upstream is None:
        return await _pool().request(endpoint, req, out, body)
    conn = h11.Connection(h11.CLIENT)
    writer = None
    try:
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


class BackendProtocolError(Exception):
    """The backend's answer is not HTTP/1.1 we can relay (answered with 502, as h11 would refuse it)."""


_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: [^\r\n]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})[ \t]*(?:;[^\r\n]*)?")
MAX_HEAD = 65536


def request_bytes(method: bytes, target: bytes, headers: list, body: bytes) -> bytes:
    """An HTTP/1.1 request; the headers are h11-validated client headers plus our own."""
    return b"".join((method, b" ", target, b" HTTP/1.1\r\n",
                     *[b"%s: %s\r\n" % (k, v) for k, v in headers], b"\r\n", body))


class _BackendConnection(asyncio.Protocol):
    """One plain HTTP/1.1 connection to a backend, reused while both sides keep it alive.

    The answer is parsed here rather than by h11: on the data plane's hot path h11's
    generality (state machine, events, validation of what we wrote ourselves) cost as
    much as the rest of a request. The parser accepts what h11 accepts from a server
    (status line, token header names, values without control characters,
    Content-Length, chunked, read-until-close, 1xx skipped) and refuses the rest.
    """

    def __init__(self, pool: "BackendPool", endpoint: tuple[str, int]):
        self.pool, self.endpoint = pool, endpoint
        self.transport: asyncio.Transport | None = None
        self.done = None  # callback for the exchange in progress
        self.timer: asyncio.TimerHandle | None = None
        self.buf = bytearray()
        self.method = b""
        self.got_bytes = False
        self.eof = False
        self.lost = False
        self.idle_since = 0.0
        self.last = 0.0

    # -- asyncio
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.done is None:  # nothing asked for: a backend talking out of turn
            self.close()
            return
        self.got_bytes = True
        self.last = self.pool.loop.time()
        self.buf += data
        self._parse()

    def eof_received(self):
        self.eof = True
        self._parse()
        return False

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.eof = True
        self.pool.discard(self)
        if self.done is not None:
            self._parse()
        if self.done is not None:
            self._finish(exc or ConnectionResetError("the backend closed the connection"))

    def close(self) -> None:
        self.lost = True
        self.pool.discard(self)
        if self.transport is not None:
            self.transport.close()

    # -- one exchange
    def start(self, data: bytes, method: bytes, done) -> None:
        self.done, self.method, self.got_bytes = done, method, False
        self.buf.clear()
        self.state, self.status, self.headers, self.body = "head", 0, [], bytearray()
        self.last = self.pool.loop.time()
        self.timer = self.pool.loop.call_later(BACKEND_TIMEOUT, self._check_timeout)
        self.transport.write(data)

    def _check_timeout(self) -> None:
        self.timer = None
        if self.done is None:
            return
        left = self.last + BACKEND_TIMEOUT - self.pool.loop.time()
        if left > 0:
            self.timer = self.pool.loop.call_later(left, self._check_timeout)
        else:
            self._finish(asyncio.TimeoutError())

    def _finish(self, result) -> None:
        done, self.done = self.done, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        done(result)

    def _parse(self) -> None:
        try:
            while self.done is not None:
                if not getattr(self, "_step_" + self.state)():
                    return
        except BackendProtocolError as exc:
            self._finish(exc)

    def _step_head(self) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD or (self.eof and buf):
                raise BackendProtocolError("incomplete or oversized response head")
            if self.eof:
                self._finish(None)  # closed without a response
            return False
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[:end + 4]
        m = _STATUS_LINE.fullmatch(lines[0])
        if m is None:
            raise BackendProtocolError(f"bad status line {lines[0][:80]!r}")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
                raise BackendProtocolError(f"bad header line {line[:80]!r}")
            headers.append((name.lower(), value.strip(b" \t")))
        status = int(m.group(2))
        if status < 200:
            if status == 101:
                raise BackendProtocolError("the backend switched protocols")
            return True  # 1xx: the final answer follows
        self.status, self.headers = status, headers
        self.keep_alive = m.group(1) == b"1.1"
        lengths, chunked = set(), False
        for k, v in headers:
            if k == b"connection" and b"close" in [t.strip() for t in v.lower().split(b",")]:
                self.keep_alive = False
            elif k == b"content-length":
                lengths.update(x.strip() for x in v.split(b","))
            elif k == b"transfer-encoding":
                if v.strip().lower() != b"chunked":
                    raise BackendProtocolError(f"unsupported transfer-encoding {v[:40]!r}")
                chunked = True
        if self.method == b"HEAD" or status in (204, 304):
            self.state, self.left = "length", 0
        elif chunked:
            self.state = "chunk_size"
        elif lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise BackendProtocolError(f"bad content-length {sorted(lengths)!r}")
            self.state, self.left = "length", int(next(iter(lengths)))
        else:
            self.state, self.keep_alive = "until_close", False
        return True

    def _step_length(self) -> bool:
        buf = self.buf
        if len(buf) < self.left:
            if self.eof:
                raise BackendProtocolError("the backend closed in the middle of the body")
            return False
        self.body += buf[:self.left]
        del buf[:self.left]
        self._complete()
        return False

    def _step_chunk_size(self) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n")
        if end < 0:
            if self.eof or len(buf) > 1024:
                raise BackendProtocolError("bad chunk header")
            return False
        m = _CHUNK_SIZE.fullmatch(bytes(buf[:end]))
        if m is None:
            raise BackendProtocolError(f"bad chunk header {bytes(buf[:end])[:40]!r}")
        del buf[:end + 2]
        self.left = int(m.group(1), 16)
        self.state = "chunk_data" if self.left else "trailers"
        return True

    def _step_chunk_data(self) -> bool:
        buf = self.buf
        if len(buf) < self.left + 2:
            if self.eof:
                raise BackendProtocolError("the backend closed in the middle of a chunk")
            return False
        if buf[self.left:self.left + 2] != b"\r\n":
            raise BackendProtocolError("chunk not followed by CRLF")
        self.body += buf[:self.left]
        del buf[:self.left + 2]
        self.state = "chunk_size"
        return True

    def _step_trailers(self) -> bool:
        buf = self.buf
        if buf[:2] == b"\r\n":
            del buf[:2]
            self._complete()
            return False
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if self.eof or len(buf) > MAX_HEAD:
                raise BackendProtocolError("incomplete trailers")
            return False
        del buf[:end + 4]  # trailers are dropped, as h11 hands them to no one here
        self._complete()
        return False

    def _step_until_close(self) -> bool:
        self.body += self.buf
        self.buf.clear()
        if self.eof:
            self._complete()
        return False

    def _complete(self) -> None:
        reusable = self.keep_alive and not self.buf and not self.eof
        self._finish((self.status, self.headers, bytes(self.body), reusable))


class BackendPool:
    """Idle kept-alive connections to plain HTTP backends, per endpoint.

    A connection goes back to the pool only when both sides left it reusable (HTTP/1.1,
    no ``Connection: close``, a framed body); the backend may still close it while it
    waits, so a request that finds its reused connection closed before a byte of an
    answer is sent again on a fresh one, and only if its method is idempotent (others
    never take a reused connection).
    """

    MAX_IDLE_PER_ENDPOINT = 32
    IDLE_SECONDS = 15.0

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.idle: dict[tuple[str, int], list[_BackendConnection]] = {}
        self.sweeping = False

    def take(self, endpoint: tuple[str, int]) -> _BackendConnection | None:
        conns = self.idle.get(endpoint)
        while conns:
            conn = conns.pop()
            if not conn.lost and not conn.transport.is_closing():
                return conn
        return None

    def put(self, conn: _BackendConnection) -> None:
        if conn.lost:
            return
        conn.idle_since = self.loop.time()
        conns = self.idle.setdefault(conn.endpoint, [])
        conns.append(conn)
        if len(conns) > self.MAX_IDLE_PER_ENDPOINT:
            conns[0].close()
        if not self.sweeping:
            self.sweeping = True
            self.loop.call_later(self.IDLE_SECONDS / 2, self._sweep)

    def discard(self, conn: _BackendConnection) -> None:
        conns = self.idle.get(conn.endpoint)
        if conns and conn in conns:
            conns.remove(conn)

    def _sweep(self) -> None:
        limit = self.loop.time() - self.IDLE_SECONDS
        for conns in list(self.idle.values()):
            for conn in [c for c in conns if c.idle_since < limit]:
                conn.close()
        self.idle = {k: v for k, v in self.idle.items() if v}
        self.sweeping = bool(self.idle)
        if self.sweeping:
            self.loop.call_later(self.IDLE_SECONDS / 2, self._sweep)

    def send(self, endpoint: tuple[str, int], method: bytes, target: bytes, headers: list, body: bytes,
             done) -> None:
        """Send a request; ``done((status, headers, body))`` is called once, also for failures (502)."""
        data = request_bytes(method, target, headers, body)

        def attempt(reuse: bool) -> None:
            conn = self.take(endpoint) if reuse else None
            if conn is None:
                self.loop.create_task(connect())
            else:
                conn.start(data, method, lambda result: finished(result, conn, True))

        async def connect() -> None:
            try:
                _, conn = await asyncio.wait_for(self.loop.create_connection(
                    lambda: _BackendConnection(self, endpoint), *endpoint), BACKEND_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                log.info("backend %s:%s failed: %r", endpoint[0], endpoint[1], exc)
                done((502, [], b"backend unavailable\n"))
                return
            conn.start(data, method, lambda result: finished(result, conn, False))

        def finished(result, conn: _BackendConnection, reused: bool) -> None:
            if isinstance(result, tuple):
                status, response_headers, payload, reusable = result
                if reusable:
                    self.put(conn)
                else:
                    conn.close()
                done((status, response_headers, payload))
                return
            conn.close()
            if reused and not conn.got_bytes and not isinstance(result, asyncio.TimeoutError):
                attempt(False)  # the backend had closed the idle connection: once more on a fresh one
                return
            if result is None:
                done((502, [], b"backend closed without a response\n"))
            else:
                log.info("backend %s:%s failed: %r", endpoint[0], endpoint[1], result)
                done((502, [], b"backend unavailable\n"))

        attempt(method in IDEMPOTENT)

    async def request(self, endpoint: tuple[str, int], req: h11.Request, headers: list,
                      body: bytes) -> tuple[int, list, bytes]:
        fut = self.loop.create_future()
        self.send(endpoint, req.method, req.target, headers, body, fut.set_result)
        return await fut


_pools: dict[asyncio.AbstractEventLoop, BackendPool] = {}


def _pool() -> BackendPool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        _pools.clear()  # one loop per process; a test that runs several loops keeps only the current one
        pool = _pools[loop] = BackendPool(loop)
    return pool
