"""The opt-in real-host checks of test_backend_tls_external, against a local stand-in host.

``--external-backend-host`` needs the internet, so the suite's own runs (and the
selfcheck) skip those tests. Here a local HTTPS server plays the public host: its CA is
the only one in the ``--system-ca-bundle`` given to refgateway, and like a host behind
virtual hosting it answers 200 only for ``GET /`` under its own name. The scenario must
pass against it and fail when what comes back is a 4xx or 5xx, whoever made it; the
judges are also checked on answers a gateway makes by itself.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from pathlib import Path

import pytest
import trustme

from mtls_conformance.probe import Response
from tests.selfcheck.runner import FAST
from testkit.child_run import refgateway_command, run_pytest
from testkit.procs import ROOT

MODULE = ROOT / "mtls_conformance" / "scenarios" / "test_backend_tls_external.py"
REAL = "test_backend_tls_external.py::test_real_external_host_with_system_roots"
CA_REF = "test_backend_tls_external.py::test_real_external_host_is_refused_with_a_private_ca_ref"
NAME = "localhost"


class StandIn:
    """An HTTPS host for NAME on a loopback port; ``answer`` decides what GET / on NAME gets."""

    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        self.bundle = directory / "system-roots.pem"
        self.bundle.write_bytes(ca.cert_pem.bytes())
        self.answer = (200, b"<html>the stand-in host's root</html>\n")
        self.seen: list[tuple[str, str]] = []  # (path, Host)
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.headers.get("Host") or ""
                path = self.path.split("?", 1)[0]  # every probe carries its id in the query
                standin.seen.append((path, host))
                if path == "/" and host.rsplit(":", 1)[0] == NAME:
                    status, body = standin.answer
                else:
                    status, body = 404, b"<html>no such page on this host</html>\n"
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(NAME).configure_cert(context)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def standin(tmp_path):
    s = StandIn(tmp_path)
    yield s
    s.close()


def run_opt_in(tmp_path: Path, standin: StandIn, *, port: int | None = None) -> tuple[dict[str, str], dict[str, str], str]:
    # A fixed system trust store: the gateway command takes no {system_ca_bundle}, so the
    # simulated-host tests skip and only the real-host ones run.
    command = refgateway_command(system_ca_bundle=str(standin.bundle))
    run = run_pytest(str(MODULE), "-p", "no:xdist", "-q", f"--gateway-command={command}",
                     f"--external-backend-host={NAME}:{port or standin.port}", "-k", "real_external", *FAST,
                     junit=tmp_path / "junit.xml", timeout=300)
    return run.outcomes, run.messages, run.output


def test_the_stand_in_host_answers_through_the_gateway(tmp_path, standin):
    outcomes, _, output = run_opt_in(tmp_path, standin)
    assert outcomes == {REAL: "passed", CA_REF: "passed"}, output[-3000:]
    # The host got its own root under its own name: the gateway rewrote neither.
    assert standin.seen and set(standin.seen) == {("/", f"{NAME}:{standin.port}")}, standin.seen


@pytest.mark.parametrize("answer", [(404, b"<html>not found</html>\n"), (403, b"forbidden\n"),
                                    (503, b"<html>down for maintenance</html>\n")])
def test_a_4xx_or_5xx_is_not_the_host_answering(tmp_path, standin, answer):
    """Before, any status below 500 passed: a 404 from the host or the gateway's own."""
    standin.answer = answer
    outcomes, messages, output = run_opt_in(tmp_path, standin)
    assert outcomes.get(REAL) == "failed", output[-3000:]
    assert f"HTTP {answer[0]}" in messages[REAL], messages[REAL]
    assert outcomes.get(CA_REF) == "passed", output[-3000:]


def test_an_unreachable_host_gets_the_gateway_s_own_answer(tmp_path, standin):
    standin.close()
    outcomes, messages, output = run_opt_in(tmp_path, standin)
    assert outcomes.get(REAL) == "failed", output[-3000:]
    assert "HTTP 5" in messages[REAL], messages[REAL]


# -- the judges, on answers a gateway makes by itself ----------------------------------
def _scenario_module():
    from mtls_conformance.scenarios import test_backend_tls_external

    return test_backend_tls_external


def response(status: int, body: bytes = b"", content_type: str | None = None) -> Response:
    headers = (("content-length", str(len(body))),) + ((("content-type", content_type),) if content_type else ())
    return Response(status=status, reason="", headers=headers, body=body, tls=None)


@pytest.mark.parametrize("outcome", [
    response(404, b"no route\n"),                       # refgateway: no rule matches
    response(502, b"backend certificate rejected\n"),   # refgateway: verification failed
    response(404, b"<html><center>nginx</center></html>", "text/html"),
    response(400, b"bad request\n"),
    response(200, b'{"namespace": "mtls-x", "service": "httpbin-org", "path": "/"}', "application/json"),
], ids=["gateway-404", "gateway-502", "nginx-404", "gateway-400", "echo-backend"])
def test_judge_refuses_answers_that_are_not_the_host_s(outcome):
    judge = _scenario_module().judge_answered_by_host(NAME)
    assert judge(outcome) is not None


@pytest.mark.parametrize("outcome", [response(200, b"<html></html>", "text/html"), response(301),
                                     response(204)], ids=["200", "301", "204"])
def test_judge_takes_the_host_s_own_answers(outcome):
    assert _scenario_module().judge_answered_by_host(NAME)(outcome) is None


def test_a_gateway_that_answers_2xx_without_a_route_fails_the_control():
    judge = _scenario_module().judge_answered_by_gateway
    assert judge(response(200, b"welcome\n", "text/plain")) is not None
    assert judge(response(404, b"no route\n")) is None
