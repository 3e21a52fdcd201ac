"""A client of one Gateway under test: probes, expectations and readable failures.

Every failure message names the listener port, the SNI and Host, what the client
presented, what was expected and what was seen, and ends with a command that reproduces
the request by hand.
"""

from __future__ import annotations

import contextvars
import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import probe as _probe
from .expect import (ExpectationFailed, Timing, backend_saw_plaintext, backend_saw_tls, echo_header, eventually,
                     judge_backend_refused, judge_ok, judge_rejected, reached_backend)
from .probe import Outcome, ProbeFailure, Rejection, Response, Resumption
from .profiles import Profile
from .target import NotListening, ObjectRef, Target, conditions_of, find_condition
from ._turns import pause


#: User properties (name, value) that record how each rejection reached the client and
#: under which rule it was judged, for the reports. Where is recorded, not judged: a
#: handshake alert, a first-read alert, a close and an HTTP status are all "rejected".
REJECTION_PROPERTY = "mtls_rejection"
REJECTION_RULE_PROPERTY = "mtls_rejection_rule"
#: What a resumption check saw (resumed or not, then how the client was answered).
RESUMPTION_PROPERTY = "mtls_resumption"
#: "FEATURE: sentence" for that feature's verdict line (e.g. "resumption not offered").
VERDICT_NOTE_PROPERTY = "mtls_verdict_note"  # the same name as report.VERDICT_NOTE_PROPERTY

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


def record(name: str, value: str) -> None:
    """Add a user property to the running test (JUnit ``<property>``); outside a test, nothing."""
    properties = recording.get()
    if properties is not None and (name, value) not in properties:
        properties.append((name, value))


def _setup(what: str, step: str) -> str:
    """The message of a test's positive half, naming the property it was about to check."""
    return f"setup for the check {what!r} (not reached): {step}" if what else step


#: The listener condition that lets an implementation keep HTTP/2 off a listener: its TLS
#: configuration overlaps another listener's on the port, and a client that coalesces
#: HTTP/2 connections could reach the other listener's routes over it (Gateway API v1.7.0
#: apis/v1/gateway_types.go 1845-1889; GEP-3567). Envoy Gateway v1.9.1 sets the condition and
#: offers only http/1.1 in ALPN there (internal/gatewayapi/listener.go 415-680,
#: internal/xds/translator/listener.go 531-536).
OVERLAPPING_TLS_CONDITION = "OverlappingTLSConfig"


def host_matches(pattern: str, host: str) -> bool:
    """A listener hostname matches a host name: exactly, or as a wildcard ``*.suffix`` that
    stands for one or more labels (gateway_types.go Listener.hostname)."""
    pattern, host = pattern.lower(), host.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def listeners_selected(gateway: dict | None, port: int, sni: str | None) -> list[str]:
    """The names of the listeners on ``port`` that a handshake with ``sni`` selects: an exact
    hostname first, then the longest wildcard, then those without a hostname (the most
    specific match, gateway_types.go Listener.hostname)."""
    listeners = [entry for entry in ((gateway or {}).get("spec") or {}).get("listeners") or []
                 if entry.get("port") == port]
    matching = [entry for entry in listeners if entry.get("hostname") and sni and host_matches(entry["hostname"], sni)]
    if matching:
        def specificity(entry: dict) -> tuple[bool, int]:
            return not entry["hostname"].startswith("*."), len(entry["hostname"])

        best = max(map(specificity, matching))
        return [entry["name"] for entry in matching if specificity(entry) == best]
    return [entry["name"] for entry in listeners if not entry.get("hostname")]


def where_rejected(outcome: Outcome) -> str:
    """How a rejection reached the client, e.g. "first-read alert 'certificate required'"."""
    if isinstance(outcome, ProbeFailure):  # never judged a rejection; named for completeness
        return f"{outcome.phase} probe failure ({outcome.cause})"
    if isinstance(outcome, Rejection):
        text = f"{outcome.phase} {outcome.kind}"
        if outcome.note:  # the target found out without connecting (NotListening)
            text += f" ({outcome.note})"
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


