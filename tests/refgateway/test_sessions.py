"""Session scopes and session contexts (refgateway._tls): what a resumed session is tied to.

The behaviour on the wire (which sessions are resumed, refused, served) is shown by
scenarios/test_frontend_resumption.py against the running gateway and its three faults.
"""

from __future__ import annotations

from refgateway._core import on_sni, on_verify
from refgateway._tls import MAX_CLIENT_CHAIN_DEPTH, ContextCache, session_scope
from refgateway.translator import ALLOW_INSECURE_FALLBACK, ALLOW_VALID_ONLY, Validation

CA1, CA2 = b"-----BEGIN CERTIFICATE-----\nca one\n", b"-----BEGIN CERTIFICATE-----\nca two\n"


def scope(v, faults=frozenset(), depth=MAX_CLIENT_CHAIN_DEPTH):
    return session_scope(v, frozenset(faults), depth)


def test_the_scope_changes_with_everything_a_verdict_depends_on():
    base = Validation(ALLOW_VALID_ONLY, (CA1,))
    variants = [None, Validation(ALLOW_VALID_ONLY, (CA2,)), Validation(ALLOW_VALID_ONLY, (CA1, CA2)),
                Validation(ALLOW_INSECURE_FALLBACK, (CA1,)),
                Validation(ALLOW_VALID_ONLY, (CA1,), pin_sans=frozenset({"a.example"})),
                Validation(ALLOW_VALID_ONLY, (CA1,), pin_hashes=frozenset({"00" * 32}))]
    scopes = {scope(v) for v in [base, *variants]} | {scope(base, depth=2)}
    assert len(scopes) == len(variants) + 2
    assert scope(base) == scope(Validation(ALLOW_VALID_ONLY, (CA1,)))
    assert scope(Validation(ALLOW_VALID_ONLY, (CA1, CA2))) == scope(Validation(ALLOW_VALID_ONLY, (CA2, CA1)))
    assert len(scope(base)) == 32  # SSL_MAX_SID_CTX_LENGTH


def test_a_changed_scope_gets_a_new_session_context_and_the_fault_shares_one():
    cache = ContextCache(faults=frozenset(), sni_callback=on_sni, verify_callback=on_verify)
    one, two = scope(Validation(ALLOW_VALID_ONLY, (CA1,))), scope(Validation(ALLOW_VALID_ONLY, (CA2,)))
    first = cache.session_context([one, scope(None)])
    assert cache.session_context([scope(None), one, one]) is first  # the set of scopes decides
    assert cache.session_context([two, scope(None)]) is not first  # new ticket keys, empty cache
    cache.retain([], [first])
    assert cache.session_context([one, scope(None)]) is first

    shared = ContextCache(faults=frozenset({"sessions-across-listeners"}), sni_callback=on_sni,
                          verify_callback=on_verify)
    assert shared.session_context([one]) is shared.session_context([two])


# -- through the connection core (a pyOpenSSL client resuming its session) ----------------

import pytest  # noqa: E402
from OpenSSL import SSL  # noqa: E402

from refgateway._tls import SessionMemory  # noqa: E402

from .sansio import Pair, Pki, client_context, make_site  # noqa: E402
from .test_core import backend_headers, get  # noqa: E402


def reused(pair) -> bool:
    from OpenSSL._util import lib  # pyOpenSSL has no SSL_session_reused
    return bool(lib.SSL_session_reused(pair.client._ssl))


@pytest.fixture(scope="module")
def pki():
    return Pki()


def resuming_site(pki, mode=ALLOW_VALID_ONLY):
    """make_site's port (``strict``: client validation, ``open``: none) with what
    refgateway._server gives a site: scopes, the session memory, the session context."""
    site = make_site(pki, mode=mode)
    cache = ContextCache(faults=frozenset(), sni_callback=on_sni, verify_callback=on_verify)
    site.scopes = {ls.name: cache.scope(ls) for ls in site.port.listeners}
    site.sessions = SessionMemory(frozenset())
    site.base_context = cache.session_context(list(site.scopes.values()))
    return site


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION], ids=["TLSv1.2", "TLSv1.3"])
def test_a_session_resumes_on_its_listener_and_not_under_a_stricter_one(pki, version):
    site = resuming_site(pki)
    ctx = client_context(pki, version=version)
    first = Pair(site, ctx)
    first.pump(get("strict.example.com"))
    session = first.client.get_session()

    again = Pair(site, ctx)
    again.client.set_session(session)
    again.pump(get("strict.example.com"))
    assert reused(again) and again.alert is None
    assert backend_headers(again.proxied[0])["x-refgateway-client-verify"] == "SUCCESS"

    other = Pair(site, ctx, sni="open.example.com")  # a session made where nothing is verified
    other.pump(get("open.example.com"))
    stricter = Pair(site, ctx)
    stricter.client.set_session(other.client.get_session())
    stricter.pump(get("strict.example.com"))
    if version == SSL.TLS1_3_VERSION:  # refused in the handshake
        assert stricter.alert is not None and not stricter.proxied
    else:  # OpenSSL keeps a TLS 1.2 session on the listener of its original SNI: 421
        assert not stricter.proxied and b" 421 " in bytes(stricter.plain)


def test_fallback_resumes_an_expired_chain_reported_expired(pki):
    site = resuming_site(pki, mode=ALLOW_INSECURE_FALLBACK)
    ctx = client_context(pki, version=SSL.TLS1_3_VERSION)
    first = Pair(site, ctx)
    first.pump(get("strict.example.com"))
    # As if the chain had expired since: the memory's notAfter is in the past.
    site.sessions._entries.update({k: (b"20000101000000Z", e) for k, (_, e) in site.sessions._entries.items()})
    again = Pair(site, ctx)
    again.client.set_session(first.client.get_session())
    again.pump(get("strict.example.com"))
    assert reused(again)
    assert backend_headers(again.proxied[0])["x-refgateway-client-verify"] == "FAILED:expired"
