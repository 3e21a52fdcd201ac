"""Drive refgateway's connection core (refgateway._core.EdgeCore) without sockets.

A real pyOpenSSL client over memory BIOs talks to a real EdgeCore; the only stand-in is
the backend: a ProxyRequest event is answered with the request it carried, as JSON, the
way the echo backends of the suite answer. Used by test_core.py and test_fuzz.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL, crypto

from refgateway._core import Close, EdgeCore, Linger, ProxyRequest, on_sni, on_verify
from refgateway._tls import ContextCache
from refgateway.translator import (ALLOW_VALID_ONLY, Backend, Listener, Port, Rule,
                                   Validation)

BACKEND = ("127.0.0.1", 9)  # never connected: the test answers ProxyRequest events itself


@dataclass
class Pki:
    server_ca: trustme.CA = field(default_factory=trustme.CA)
    client_ca: trustme.CA = field(default_factory=trustme.CA)
    other_ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self):
        self.server = self.server_ca.issue_cert("example.com", "*.example.com")
        self.client = self.client_ca.issue_cert("client.example.com")
        self.stranger = self.other_ca.issue_cert("client.example.com")


def _rule() -> Rule:
    return Rule(hostnames=(), path_type="PathPrefix", path="/", method=None, headers=(),
                backends=(Backend(weight=1, endpoints=(BACKEND,)),), order=(0,))


def make_site(pki: Pki, *, mode: str | None = ALLOW_VALID_ONLY, faults: frozenset[str] = frozenset(),
              servable: bool = True, protocol: str = "HTTPS"):
    """A port with two listeners: ``strict.example.com`` (client validation ``mode``) and
    ``open.example.com`` (none), both serving ``*.example.com``; one route to BACKEND each."""
    chain = b"".join(p.bytes() for p in pki.server.cert_chain_pems)
    key = pki.server.private_key_pem.bytes()
    v = None if mode is None else Validation(mode=mode, ca_pems=(pki.client_ca.cert_pem.bytes(),))
    tls = dict(cert_pem=chain, key_pem=key) if protocol == "HTTPS" else {}
    listeners = (
        Listener(name="strict", hostname="strict.example.com", protocol=protocol, servable=servable,
                 validation=v if protocol == "HTTPS" else None, rules=(_rule(),), **tls),
        Listener(name="open", hostname="open.example.com", protocol=protocol, servable=True, rules=(_rule(),),
                 **tls),
    )
    port = Port(namespace="ns1", gateway="gw", port=443 if protocol == "HTTPS" else 80, protocol=protocol,
                listeners=listeners)
    cache = ContextCache(faults=faults, sni_callback=on_sni, verify_callback=on_verify)
    contexts = {ls.name: cache.context(ls) for ls in listeners if ls.servable and protocol == "HTTPS"}
    return SimpleNamespace(port=port, contexts=contexts, base_context=next(iter(contexts.values()), None),
                           faults=faults)


def client_context(pki: Pki, *, version: int | None = None, cert: str | None = "client",
                   alpn: tuple[bytes, ...] = (b"http/1.1",)) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if version is not None:
        ctx.set_min_proto_version(version)
        ctx.set_max_proto_version(version)
    ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(x509.load_pem_x509_certificate(pki.server_ca.cert_pem.bytes())))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *a: bool(a[-1]))
    if cert is not None:
        leaf = getattr(pki, cert)
        ctx.use_certificate(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()))
        ctx.use_privatekey(load_pem_private_key(leaf.private_key_pem.bytes(), None))
    if alpn:
        ctx.set_alpn_protos(list(alpn))
    return ctx


def echo(ev: ProxyRequest) -> tuple[int, list, bytes]:
    body = json.dumps({"method": ev.request.method.decode(), "path": ev.request.target.decode(),
                       "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in ev.headers],
                       "body": ev.body.decode("latin-1")}).encode()
    if ev.request.method == b"HEAD":  # as a backend answers HEAD: the headers, no body
        return 200, [(b"content-type", b"application/json")], b""
    return 200, [(b"content-type", b"application/json")], body


class Pair:
    """A TLS client (memory BIOs) connected to an EdgeCore; ``pump()`` moves bytes both ways."""

    def __init__(self, site, ctx: SSL.Context | None = None, *, sni: str | None = "strict.example.com",
                 answer=echo):
        self.core = EdgeCore(site)
        self.answer = answer
        self.events: list = []  # every event the core emitted
        self.proxied: list[ProxyRequest] = []
        self.client: SSL.Connection | None = None
        self.plain = bytearray()  # what the client read (decrypted)
        self.alert: str | None = None  # the client's SSL.Error text, if any
        self.client_closed = False
        if ctx is not None:
            self.client = SSL.Connection(ctx, None)
            self.client.set_connect_state()
            if sni:
                self.client.set_tlsext_host_name(sni.encode())

    @property
    def closed(self) -> bool:
        return any(isinstance(e, Close) for e in self.events)

    @property
    def lingering(self) -> bool:
        return any(isinstance(e, Linger) for e in self.events)

    def feed(self, data: bytes) -> bytes:
        """Raw bytes to the core; returns its raw output (and handles its events)."""
        self.core.receive_data(data)
        return self._drain()

    def _drain(self) -> bytes:
        out = bytearray()
        while True:
            out += self.core.data_to_send()
            ev = self.core.next_event()
            if ev is None:
                return bytes(out)
            self.events.append(ev)
            if isinstance(ev, ProxyRequest):
                self.proxied.append(ev)
                if self.answer is not None:
                    self.core.backend_response(ev.ref, *self.answer(ev))

    def respond(self, ref: int, status: int, headers: list, body: bytes) -> None:
        """Answer a ProxyRequest by hand (``answer=None``) and let the client read it."""
        self.core.backend_response(ref, status, headers, body)
        out = self._drain()
        if out and self.client is not None:
            self.client.bio_write(out)
        self.pump()

    def pump(self, send: bytes = b"", rounds: int = 50) -> None:
        """Handshake, send ``send`` as application data, read everything until quiet."""
        c = self.client
        pending = send
        for _ in range(rounds):
            moved = False
            if not self.alert:
                try:
                    c.do_handshake()
                    if pending:
                        c.sendall(pending)
                        pending = b""
                except SSL.WantReadError:
                    pass
                except SSL.Error as exc:
                    self.alert = str(exc)
            try:
                out = c.bio_read(1 << 20)
            except SSL.WantReadError:
                out = b""
            if out:
                moved = True
                back = self.feed(out)
            else:
                back = self._drain()
            if back:
                moved = True
                c.bio_write(back)
            if not self.alert:
                while True:
                    try:
                        self.plain += c.recv(1 << 20)
                    except SSL.WantReadError:
                        break
                    except SSL.ZeroReturnError:
                        self.client_closed = True
                        break
                    except SSL.Error as exc:
                        self.alert = str(exc)
                        break
            if not moved:
                return

    @property
    def handshaken(self) -> bool:
        return self.core.handshaken