#: The query parameter that carries each probe's id, unique per request. In the request
#: target, not in a header: every request record the harness reads shows the target (our
#: echo's JSON ``path``, upstream echo-basic's log line "Echoing back request made to
#: <RequestURI> ...", nginx's ``$request_uri``), and echo-basic logs no header at all.
#: Route matching ignores the query (a path match is on the path only).
PROBE_ID_PARAMETER = "mtls-probe-id"


def with_probe_id(path: str, probe_id: str) -> str:
    """``path`` with the probe id added to its query."""
    return f"{path}{'&' if '?' in path else '?'}{PROBE_ID_PARAMETER}={probe_id}"


def probe_id_of(path: str | None) -> str | None:
    """The probe id in a request target a backend recorded, or None."""
    values = parse_qs(urlsplit(path or "").query).get(PROBE_ID_PARAMETER)
    return values[0] if values else None


@dataclasses.dataclass(frozen=True)
class SentProbe:
    """One request the client sent, by its id, and what came back."""

    probe_id: str
    outcome: Outcome


def deciding_attempts(sent: Sequence[SentProbe], judge: Callable[[Outcome], str | None]) -> list[SentProbe]:
    """The attempts that decided a converged check: the last run that ``judge`` accepts.

    Attempts before it were made while the gateway was still converging; those may
    legitimately have reached a backend.
    """
    run: list[SentProbe] = []
    for attempt in reversed(sent):
        if judge(attempt.outcome) is not None:
            break
        run.append(attempt)
    return run[::-1]


def received_by(backend: Any, probe_ids: Sequence[str] | set[str]) -> list[dict]:
    """The requests ``backend`` recorded that carry one of ``probe_ids``.

    ``read_requests()`` where the backend has it (a pod's or nginx's log, read once), else ``requests``.
    """
    read = getattr(backend, "read_requests", None)
    entries = read() if read is not None else backend.requests
    wanted = set(probe_ids)
    return [entry for entry in entries if probe_id_of(entry.get("path")) in wanted]


def how_received(entry: dict) -> str:
    """How a backend says it got a request: over TLS (with the SNI), in plaintext, or unknown."""
    if entry.get("tls"):
        return f"over TLS (SNI {entry['tls'].get('serverName')!r})"
    # tls None: the backend's log does not say (echo-basic)
    return "in plaintext" if "tls" not in entry else "(over TLS or not: its log does not say)"


def describe_forwarded(hits: Sequence[tuple[SentProbe, Any, dict]], deciding: int) -> str:
    """Why a refusal does not count: refused requests that had reached a backend anyway."""
    attempt, backend, entry = hits[0]
    method = entry.get("method")
    request = f"{method} {entry.get('path', '')}" if method else f"request to {entry.get('path', '')}"
    ids = sorted({hit[0].probe_id for hit in hits})
    return (f"the client was refused ({attempt.outcome.describe()}), but backend "
            f"{getattr(backend, 'namespace', '?')}/{getattr(backend, 'service', '?')} had received that request "
            f"(probe id {attempt.probe_id}: {request} {how_received(entry)}); {len(ids)} of the {deciding} "
            f"refused attempts that decided the check reached a backend (probe ids {', '.join(ids)}); "
            f"expected none: a refused request must never reach a backend")


