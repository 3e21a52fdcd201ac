"""A client of one Gateway under test: probes, expectations and readable failures.

Every failure message names the listener port, the SNI and Host, what the client
presented, what was expected and what was seen, and ends with a command that reproduces
the request by hand.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from . import probe as _probe
from .expect import (ExpectationFailed, Timing, echo_header, eventually, judge_backend_refused, judge_ok,
                     judge_rejected)
from .probe import Outcome, Rejection, Response
from .profiles import Profile
from .target import ObjectRef, Target


#: User properties (name, value) that record how each rejection reached the client and
#: under which rule it was judged, for the reports. Where is recorded, not judged: a
#: handshake alert, a first-read alert, a close and an HTTP status are all "rejected".
REJECTION_PROPERTY = "mtls_rejection"
REJECTION_RULE_PROPERTY = "mtls_rejection_rule"

#: The running test's user_properties list; the plugin sets it around each test call.
recording: contextvars.ContextVar[list | None] = contextvars.ContextVar("mtls_recording", default=None)


def where_rejected(outcome: Outcome) -> str:
    """How a rejection reached the client, e.g. "first-read alert 'certificate required'"."""
    if isinstance(outcome, Rejection):
        text = f"{outcome.phase} {outcome.kind}"
        return f"{text} {outcome.alert!r}" if outcome.alert else text
    return f"HTTP {outcome.status} after the handshake"


def _record_rejection(context: str, outcome: Outcome, *, strict: bool) -> None:
    properties = recording.get()
    if properties is None:
        return
    if not any(name == REJECTION_RULE_PROPERTY for name, _ in properties):
        properties.append((REJECTION_RULE_PROPERTY, "transport-level only (--strict-rejection)" if strict
                           else "any client-visible rejection"))
    properties.append((REJECTION_PROPERTY, f"{context}: {where_rejected(outcome)}"))


@dataclasses.dataclass(frozen=True)
class Settings:
    timing: Timing = Timing()
    strict_rejection: bool = False


class GatewayClient:
    def __init__(self, target: Target, gateway: ObjectRef, *, trust: Any, profile: Profile,
                 settings: Settings, namespace: str | None = None) -> None:
        """``trust``: the authority of the listeners' certificates (``.cert_pem``, ``.cert_file``)."""
        self.target = target
        self.gateway = gateway
        self.trust = trust
        self.profile = profile
        self.settings = settings
        self.namespace = namespace or gateway.namespace

    def address(self, port: int) -> tuple[str, int]:
        return self.target.listener_address(self.gateway, port)

    def request(self, port: int, *, sni: str | None, host: str | None = None, cert: Any = None,
                path: str = "/", headers: Sequence[tuple[str, str]] = (),
                http2: bool = False, tls_version: str | None = None,
                plaintext: bool = False) -> Outcome:
        return _probe.probe(self.address(port), sni=sni, host=host or sni, path=path,
                            client_cert=cert, trust_pem=self.trust.cert_pem, headers=headers,
                            http2=http2, tls_version=tls_version, plaintext=plaintext,
                            timeout=self.settings.timing.request_timeout)

    def request_coalesced(self, port: int, *, sni: str, authorities: Sequence[str], cert: Any = None,
                          path: str = "/") -> list[Outcome]:
        """HTTP/2 requests for several authorities over one connection (see probe_coalesced)."""
        return _probe.probe_coalesced(self.address(port), sni=sni, authorities=authorities, path=path,
                                      client_cert=cert, trust_pem=self.trust.cert_pem,
                                      timeout=self.settings.timing.request_timeout)

    def _context(self, port: int, sni: str | None, cert: Any, request: dict) -> str:
        client = f"client certificate {cert.name!r}" if cert is not None else "no client certificate"
        extra = "".join(f", {k} {v}" for k, v in request.items()
                        if v and k in ("host", "path", "tls_version") and v != sni)
        return f"listener port {port} (SNI {sni}{extra}) with {client}"

    def _reproduce(self, port: int, sni: str | None, cert: Any, request: dict) -> str:
        try:
            return _probe.curl_command(self.address(port), sni=sni, client_cert=cert,
                                       trust_file=self.trust.cert_file,
                                       **{**request, "host": request.get("host") or sni})
        except Exception as exc:  # the reproduction line must never hide the real failure
            return f"(no reproduction command: {exc})"

    def expect_ok(self, port: int, *, sni: str, cert: Any = None, service: str | None = None,
                  what: str = "", check: Callable[[Response], str | None] | None = None,
                  **request: Any) -> Response:
        """Converge on HTTP 200 from the backend, ``required_consecutive`` times in a row.

        ``request``: host, path, headers, tls_version, http2, as for :meth:`request`.
        """

        def judge(outcome: Outcome) -> str | None:
            why = judge_ok(outcome, namespace=self.namespace, service=service)
            if why is None and check is not None:
                assert isinstance(outcome, Response)
                why = check(outcome)
            return why

        return self._eventually(port, sni, cert, request, judge,
                                expected="HTTP 200 from the backend", what=what)

    def expect_rejected(self, port: int, *, sni: str, cert: Any = None, what: str = "",
                        listener_may_be_down: bool = False, **request: Any) -> Outcome:
        """Converge on the client certificate being refused, by any means a client sees."""

        def judge(outcome: Outcome) -> str | None:
            return judge_rejected(outcome, rejection_statuses=self.profile.rejection_statuses,
                                  strict=self.settings.strict_rejection,
                                  listener_may_be_down=listener_may_be_down)

        outcome = self._eventually(port, sni, cert, request, judge,
                                   expected="the connection to be rejected", what=what)
        _record_rejection(self._context(port, sni, cert, request), outcome,
                          strict=self.settings.strict_rejection)
        return outcome

    def expect_backend_refused(self, port: int, *, sni: str | None, backend: Any = None, cert: Any = None,
                               what: str = "", **request: Any) -> Response:
        """Converge on the gateway answering 5xx itself, and show ``backend`` got no request
        meanwhile.

        For a backend the gateway must not use: its certificate fails the BackendTLSPolicy,
        or the policy cannot be honoured. ``backend`` is anything with ``requests``.
        """
        before = len(backend.requests) if backend is not None else 0
        outcome = self._eventually(port, sni, cert, request, judge_backend_refused,
                                   expected="an HTTP 5xx from the gateway", what=what)
        seen = list(backend.requests)[before:] if backend is not None else []
        if seen:
            first = seen[0]
            if first.get("tls"):
                how = f"over TLS (SNI {first['tls'].get('serverName')!r})"
            else:  # tls None: the backend's log does not say
                how = "in plaintext" if "tls" not in first else "(over TLS or not: its log does not say)"
            raise ExpectationFailed(
                f"{what + ': ' if what else ''}{self._context(port, sni, cert, request)}: the gateway answered "
                f"{outcome.describe()}, but {len(seen)} request(s) reached backend "
                f"{getattr(backend, 'namespace', '?')}/{getattr(backend, 'service', '?')}, the first "
                f"{first.get('method', '')} {first.get('path', '')} {how}; expected none",
                evidence=outcome)
        assert isinstance(outcome, Response)
        return outcome

    def _eventually(self, port, sni, cert, request, judge, *, expected, what):
        context = self._context(port, sni, cert, request)
        try:
            return eventually(lambda: self.request(port, sni=sni, cert=cert, **request),
                              judge, timing=self.settings.timing, progress=self.target._progress,
                              what=f"{context}: {expected}")
        except ExpectationFailed as exc:
            lead = f"{what}: " if what else ""
            raise ExpectationFailed(
                f"{lead}{context}: expected {expected}, {exc}\n"
                f"reproduce: {self._reproduce(port, sni, cert, request)}",
                evidence=exc.evidence) from None

    def identity(self, response: Response) -> str | None:
        """What the gateway told the backend it verified, per the implementation's profile."""
        if self.profile.identity is None:
            return None
        return echo_header(response, self.profile.identity.verify_header)
