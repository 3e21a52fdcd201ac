"""Echo backend that answers like the upstream ``echo-basic`` image.

The JSON body carries the fields the Gateway API conformance suite reads from
``conformance/echo-basic``: ``path`` (the raw request target), ``host``,
``method``, ``proto``, ``headers`` (canonical names, Host excluded, as Go's
net/http does), ``httpPort`` (a string), ``namespace``, ``ingress``,
``service``, ``pod`` and, on TLS connections only, ``tls``. As upstream,
``tls.peerCertificates`` and ``tls.negotiatedProtocol`` are omitted when empty,
and ``cipherSuite`` uses Go's (IANA) names where we know them.

It is part of the harness, not a fixture module: the targets run it as the backends of
the scenarios (``Target.start_backend``), in this process or as a child process
(``EchoProcess``), and the echo image runs it (``--from-environment``); the
``mtls_echo_server`` fixture lives in mtls_conformance/fixtures/echo.py.

The TLS variant uses the stdlib ``ssl`` module. That is fine for a backend: the
alerts that scenarios assert come from the gateway, not from here.
``client_ca_pem`` alone means "verify a client certificate if one is sent"
(upstream's ``VerifyClientCertIfGiven``); ``require_client_cert`` makes it
mandatory.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import threading
from typing import Any

# The server itself (its handler, TLS and what it records) is _echo_server; this module is
# its command line and the child process that runs it elsewhere.
from ._echo_server import EchoServer, ServerTLS

__all__ = ["EchoProcess", "EchoServer", "ServerTLS"]

# -- the echo server as a child process ---------------------------------------------
#
# A target whose gateway cannot reach this process's loopback (the kubernetes target:
# the API server refuses loopback endpoints) runs the echo server in a child process
# somewhere else, e.g. inside a network namespace. The protocol is JSON lines:
#
#   parent -> child stdin:  the configuration (one line), then "sync <n>" lines
#   child -> parent stdout: {"port": N}, then {"request": ...}, {"handshake_failure":
#                           [address, text]}, {"error": [address, text]}, {"sync": n}
#
# The child exits when its stdin reaches EOF, so it never outlives the parent, and on
# SIGTERM. Private keys travel through the pipe, never through files.


class _ReportingEchoServer(EchoServer):
    """An EchoServer that also reports what it records on stdout."""

    _emit_lock = threading.Lock()

    @classmethod
    def emit(cls, message: dict) -> None:
        with cls._emit_lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    def _record(self, answer: dict) -> None:
        super()._record(answer)
        self.emit({"request": answer})

    def _record_error(self, client_address: Any, exc: BaseException) -> None:
        super()._record_error(client_address, exc)
        self.emit({"error": [client_address, self.errors[-1][1]]})

    def _record_handshake_failure(self, client_address: Any, exc: BaseException) -> None:
        super()._record_handshake_failure(client_address, exc)
        self.emit({"handshake_failure": [client_address, self.handshake_failures[-1][1]]})


def _tls_to_json(tls: ServerTLS | None) -> dict | None:
    if tls is None:
        return None
    return {"cert_chain_pem": tls.cert_chain_pem.decode("ascii"), "key_pem": tls.key_pem.decode("ascii"),
            "client_ca_pem": tls.client_ca_pem.decode("ascii") if tls.client_ca_pem else None,
            "require_client_cert": tls.require_client_cert}


def _tls_from_json(data: dict | None) -> ServerTLS | None:
    if data is None:
        return None
    return ServerTLS(cert_chain_pem=data["cert_chain_pem"].encode("ascii"), key_pem=data["key_pem"].encode("ascii"),
                     client_ca_pem=data["client_ca_pem"].encode("ascii") if data.get("client_ca_pem") else None,
                     require_client_cert=bool(data.get("require_client_cert")))


def serve_from_environment(environ: dict[str, str]) -> int:
    """The echo image's entry point (deploy/echo/Containerfile): upstream echo-basic's
    environment contract, so that ``--echo-image`` may name either image.

    HTTP on ``HTTP_PORT`` (3000); HTTPS on ``HTTPS_PORT`` (8443) when ``TLS_SERVER_CERT``
    and ``TLS_SERVER_PRIVKEY`` name PEM files; ``TLS_CLIENT_CACERTS`` verifies a client
    certificate if one is sent. ``NAMESPACE``, ``SERVICE_NAME``, ``POD_NAME`` and
    ``INGRESS_NAME`` go into the answer. Each request is one JSON line on stdout,
    ``{"request": <answer>}``: the pod's log is the harness's request log, and unlike
    echo-basic's it says whether the request came over TLS. Runs until SIGTERM.
    """
    import signal
    from pathlib import Path

    def setting(name: str, default: str = "") -> str:
        return environ.get(name) or default

    try:
        tls = None
        if setting("TLS_SERVER_CERT") and setting("TLS_SERVER_PRIVKEY"):
            ca = setting("TLS_CLIENT_CACERTS")
            tls = ServerTLS(cert_chain_pem=Path(setting("TLS_SERVER_CERT")).read_bytes(),
                            key_pem=Path(setting("TLS_SERVER_PRIVKEY")).read_bytes(),
                            client_ca_pem=Path(ca).read_bytes() if ca else None)
        ports = [(int(setting("HTTP_PORT", "3000")), None)]
        if tls is not None:
            ports.append((int(setting("HTTPS_PORT", "8443")), tls))
    except (OSError, ValueError) as exc:
        print(f"mtls_conformance.echo: {exc}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    servers = []
    try:
        for port, port_tls in ports:
            servers.append(_ReportingEchoServer(
                namespace=setting("NAMESPACE"), service=setting("SERVICE_NAME"), pod=setting("POD_NAME"),
                ingress=setting("INGRESS_NAME"), tls=port_tls, host="0.0.0.0", port=port).start())
            print(f"Starting server, listening on port {port} ({'https' if port_tls else 'http'})", flush=True)
        stopped.wait()
    except (OSError, ssl.SSLError) as exc:
        print(f"mtls_conformance.echo: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            server.stop()
    return 0


def serve_by_hand(argv: list[str]) -> int:
    """``python -m mtls_conformance.echo --port 8080 [--tls-cert F --tls-key F [--client-ca F]]``:
    an echo backend to put behind a gateway when checking a guide by hand."""
    import argparse
    import signal
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m mtls_conformance.echo",
                                     description="an echo backend answering like upstream's echo-basic")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the key of --tls-cert (PEM)")
    parser.add_argument("--client-ca", type=Path, help="verify client certificates against this CA (PEM)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--service", default="echo")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls = None
    try:
        if args.tls_cert:
            tls = ServerTLS(cert_chain_pem=args.tls_cert.read_bytes(), key_pem=args.tls_key.read_bytes(),
                            client_ca_pem=args.client_ca.read_bytes() if args.client_ca else None)
        server = EchoServer(namespace=args.namespace, service=args.service, pod=f"{args.service}-0",
                            tls=tls, host=args.host, port=args.port).start()
    except (OSError, ValueError, ssl.SSLError) as exc:
        print(f"mtls_conformance.echo: {exc}", file=sys.stderr)
        return 1
    print(f"echo backend: {'https' if tls else 'http'}://{args.host}:{server.port}/ (Ctrl-C stops it)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
    return 0


def main() -> int:
    """``python -m mtls_conformance.echo``: serve one echo server as described above;
    ``python -m mtls_conformance.echo --from-environment``: the echo image (serve_from_environment)."""
    import signal

    if sys.argv[1:] == ["--from-environment"]:
        return serve_from_environment(dict(os.environ))
    if sys.argv[1:]:
        return serve_by_hand(sys.argv[1:])

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    config = json.loads(sys.stdin.readline() or "null")
    if not isinstance(config, dict):
        print("mtls_conformance.echo: expected a JSON configuration line on stdin", file=sys.stderr)
        return 2
    server = _ReportingEchoServer(namespace=config["namespace"], service=config["service"], pod=config["pod"],
                                  tls=_tls_from_json(config.get("tls")), host=config.get("host", "127.0.0.1"))
    server.start()
    try:
        server.emit({"port": server.port})
        for line in sys.stdin:
            if line.startswith("sync "):
                server.emit({"sync": int(line.split()[1])})
    finally:
        server.stop()
    return 0


class EchoProcess:
    """An :class:`EchoServer` in a child process: same ``requests``, ``address`` and waits.

    ``command_prefix`` runs the child somewhere else, e.g. ``["ip", "netns", "exec", NS]``;
    ``host`` is the address it binds there.
    """

    def __init__(self, *, namespace: str, service: str, pod: str, host: str, tls: ServerTLS | None = None,
                 command_prefix: tuple[str, ...] = (), log_path: str | None = None) -> None:
        self.namespace, self.service, self.pod, self.host, self.tls = namespace, service, pod, host, tls
        self.command_prefix = tuple(command_prefix)
        self.log_path = log_path
        self._requests: list[dict] = []
        self._handshake_failures: list[tuple[Any, str]] = []
        self._errors: list[tuple[Any, str]] = []
        self._synced = 0
        self._sync_sent = 0
        self._port: int | None = None
        self._lock = threading.Condition()
        self._proc: Any = None
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"on {self.host}:{self._port} pid {self._proc.pid}" if self._proc else "stopped"
        return f"<EchoProcess {self.namespace}/{self.service} {'https' if self.tls else 'http'} {state}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"echo process {self.namespace}/{self.service} is not running; call start() first")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _log_tail(self) -> str:
        try:
            with open(self.log_path or "", errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-5:]) or "(no output)"
        except OSError:
            return "(no output)"

    def start(self, *, timeout: float = 15.0) -> EchoProcess:
        import subprocess
        from pathlib import Path

        if self._proc is not None:
            raise RuntimeError(f"echo process {self.namespace}/{self.service} is already running")
        argv = [*self.command_prefix, sys.executable, "-m", "mtls_conformance.echo"]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            # Its own session: a Ctrl-C in the terminal reaches the harness only, which
            # then stops this child in order (closing stdin).
            from .processes import spawn  # not at the top: the echo image runs this module alone

            self._proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                               cwd=Path(__file__).resolve().parent.parent)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        config = {"namespace": self.namespace, "service": self.service, "pod": self.pod, "host": self.host,
                  "tls": _tls_to_json(self.tls)}
        try:
            self._proc.stdin.write(json.dumps(config).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError:
            pass  # it died already; reported below
        self._reader = threading.Thread(target=self._read, name=f"echo-process-{self.service}", daemon=True)
        self._reader.start()
        with self._lock:
            started = self._lock.wait_for(lambda: self._port is not None or self._proc.poll() is not None, timeout)
        if self._port is None:
            status = self._proc.poll()
            self.stop()
            why = f"exited with status {status}" if started else f"did not report its port within {timeout:g} s"
            raise RuntimeError(f"echo process {self.namespace}/{self.service} ({' '.join(argv)}) {why}: "
                               f"{self._log_tail()}")
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if "port" in event:
                    self._port = int(event["port"])
                elif "request" in event:
                    self._requests.append(event["request"])
                elif "handshake_failure" in event:
                    self._handshake_failures.append(tuple(event["handshake_failure"]))
                elif "error" in event:
                    self._errors.append(tuple(event["error"]))
                elif "sync" in event:
                    self._synced = max(self._synced, int(event["sync"]))
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def _sync(self, timeout: float = 10.0) -> None:
        # The child records a request before answering it, but its report may still be
        # in the pipe when the client has the answer: a round trip flushes it.
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                return
            self._sync_sent += 1
            n = self._sync_sent
            try:
                self._proc.stdin.write(f"sync {n}\n".encode())
                self._proc.stdin.flush()
            except OSError:
                return
            if not self._lock.wait_for(lambda: self._synced >= n or self._proc.poll() is not None, timeout):
                raise AssertionError(f"echo process {self.namespace}/{self.service} did not answer a sync "
                                     f"within {timeout:g} s")

    @property
    def requests(self) -> list[dict]:
        self._sync()
        with self._lock:
            return list(self._requests)

    @property
    def handshake_failures(self) -> list[tuple[Any, str]]:
        self._sync()
        with self._lock:
            return list(self._handshake_failures)

    @property
    def errors(self) -> list[tuple[Any, str]]:
        self._sync()
        with self._lock:
            return list(self._errors)

    def wait_for_handshake_failures(self, count: int, *, timeout: float = 10.0) -> list[tuple[Any, str]]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._handshake_failures) >= count, timeout):
                raise AssertionError(
                    f"echo process {self.namespace}/{self.service}: expected {count} failed handshakes "
                    f"within {timeout:g}s, saw {len(self._handshake_failures)}: {self._handshake_failures}")
            return list(self._handshake_failures)

    def stop(self, *, timeout: float = 5.0) -> None:
        import subprocess

        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # EOF: the child stops its server and exits
        except OSError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=timeout)
        proc.stdout.close()
        self._port = None


if __name__ == "__main__":
    sys.exit(main())
