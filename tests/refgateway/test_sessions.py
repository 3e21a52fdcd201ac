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
