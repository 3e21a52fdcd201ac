"""Request logs of backends the harness does not run itself (--backend-mode=deployment)."""

from conformance.kubernetes import parse_echo_log
from fixtures.nginx import parse_access_log

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
