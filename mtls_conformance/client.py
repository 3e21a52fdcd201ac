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
from .expect import (ExpectationFailed, Timing, backend_saw_plaintext, backend_saw_tls, echo_header, eventually,
                     judge_backend_refused, judge_ok, judge_rejected)
from .probe import Outcome, ProbeFailure, Rejection, Response
from .profiles import Profile
from .target import ObjectRef, Target


#: User properties (name, value) that record how each rejection reached the client and
#: under which rule it was judged, for the reports. Where is recorded, not judged: a
#: handshake alert, a first-read alert, a close and an HTTP status are all "rejected".
REJECTION_PROPERTY = "mtls_rejection"
REJECTION_RULE_PROPERTY = "mtls_rejection_rule"

#: The running test's user_properties list; the plugin sets it around each test call.
recording: contextvars.ContextVar[list | None] = contextvars.ContextVar("mtls_recording", default=None)

#: The property the running test checks, in words (see property_of); the plugin sets it
#: around each test call, and a failure message without its own ``what`` names it.
testing: contextvars.ContextVar[str] = contextvars.ContextVar("mtls_testing", default="")


def property_of(name: str) -> str:
    """A test's name as the property it checks: ``test_expired_client_certificate_is_rejected[https-8443]``
    -> ``expired client certificate is rejected [https-8443]``."""
    base, _, params = name.partition("[")
    words = base.removeprefix("test_").replace("_", " ")
    return f"{words} [{params}" if params else words


def _setup(what: str, step: str) -> str:
    """The message of a test's positive half, naming the property it was about to check."""
    return f"setup for the check {what!r} (not reached): {step}" if what else step


def where_rejected(outcome: Outcome) -> str:
    """How a rejection reached the client, e.g. "first-read alert 'certificate required'"."""
    if isinstance(outcome, ProbeFailure):  # never judged a rejection; named for completeness
        return f"{outcome.phase} probe failure ({outcome.cause})"
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
class Pair:
    """What :meth:`GatewayClient.expect_pair` saw: the accepted client's answer, and how the
    refused clients were refused (one outcome per refused client, in order)."""

    accepted: Response
    refused: tuple[Outcome, ...]


