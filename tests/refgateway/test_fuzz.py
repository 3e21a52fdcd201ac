"""Malformed input against refgateway's edge: the sans-IO core, then a live listener.

After every case the connection must end (once the client ends its side) without an
exception, and the same gateway must still answer a well-formed mTLS request. The
budget is small for CI; a manual run sets it with REFGATEWAY_FUZZ_CASES /
REFGATEWAY_FUZZ_SECONDS (and REFGATEWAY_FUZZ_SEED to replay), e.g.

    REFGATEWAY_FUZZ_CASES=20000 REFGATEWAY_FUZZ_SECONDS=600 pytest tests/refgateway/test_fuzz.py
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import time

import pytest
from OpenSSL import SSL

from refgateway._core import EdgeCore

from . import fuzzcases
from .sansio import Pair, Pki, client_context, make_site
from .test_e2e import https_get, mtls_setup  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def core_pki():
    return Pki()


def first_flight(ctx: SSL.Context, sni: bytes = b"strict.example.com") -> bytes:
    c = SSL.Connection(ctx, None)
    c.set_connect_state()
    c.set_tlsext_host_name(sni)
    try:
        c.do_handshake()
    except SSL.WantReadError:
        pass
    return c.bio_read(1 << 16)


def _chunks(rng: random.Random, data: bytes):
    """The data split at random points: parsers must not depend on how bytes arrive."""
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 5, 100, 4096, len(data)])
        yield data[pos:pos + n]
        pos += n


def _well_formed_request_is_answered(site, pki) -> None:
    p = Pair(site, client_context(pki))
    p.pump(b"GET /ok HTTP/1.1\r\nHost: strict.example.com\r\n\r\n")
    assert p.alert is None and bytes(p.plain).startswith(b"HTTP/1.1 200 "), (p.alert, bytes(p.plain[:200]))


def test_fuzz_core(core_pki):
    pki = core_pki
    site = make_site(pki)
    s = fuzzcases.seed()
    rng = random.Random(s)
    count, seconds = fuzzcases.budget(300, 3.0)
    hello = first_flight(client_context(pki, alpn=(b"h2", b"http/1.1")))
    ran = 0
    for name, stage, data in fuzzcases.cases(rng, hello, count, seconds):
        where = f"case {name} (REFGATEWAY_FUZZ_SEED={s}): {data[:80]!r}"
        if stage == "raw":
            p = Pair(site, None)
            for chunk in _chunks(rng, data):
                out = p.feed(chunk)
                assert len(out) < 1 << 20, where
        else:
            alpn = (b"h2",) if stage == "h2" else (b"http/1.1",)
            p = Pair(site, client_context(pki, alpn=alpn))
            p.pump()
            assert p.handshaken, where
            if stage == "after-handshake-raw":
                for chunk in _chunks(rng, data):
                    p.feed(chunk)
            else:
                p.pump(data)
        p.core.receive_data(b"")  # the client ends its side: the connection must end too
        p._drain()
        if p.lingering and not p.closed:
            p.core.receive_data(b"")
            p._drain()
        assert p.closed, where
        _well_formed_request_is_answered(site, pki)
        ran += 1
    assert ran >= min(count, 20), f"only {ran} cases ran in {seconds}s"


def test_fuzz_core_does_not_buffer_without_bound(core_pki):
    """A never-ending ClientHello record and a never-ending HTTP/1.1 header are cut off."""
    site = make_site(core_pki)
    core = EdgeCore(site)
    core.receive_data(fuzzcases.record(22, b"\x01" + b"\x00" * 4000, length=0xFFFF))
    core.receive_data(b"\x00" * 70000)
    assert core.lingering or core.closed
    p = Pair(site, client_context(core_pki))
    p.pump(b"GET / HTTP/1.1\r\nHost: strict.example.com\r\n" + b"X: y\r\n" * 20000)
    assert p.closed and bytes(p.plain).startswith(b"HTTP/1.1 400 ")


# --------------------------------------------------------------------------- live listener


def _read_until_closed(sock: socket.socket, deadline: float) -> bool:
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionError, OSError):
            return True  # a reset ends it as well
    return False


def _live_case(port: int, pki: dict, stage: str, data: bytes) -> bool:
    """Send one case; True when the gateway ended the connection after our end of stream."""
    deadline = time.monotonic() + 10
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if stage == "raw":
            target = raw
        else:
            ctx = ssl.create_default_context(cafile=str(pki["files"]["server-ca"]))
            ctx.load_cert_chain(*map(str, pki["files"]["client"]))
            ctx.set_alpn_protocols(["h2"] if stage == "h2" else ["http/1.1"])
            tls = ctx.wrap_socket(raw, server_hostname="example.com")
            if stage == "after-handshake-raw":
                target = socket.socket(fileno=os.dup(tls.fileno()))
                tls.detach()
            else:
                tls.sendall(data)
                data = b""
                target = socket.socket(fileno=os.dup(tls.fileno()))
                tls.detach()
        try:
            if data:
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except (ConnectionError, OSError):
            return True  # the gateway already closed: fine
        return _read_until_closed(target, deadline)
    finally:
        raw.close()
        if stage != "raw":
            target.close()


def test_fuzz_live_listener(mtls_setup, start_gateway, pki):
    gw = start_gateway()
    gw.wait_condition("Gateway", "mtls", "Programmed")
    port = gw.port("mtls", 443)
    s = fuzzcases.seed()
    rng = random.Random(s)
    count, seconds = fuzzcases.budget(40, 8.0)
    count = max(1, count // 8)  # a socket per case is much slower than the core
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_alpn_protos([b"h2", b"http/1.1"])
    hello = first_flight(ctx, b"example.com")
    ran = 0
    for name, stage, data in fuzzcases.cases(rng, hello, count, seconds):
        where = f"case {name} (REFGATEWAY_FUZZ_SEED={s}): {data[:80]!r}"
        assert _live_case(port, pki, stage, data), f"the gateway kept the connection open: {where}"
        status, _ = https_get(port, pki, cert="client")
        assert status == 200, where
        ran += 1
    assert gw.proc.poll() is None, gw.log()
    assert ran >= 1
    assert "Traceback" not in gw.log(), gw.log()[-3000:]