def nothing_listens(exc: NotListening) -> Rejection:
    """What a client would see where the target knows nothing listens: connection refused."""
    return Rejection(phase="connect", kind="refused", alert=None, detail=str(exc), tls=None,
                     note=f"nothing listens: {exc}")


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
        #: Collects every request sent while a negative is judged (expect_rejected).
        self._sent: list[SentProbe] | None = None

    def changed_at(self) -> float | None:
        """When the harness last changed what this Gateway may depend on (see
        Target.last_change); for scenarios that call ``eventually`` themselves."""
        return getattr(self.target, "last_change", None)

    def address(self, port: int) -> tuple[str, int]:
        return self.target.listener_address(self.gateway, port)

    def request(self, port: int, *, sni: str | None, host: str | None = None, cert: Any = None,
                path: str = "/", headers: Sequence[tuple[str, str]] = (),
                method: str = "GET", body: bytes | None = None,
                http2: bool = False, tls_version: str | None = None,
                plaintext: bool = False, verify_server: bool = True,
                resumption: Resumption | None = None) -> Outcome:
        """One probe. ``verify_server=False``: the probe does not check the listener's
        certificate (for listeners that must fail closed: one serving a throwaway
        certificate to everyone must show up as letting the client in, not as a probe error).

        Every probe carries an id of its own in its query (PROBE_ID_PARAMETER), by which
        a backend's request record shows whether that request reached it.
        ``resumption``: the client's session to offer and keep (see probe.Resumption).
        """
        probe_id = secrets.token_hex(8)
        try:
            address = self.address(port)
        except NotListening as exc:
            outcome: Outcome = nothing_listens(exc)
        else:
            outcome = _probe.probe(address, sni=sni, host=host or sni, path=with_probe_id(path, probe_id),
                                   client_cert=cert, trust_pem=self.trust.cert_pem if verify_server else None,
                                   headers=headers, method=method, body=body, http2=http2,
                                   tls_version=tls_version, plaintext=plaintext,
                                   timeout=self.settings.timing.request_timeout, resumption=resumption)
        if self._sent is not None:
            self._sent.append(SentProbe(probe_id, outcome))
        return outcome

    def request_coalesced(self, port: int, *, sni: str, authorities: Sequence[str], cert: Any = None,
                          path: str = "/") -> list[Outcome]:
        """HTTP/2 requests for several authorities over one connection (see probe_coalesced)."""
        try:
            address = self.address(port)
        except NotListening as exc:
            return [nothing_listens(exc)] * len(authorities)
        return _probe.probe_coalesced(address, sni=sni, authorities=authorities, path=path,
                                      client_cert=cert, trust_pem=self.trust.cert_pem,
                                      timeout=self.settings.timing.request_timeout)

    def _context(self, port: int, sni: str | None, cert: Any, request: dict) -> str:
        client = f"client certificate {cert.name!r}" if cert is not None else "no client certificate"
        extra = "".join(f", {k} {v}" for k, v in request.items()
                        if v and k in ("host", "path", "tls_version") and v != sni)
        if request.get("method", "GET") != "GET" or request.get("body") is not None:
            body = request.get("body")
            extra += f", {request.get('method', 'GET')}" + (f" with a {len(body)}-byte body" if body is not None else "")
        if request.get("http2"):
            extra += ", HTTP/2"
        if request.get("verify_server") is False:
            extra += ", listener certificate not verified by the probe"
        return f"listener port {port} (SNI {sni}{extra}) with {client}"

    def _reproduce(self, port: int, sni: str | None, cert: Any, request: dict) -> str:
        request = dict(request)
        request.pop("resumption", None)
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

        sent: list[SentProbe] = []
        self._sent = sent
        try:
            outcome = self._eventually(port, sni, cert, request, judge,
                                       expected="the connection to be rejected", what=what)
        finally:
            self._sent = None
        self._expect_not_forwarded(deciding_attempts(sent, judge), time.monotonic(), port=port, sni=sni,
                                   cert=cert, request=request, what=what)
        _record_rejection(self._context(port, sni, cert, request), outcome,
                          strict=self.settings.strict_rejection)
        return outcome

    def _expect_not_forwarded(self, deciding: list[SentProbe], decided_at: float, *, port: int,
                              sni: str | None, cert: Any, request: dict, what: str) -> None:
        """None of the refused requests that decided a negative reached any backend.

        A gateway that forwards the request and only then refuses the client (a close, a
        400) looks like a refusal to the client; for a POST the damage is done. Every
        backend the target started (running_backends: whatever the Gateway's routes could
        reach) is asked for the deciding attempts' probe ids. A backend whose record
        trails its answers (a pod's log, nginx's: ``log_lag``) is read again until that
        long after the check was decided; local backends record a request once they have
        read it, before answering, and the earlier deciding attempts each had the later
        attempts' round trips to arrive.
        """
        running = getattr(self.target, "running_backends", None)
        backends = list(running()) if running is not None else []
        if not deciding or not backends:
            return
        by_id = {attempt.probe_id: attempt for attempt in deciding}
        deadline = decided_at + max(float(getattr(backend, "log_lag", 0.0)) for backend in backends)
        while True:
            last_read = time.monotonic() >= deadline
            hits = [(by_id[probe_id_of(entry["path"])], backend, entry)
                    for backend in backends for entry in received_by(backend, by_id)]
            if hits or last_read:
                break
            pause(min(0.5, max(0.0, deadline - time.monotonic())))  # a log has no watch
        if hits:
            what = what or testing.get()
            raise ExpectationFailed(
                f"{what + ': ' if what else ''}{self._context(port, sni, cert, request)}: "
                f"{describe_forwarded(hits, len(deciding))}\n"
                f"reproduce: {self._reproduce(port, sni, cert, request)}",
                evidence=hits[0][0].outcome)

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
            raise ExpectationFailed(
                f"{what + ': ' if what else ''}{self._context(port, sni, cert, request)}: the gateway answered "
                f"{outcome.describe()}, but {len(seen)} request(s) reached backend "
                f"{getattr(backend, 'namespace', '?')}/{getattr(backend, 'service', '?')}, the first "
                f"{first.get('method', '')} {first.get('path', '')} {how_received(first)}; expected none",
                evidence=outcome)
        assert isinstance(outcome, Response)
        return outcome

    def _eventually(self, port, sni, cert, request, judge, *, expected, what):
        context = self._context(port, sni, cert, request)
        try:
            return eventually(lambda: self.request(port, sni=sni, cert=cert, **request),
                              judge, timing=self.settings.timing, progress=self.target._progress,
                              what=f"{context}: {expected}", changed_at=self.changed_at)
        except ExpectationFailed as exc:
            what = what or testing.get()
            if request.get("http2"):
                self._skip_if_h2_withheld(port, sni, exc.evidence, f"{what}: {context}" if what else context)
            lead = f"{what}: " if what else ""
            raise ExpectationFailed(
                f"{lead}{context}: expected {expected}, {exc}\n"
                f"reproduce: {self._reproduce(port, sni, cert, request)}",
                evidence=exc.evidence) from None

    def _skip_if_h2_withheld(self, port: int, sni: str | None, evidence: Outcome | None, context: str) -> None:
        """Skip an HTTP/2 check that ended on no h2 in ALPN, where the listener the SNI selects
        reports OverlappingTLSConfig=True: an implementation may keep HTTP/2 off such a listener
        (see OVERLAPPING_TLS_CONDITION), so the check cannot be made there. Any other listener
        without h2 stays a failure: the check could not be made, and nothing in the status says why."""
        if not (isinstance(evidence, ProbeFailure) and evidence.cause == "alpn"):
            return
        gateway = self.target.get(self.gateway)
        for name in listeners_selected(gateway, port, sni):
            condition = find_condition(conditions_of(gateway, listener=name), OVERLAPPING_TLS_CONDITION)
            if condition is not None and condition.get("status") == "True":
                import pytest

                pytest.skip(f"{context}: listener {name!r} reports {OVERLAPPING_TLS_CONDITION}=True "
                            f"({condition.get('reason')}: {condition.get('message', '')}) and {evidence.detail}; "
                            f"an implementation may keep HTTP/2 off a listener whose TLS configuration overlaps "
                            f"another's, against connection coalescing (Gateway API v1.7.0 gateway_types.go, "
                            f"OverlappingTLSConfig; GEP-3567), so this HTTP/2 check cannot be made there")

    # ------------------------------------------------------------------ session resumption
    def take_session(self, port: int, *, sni: str, cert: Any, resumption: Resumption, what: str,
                     service: str | None = None, **request: Any) -> bool:
        """Converge on HTTP 200 for ``cert`` with ``resumption``'s client, which then holds a
        session of this listener (if the gateway gives any); return whether the gateway
        resumed one of the client's sessions meanwhile (the first probe is a full handshake,
        the next ones offer the session the one before received)."""
        resumed = []

        def judge(outcome: Outcome) -> str | None:
            resumed.append(bool(resumption.reused))
            return judge_ok(outcome, namespace=self.namespace, service=service)

        self._eventually(port, sni, cert, {**request, "resumption": resumption}, judge,
                         expected="HTTP 200 from the backend", what=what)
        return any(resumed)

    def expect_resumed_session_not_served(self, port: int, *, sni: str, cert: Any, resumption: Resumption,
                                          what: str, **request: Any) -> Outcome:
        """Offer ``resumption``'s session and converge on the request not being served.

        Judged by what the client sees: where the gateway resumed the session, any answer
        but one from a backend is a refusal (an alert, a close, a 421); where it did not
        resume (or refused before the handshake completed), this is a full handshake with
        ``cert`` and is judged as every rejection is. Recorded in ``mtls_resumption``.
        """
        if not resumption.resumable:
            raise ValueError(f"{what}: the client holds no session to offer (take_session first)")
        session = resumption.session

        def attempt() -> Outcome:
            resumption.session = session  # offer the session made before, every time
            return self.request(port, sni=sni, cert=cert, resumption=resumption, **request)

        def judge(outcome: Outcome) -> str | None:
            if resumption.reused:
                if isinstance(outcome, ProbeFailure):
                    return f"got {outcome.describe()}; that is not the gateway's answer"
                if reached_backend(outcome):
                    return f"the gateway resumed the session and served the request: {outcome.describe()}"
                return None
            return judge_rejected(outcome, rejection_statuses=self.profile.rejection_statuses,
                                  strict=self.settings.strict_rejection)

        # Each attempt's verdict as it was judged (whether the session was resumed changes
        # from attempt to attempt), for the check that no refused request reached a backend.
        sent: list[SentProbe] = []
        verdicts: dict[int, str | None] = {}  # id(outcome) -> its judgement when it was made

        def judging(outcome: Outcome) -> str | None:
            verdicts[id(outcome)] = why = judge(outcome)
            return why

        context = self._context(port, sni, cert, request)
        self._sent = sent
        try:
            outcome = eventually(attempt, judging, timing=self.settings.timing, progress=self.target._progress,
                                 what=f"{context}, offering a session made before: the request not to be served",
                                 changed_at=self.changed_at)
        except ExpectationFailed as exc:
            raise ExpectationFailed(
                f"{what}: {context}, offering a session made before: expected the gateway to refuse to resume "
                f"it or to refuse the connection, never to serve the request on it; {exc}\n"
                f"reproduce: {self._reproduce(port, sni, cert, request)} (with the session saved by "
                f"curl's --ssl-sessions, or openssl s_client -sess_out/-sess_in)", evidence=exc.evidence) from None
        finally:
            self._sent = None
        deciding = deciding_attempts(sent, lambda outcome: verdicts[id(outcome)])
        self._expect_not_forwarded(deciding, time.monotonic(), port=port, sni=sni, cert=cert,
                                   request=request, what=what)
        if resumption.reused:
            how = f"resumed, then refused: {where_rejected(outcome)}"
        elif resumption.reused is None:
            how = f"refused before the handshake completed: {where_rejected(outcome)}"
        else:
            how = f"not resumed; the full handshake was refused: {where_rejected(outcome)}"
        record(RESUMPTION_PROPERTY, f"{context}, offering a session made before: {how}")
        return outcome

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
__all__ = ["REJECTION_PROPERTY", "REJECTION_RULE_PROPERTY", "RESUMPTION_PROPERTY", "VERDICT_NOTE_PROPERTY",
           "PROBE_ID_PARAMETER", "property_of", "record", "where_rejected", "Pair", "Sibling", "Settings",
           "GatewayClient"]