@dataclasses.dataclass(frozen=True)
class Sibling:
    """A correctly configured backend on the same Gateway as a backend that must be refused.

    Reached with the refused request's port and SNI, but this ``path`` and/or ``host``; it
    must answer HTTP 200 from ``service``, over TLS with SNI ``backend_sni`` (plaintext when
    ``backend_sni`` is None). A gateway that answers 5xx to every backend then fails the pair.
    """

    service: str
    backend_sni: str | None
    path: str | None = None
    host: str | None = None


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
                plaintext: bool = False, verify_server: bool = True) -> Outcome:
        """One probe. ``verify_server=False``: the probe does not check the listener's
        certificate (for listeners that must fail closed: one serving a throwaway
        certificate to everyone must show up as letting the client in, not as a probe error)."""
        return _probe.probe(self.address(port), sni=sni, host=host or sni, path=path,
                            client_cert=cert, trust_pem=self.trust.cert_pem if verify_server else None,
                            headers=headers, http2=http2, tls_version=tls_version, plaintext=plaintext,
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
        if request.get("http2"):
            extra += ", HTTP/2"
        if request.get("verify_server") is False:
            extra += ", listener certificate not verified by the probe"
        return f"listener port {port} (SNI {sni}{extra}) with {client}"

    def _reproduce(self, port: int, sni: str | None, cert: Any, request: dict) -> str:
        request = dict(request)
        verify = request.pop("verify_server", True)
        try:
            return _probe.curl_command(self.address(port), sni=sni, client_cert=cert,
                                       trust_file=self.trust.cert_file if verify else None,
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

    def expect_pair(self, port: int, *, sni: str | None, accepted: Any, refused: Any, what: str,
                    accepted_what: str = "", service: str | None = None,
                    check: Callable[[Response], str | None] | None = None,
                    **request: Any) -> Pair:
        """A negative and its positive that differ only in the client certificate.

        ``accepted`` (a client certificate, or None for none) must get HTTP 200 from the
        backend; then ``refused`` (one client, None for no certificate, or a tuple/list of
        them) must be refused, each with exactly the same ``port``, ``sni`` and ``request``
        (host, path, headers, tls_version, http2, verify_server). ``what`` names the property
        under test and appears in either half's failure message.
        """
        refused_clients = tuple(refused) if isinstance(refused, (tuple, list)) else (refused,)
        response = self.expect_ok(
            port, sni=sni, cert=accepted, service=service, check=check,
            what=_setup(what, accepted_what or "the accepted client of the pair must be let in"),
            **request)
        outcomes = tuple(self.expect_rejected(port, sni=sni, cert=cert, what=what, **request)
                         for cert in refused_clients)
        return Pair(response, outcomes)

    def expect_fail_closed(self, port: int, *, sni: str | None, clients: Sequence[Any], what: str,
                           serving_port: int, serving_client: Any, **request: Any) -> None:
        """A listener that must not let anyone in (no usable CA), next to one that still serves.

        First ``serving_client`` must get HTTP 200 on ``serving_port`` of the same Gateway;
        then each of ``clients`` (None: no certificate) must be refused on ``port``, or the
        port must not be served at all. The probe does not verify the certificate ``port``
        presents: a listener that fails open with a throwaway certificate then answers 200
        and fails the check, instead of showing up as the probe's own verification error.
        """
        self.expect_ok(serving_port, sni=sni, cert=serving_client,
                       what=_setup(what, f"listener port {serving_port} of the same Gateway must still serve"),
                       **request)
        for cert in clients:
            self.expect_rejected(port, sni=sni, cert=cert, what=what, listener_may_be_down=True,
                                 **{**request, "verify_server": False})

    def expect_backend_refused(self, port: int, *, sni: str | None, backend: Any = None, cert: Any = None,
                               what: str = "", sibling: Sibling | None = None, **request: Any) -> Response:
        """Converge on the gateway answering 5xx itself, and show ``backend`` got no request
        meanwhile.

        For a backend the gateway must not use: its certificate fails the BackendTLSPolicy,
        or the policy cannot be honoured. ``backend`` is anything with ``requests``.
        ``sibling``: a correctly configured backend on the same Gateway, checked first (HTTP
        200 over TLS), so a gateway that refuses every backend does not pass.
        """
        if sibling is not None:
            sibling_request = {**request, **{k: v for k, v in (("path", sibling.path), ("host", sibling.host))
                                             if v is not None}}
            if sibling.backend_sni is not None:
                sibling_check = backend_saw_tls(sni=sibling.backend_sni)
                how = f"over TLS with SNI {sibling.backend_sni}"
            else:
                sibling_check, how = backend_saw_plaintext, "in plaintext"
            self.expect_ok(port, sni=sni, cert=cert, service=sibling.service, check=sibling_check,
                           what=_setup(what, f"the correctly configured sibling backend {sibling.service} "
                                             f"on the same Gateway must answer {how}"),
                           **sibling_request)
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
            what = what or testing.get()
            lead = f"{what}: " if what else ""
            raise ExpectationFailed(
                f"{lead}{context}: expected {expected}, {exc}\n"
                f"reproduce: {self._reproduce(port, sni, cert, request)}",
                evidence=exc.evidence) from None

    def require_certificate_requested(self, response: Response, requested: bool, *, port: int,
                                      what: str) -> None:
        """Check whether the listener sent a CertificateRequest; skip, saying so, when the probe
        cannot tell (this Python has no OpenSSL message callback), never pass."""
        import pytest

        seen = response.tls.certificate_requested if response.tls is not None else None
        if seen is None:
            pytest.skip(f"{what}: cannot check whether listener port {port} requested a client certificate: "
                        f"the probe sees no TLS handshake messages here (no ssl.SSLContext._msg_callback)")
        if seen is not requested:
            raise ExpectationFailed(
                f"{what}: listener port {port} answered {response.describe()}; expected the listener "
                f"{'to request' if requested else 'not to request'} a client certificate", evidence=response)

    def identity(self, response: Response) -> str | None:
        """What the gateway told the backend it verified, per the implementation's profile."""
        if self.profile.identity is None:
            return None
        return echo_header(response, self.profile.identity.verify_header)


#: The public names; ``recording`` and ``testing`` are the plugin's, set around each test.
__all__ = ["REJECTION_PROPERTY", "REJECTION_RULE_PROPERTY", "property_of", "where_rejected",
           "Pair", "Sibling", "Settings", "GatewayClient"]
