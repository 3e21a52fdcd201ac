"""refgateway under connection pressure: handshake and idle timeouts, 500 clients at once.

The timeouts are set short on the command line (--handshake-timeout, --idle-timeout) so
that a half-open or slowloris connection is seen being closed; every bound below is a
deadline for something to happen, never a measurement of how fast it happened.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from OpenSSL import SSL

from .conftest import _Echo, gateway, gateway_class, http_route, https_listener, service_objects, tls_secret
from .conftest import ca_configmap, validation
from .test_e2e import mtls_setup  # noqa: F401  (fixture)
from .test_fuzz import first_flight

HANDSHAKE, IDLE = 0.5, 2.0
ARGS = ("--handshake-timeout", str(HANDSHAKE), "--idle-timeout", str(IDLE))
DEADLINE = 15.0  # far below the defaults (10 s, 60 s) plus the time a loaded machine may add


@pytest.fixture
def short(mtls_setup, start_gateway):
    gw = start_gateway(args=ARGS)
    gw.wait_condition("Gateway", "mtls", "Programmed")
    return gw.port("mtls", 443)


def closed_within(sock: socket.socket, seconds: float, *, send=None) -> float | None:
    """Seconds until the peer ended the connection (EOF or reset), else None.

    ``send`` is called about every 0.1 s meanwhile (a slow client), until it fails.
    """
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < seconds:
        if send is not None:
            try:
                send()
            except OSError:
                send = None
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def tls_client(port: int, pki: dict) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki["files"]["server-ca"]))
    ctx.load_cert_chain(*map(str, pki["files"]["client"]))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="example.com")


def test_half_open_connection_is_closed(short):
    with socket.create_connection(("127.0.0.1", short)) as s:
        took = closed_within(s, DEADLINE)
    assert took is not None, "a connection that never sent a byte was kept open"
    assert took >= HANDSHAKE * 0.8


def test_client_hello_trickled_byte_by_byte_is_cut_off(short):
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    hello = iter(first_flight(ctx, b"example.com"))
    with socket.create_connection(("127.0.0.1", short)) as s:
        took = closed_within(s, DEADLINE, send=lambda: s.send(bytes([next(hello)])))
    assert took is not None, "a ClientHello sent one byte per 0.1 s kept the connection open"


def test_request_header_trickled_slowloris_style_is_cut_off(short, pki):
    tls = tls_client(short, pki)
    tls.sendall(b"GET / HTTP/1.1\r\nHost: example.com\r\n")
    with tls:
        took = closed_within(tls, DEADLINE, send=lambda: tls.sendall(b"X-Slow: 1\r\n"))
    assert took is not None, "a request header growing by one line per 0.1 s kept the connection open"
    assert took >= IDLE * 0.8


def test_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not(short, pki):
    request = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    with tls_client(short, pki) as tls:
        # A request every 0.2 s for 2.5 idle timeouts: the idle timer restarts on each response.
        end = time.monotonic() + IDLE * 2.5
        answered = 0
        tls.settimeout(10)
        while time.monotonic() < end:
            tls.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = tls.recv(65536)
                assert chunk, f"closed after {answered} answered requests although it was busy"
                head += chunk
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += tls.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 ")
            answered += 1
            time.sleep(0.2)
        took = closed_within(tls, DEADLINE)
    assert took is not None, "an idle keep-alive connection was kept open"


# --------------------------------------------------------------------------- 500 at once


class _BigBacklogServer(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


@pytest.fixture
def crowd_backend():
    srv = _BigBacklogServer(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


async def _one(port: int, ctx: ssl.SSLContext, i: int) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="example.com",
                                                   ssl_handshake_timeout=120)
    try:
        writer.write(f"GET /c{i} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_500_concurrent_mtls_handshakes_all_complete(cluster, start_gateway, pki, crowd_backend):
    for obj in [gateway_class(), tls_secret("server-cert", pki["server"]), ca_configmap("client-ca", pki["client_ca"]),
                *service_objects(crowd_backend)]:
        cluster.apply(obj)
    cluster.apply(gateway("mtls", [https_listener("https", 443)], {"default": validation("client-ca")}))
    cluster.apply(http_route("echo", "mtls"))
    gw = start_gateway()
    gw.wait_condition("Gateway", "mtls", "Programmed")
    port = gw.port("mtls", 443)
    ctx = ssl.create_default_context(cafile=str(pki["files"]["server-ca"]))
    ctx.load_cert_chain(*map(str, pki["files"]["client"]))

    async def crowd():
        return await asyncio.wait_for(asyncio.gather(*(_one(port, ctx, i) for i in range(500)),
                                                     return_exceptions=True), 300)

    results = asyncio.run(crowd())
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of 500 failed, e.g. {failed[:3]!r}"
    assert sorted(echo["path"] for _, echo in results) == sorted(f"/c{i}" for i in range(500))
    assert {status for status, _ in results} == {200}
    assert {echo["headers"]["x-refgateway-client-verify"] for _, echo in results} == {"SUCCESS"}
