"""Where a rejection happened is recorded, not judged; --strict-rejection changes only the judgement."""

from __future__ import annotations

from mtls_conformance import client
from mtls_conformance.expect import judge_rejected
from mtls_conformance.probe import Rejection, Response

NGINX_444_STYLE = Response(400, "Bad Request", (("content-type", "text/html"),), b"<html>400</html>", None)
FIRST_READ = Rejection(phase="first-read", kind="alert", alert="certificate required", detail="", tls=None)
HANDSHAKE_CLOSE = Rejection(phase="handshake", kind="closed", alert=None, detail="", tls=None)


def test_http_status_counts_only_where_the_profile_says_and_never_when_strict():
    assert judge_rejected(NGINX_444_STYLE, rejection_statuses=frozenset({400})) is None
    assert judge_rejected(NGINX_444_STYLE) == "got HTTP 400 Bad Request"
    strict = judge_rejected(NGINX_444_STYLE, rejection_statuses=frozenset({400}), strict=True)
    assert strict == "got HTTP 400 Bad Request (--strict-rejection: only a transport-level rejection counts)"


def test_transport_rejections_count_under_both_rules():
    for outcome in (FIRST_READ, HANDSHAKE_CLOSE):
        assert judge_rejected(outcome) is None
        assert judge_rejected(outcome, strict=True) is None


def test_where_rejected_names_phase_kind_and_alert():
    assert client.where_rejected(FIRST_READ) == "first-read alert 'certificate required'"
    assert client.where_rejected(HANDSHAKE_CLOSE) == "handshake closed"
    assert client.where_rejected(NGINX_444_STYLE) == "HTTP 400 after the handshake"


def test_rejections_are_recorded_on_the_running_test_with_the_rule():
    properties: list = []
    token = client.recording.set(properties)
    try:
        client._record_rejection("listener port 443 (SNI a)", FIRST_READ, strict=True)
        client._record_rejection("listener port 443 (SNI a)", NGINX_444_STYLE, strict=True)
    finally:
        client.recording.reset(token)
    assert properties == [
        (client.REJECTION_RULE_PROPERTY, "transport-level only (--strict-rejection)"),
        (client.REJECTION_PROPERTY, "listener port 443 (SNI a): first-read alert 'certificate required'"),
        (client.REJECTION_PROPERTY, "listener port 443 (SNI a): HTTP 400 after the handshake"),
    ]
    client._record_rejection("outside a test", FIRST_READ, strict=False)  # no test running: no-op
