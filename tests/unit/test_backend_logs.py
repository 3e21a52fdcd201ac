"""Request logs of backends the harness does not run itself (--backend-mode=deployment)."""

from mtls_conformance.kubernetes import parse_echo_log
from mtls_conformance.fixtures.nginx import parse_access_log

# What echo-basic prints (conformance/echo-basic/echo-basic.go): start-up lines, then one
# line per request its echo handler answers.
ECHO_BASIC = """\
Starting server, listening on port 3000 (http)
Starting server, listening on port 3001 (h2c)
Starting server, listening on port 8443 (https)
Echoing back request made to /backend-tls?x=1 to client (10.244.0.5:51234)
established websocket connection 10.244.0.5:1
Echoing back request made to / to client ([fd00::5]:443)
"""


def test_echo_basic_log_gives_path_and_client_but_not_whether_tls_was_used():
    assert parse_echo_log(ECHO_BASIC) == [
        {"path": "/backend-tls?x=1", "remote": "10.244.0.5:51234", "tls": None},
        {"path": "/", "remote": "[fd00::5]:443", "tls": None},
    ]
    assert parse_echo_log("") == []


def test_nginx_pod_log_skips_its_error_log_lines():
    text = ('2026/11/23 10:00:00 [notice] 1#1: using the "epoll" event method\n'
            '{"method":"GET","path":"/a","host":"h","status":"200","version":"TLSv1.3",'
            '"serverName":"abc.example.com","clientVerify":"SUCCESS"}\n'
            '{"method":"GET","path":"/b","host":"h","status":"400","version":"","serverName":"",'
            '"clientVerify":""}\n')
    assert parse_access_log(text) == [
        {"method": "GET", "path": "/a", "host": "h", "status": "200",
         "tls": {"version": "TLSv1.3", "serverName": "abc.example.com", "clientVerify": "SUCCESS"}},
        {"method": "GET", "path": "/b", "host": "h", "status": "400"},
    ]


def test_our_echo_image_log_has_the_whole_answer():
    text = ('Starting server, listening on port 3000 (http)\n'
            '{"request": {"path": "/a", "namespace": "ns"}}\n'
            '{"request": {"path": "/b", "tls": {"version": "TLSv1.3", "serverName": "abc.example.com"}}}\n')
    assert parse_echo_log(text) == [
        {"path": "/a", "namespace": "ns"},
        {"path": "/b", "tls": {"version": "TLSv1.3", "serverName": "abc.example.com"}}]


def test_a_trailing_log_is_read_once_it_has_settled():
    """A log line that lands after the answer (a pod's log, nginx's access log) is counted."""
    import time

    from mtls_conformance.target import settled

    start = time.monotonic()
    reads = []

    def read():
        reads.append(1)
        # The request's line appears 0.3 s after the first read.
        return ["earlier"] + (["late"] if time.monotonic() - start > 0.3 else [])

    assert settled(read, quiet=0.5, timeout=5) == ["earlier", "late"]
    assert len(reads) > 2


def test_a_log_that_never_settles_is_read_within_the_bound():
    import itertools
    import time

    from mtls_conformance.target import settled

    counter = itertools.count()
    start = time.monotonic()
    assert settled(lambda: [next(counter)], quiet=1.0, timeout=0.6)
    assert time.monotonic() - start < 1.5


def test_only_a_missing_capability_is_a_skip():
    from mtls_conformance.target import SystemRootsUnavailable, TargetCannot, TargetError

    assert issubclass(TargetCannot, TargetError) and issubclass(SystemRootsUnavailable, TargetCannot)


def test_the_probe_id_is_in_both_echo_log_formats():
    """The id rides in the request target, the one thing both logs show (echo-basic logs
    ``r.RequestURI`` and no header; our echo image logs its whole answer)."""
    import json

    from mtls_conformance.client import probe_id_of, with_probe_id
    from mtls_conformance.echo import EchoServer
    from mtls_conformance.probe import probe

    target = with_probe_id("/orders?dry=1", "0123456789abcdef")
    assert target == "/orders?dry=1&mtls-probe-id=0123456789abcdef"
    with EchoServer(namespace="ns", service="echo", pod="echo-0") as server:
        probe(server.address, sni=None, host="h", path=target, plaintext=True, method="POST", body=b"{}")
        answer = server.requests[0]
    ours = parse_echo_log("Starting server, listening on port 3000 (http)\n" + json.dumps({"request": answer}) + "\n")
    basic = parse_echo_log(f"Echoing back request made to {target} to client (10.244.0.5:51234)\n")
    assert [probe_id_of(e["path"]) for e in ours + basic] == ["0123456789abcdef"] * 2
    assert ours[0]["method"] == "POST"
    assert probe_id_of("/orders?dry=1") is None and probe_id_of(None) is None
