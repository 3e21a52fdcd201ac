"""Judging probe outcomes, and converging on them.

Judges are pure functions: an outcome in, ``None`` when it meets the expectation or a
sentence saying what was seen instead. ``eventually`` repeats a probe until its judge
decides, because a gateway applies configuration asynchronously: several accepted
results in a row while the gateway may still be converging on the last change, one once
it has had a full consistency window since; the last outcome is the evidence.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TypeVar

from .probe import Outcome, ProbeFailure, Rejection, Response
from ._turns import pause

T = TypeVar("T")
Judge = Callable[[T], "str | None"]

#: Rejections that show the listener did not serve the client at all, rather than that
#: it refused the client's certificate. They only count where a listener may be down.
NOT_SERVING = ("refused",)

#: The pause after a rejected observation while the gateway may still be converging:
#: doubling from the first to the second number of seconds.
MISS_PAUSE = (0.02, 0.2)
#: How long a check may wait before it says what it waits for (a third of the window if less).
PROGRESS_AFTER = 2.0


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long to wait, modelled on the upstream suite's TimeoutConfig."""

    max_time_to_consistency: float = 30.0
    required_consecutive: int = 3
    request_timeout: float = 10.0
    condition_timeout: float = 60.0


class ExpectationFailed(AssertionError):
    """An expectation was not met; the message holds the evidence."""

    def __init__(self, message: str, *, evidence: Outcome | None = None) -> None:
        super().__init__(message)
        self.evidence = evidence


def echo_header(response: Response, name: str) -> str | None:
    """A request header as the echo backend saw it (echo-basic canonicalises names)."""
    data = response.json or {}
    for key, values in (data.get("headers") or {}).items():
        if key.lower() == name.lower():
            return values[0] if isinstance(values, list) and values else values
    return None


def reached_backend(outcome: Outcome) -> bool:
    """Whether the answer came from an echo backend rather than from the gateway itself."""
    return isinstance(outcome, Response) and isinstance(outcome.json, dict) and "namespace" in outcome.json


def echo_tls(response: Response) -> dict | None:
    """The ``tls`` block of an echo backend's answer: absent when the request came in plaintext."""
    tls = (response.json or {}).get("tls")
    return tls if isinstance(tls, dict) else None


def backend_saw_tls(*, sni: str) -> Callable[[Response], str | None]:
    """A check for expect_ok: the backend got the request over TLS, with this SNI."""

    def check(response: Response) -> str | None:
        tls = echo_tls(response)
        if tls is None:
            return "the backend got the request in plaintext; expected TLS from the gateway"
        if tls.get("serverName") != sni:
            return (f"the backend saw SNI {tls.get('serverName')!r}; expected {sni!r}, the "
                    f"BackendTLSPolicy hostname")
        return None

    return check


def backend_saw_plaintext(response: Response) -> str | None:
    """A check for expect_ok: the backend got the request in plaintext (no policy applies)."""
    tls = echo_tls(response)
    if tls is not None:
        return f"the backend got the request over TLS (SNI {tls.get('serverName')!r}); expected plaintext"
    return None


def _probe_failed(outcome: Outcome) -> str | None:
    """Every judge's first question: did the probe itself fail? Then nothing was judged."""
    if isinstance(outcome, ProbeFailure):
        return f"got {outcome.describe()}; that is not the gateway's answer, so the check could not be made"
    return None


def judge_backend_refused(outcome: Outcome) -> str | None:
    """The gateway would not use a backend: an HTTP 5xx from the gateway itself.

    For a BackendTLSPolicy that cannot be honoured the specification asks for a 5xx; for a
    backend certificate that fails verification it leaves the error to the implementation,
    and a 5xx is what every known implementation answers (refgateway and nginx: 502).
    """
    if (why := _probe_failed(outcome)) is not None:
        return why
    if isinstance(outcome, Rejection):
        return f"got {outcome.describe()}: the gateway must answer the client with an HTTP 5xx"
    if reached_backend(outcome):
        how = "" if echo_tls(outcome) is not None else " in plaintext"
        return f"the backend answered {outcome.describe()}: the request was let through{how}"
    if not 500 <= outcome.status <= 599:
        return f"got {outcome.describe()}, expected an HTTP 5xx from the gateway"
    return None


def judge_ok(outcome: Outcome, *, namespace: str | None = None,
             service: str | None = None) -> str | None:
    """HTTP 200 from an echo backend (of ``namespace``, and of ``service`` when given: a backend
    that does not say which service it is does not pass a service check)."""
    if (why := _probe_failed(outcome)) is not None:
        return why
    if not isinstance(outcome, Response):
        return f"got {outcome.describe()}"
    if outcome.status != 200:
        return f"got {outcome.describe()}"
    if not reached_backend(outcome):
        return f"got {outcome.describe()} but the body is not an echo backend's answer"
    data = outcome.json or {}
    if namespace is not None and data.get("namespace") != namespace:
        return f"got HTTP 200 from a backend in namespace {data.get('namespace')!r}, expected {namespace!r}"
    if service is not None and data.get("service") != service:
        if not data.get("service"):
            return (f"got HTTP 200 from a backend that does not say which service it is; expected "
                    f"service {service!r}")
        return f"got HTTP 200 from service {data.get('service')!r}, expected {service!r}"
    return None


def judge_rejected(outcome: Outcome, *, rejection_statuses: frozenset[int] = frozenset(),
                   strict: bool = False, listener_may_be_down: bool = False) -> str | None:
    """A client certificate was refused by the gateway, by whatever means a client can see.

    Only what the gateway did counts. Transport-level refusals: a TLS alert received from
    the listener during the handshake or on the first read, if the alert is about the
    client certificate (``CERTIFICATE_ALERTS``: a ``protocol version`` or ``unrecognized
    name`` alert refuses something else), a reset, a close without a response. An HTTP
    status counts only where the implementation's profile says it answers refused
    certificates that way (nginx: 400, 495, 496), never under ``strict`` (the upstream
    suite's rule), and never when the request reached a backend. A failure of the probe
    itself (its own verification of the listener's certificate, ALPN, HTTP parsing, local
    errors) never counts.
    """
    if (why := _probe_failed(outcome)) is not None:
        return why
    if isinstance(outcome, Rejection):
        if outcome.kind in NOT_SERVING and not listener_may_be_down:
            return f"got {outcome.describe()}: the listener is not serving at all"
        if outcome.kind == "timeout":
            return f"got {outcome.describe()}: no answer is not a rejection"
        if outcome.kind == "alert" and not outcome.certificate_alert:
            return (f"got {outcome.describe()}: the listener refused something other than the client "
                    f"certificate ({outcome.alert}), which is not a certificate rejection")
        return None
    if reached_backend(outcome):
        return f"the backend answered {outcome.describe()}: the request was let through"
    if not strict and outcome.status in rejection_statuses:
        return None
    rule = " (--strict-rejection: only a transport-level rejection counts)" if strict else ""
    return f"got {outcome.describe()}{rule}"


def eventually(attempt: Callable[[], T], judge: Callable[[T], str | None], *, timing: Timing,
               consecutive: int | None = None,
               progress: Callable[[str], None] | None = None, what: str = "",
               changed_at: Callable[[], float | None] | None = None,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = pause) -> T:
    """Repeat ``attempt`` until ``judge`` decides, within a consistency window that runs
    from the last configuration change.

    ``changed_at()``: when the harness last changed anything the gateway reads (on the
    ``clock``; Target.last_change), or None when unknown; then the window runs from the
    moment this check began, as upstream's does for every check. The gateway has
    ``max_time_to_consistency`` from that change to converge:

    - an observation that began inside the window must be followed by more: ``consecutive``
      (default ``required_consecutive``) accepted in a row decide, and a rejected one is
      tried again until the window ends;
    - an observation that began after the window ends, the gateway having been left alone
      for a full window, decides by itself, accepted or not.

    A check made long after its Gateway was configured is therefore decided by its first
    observation, a correct one as a broken one; a check right after a change waits for the
    gateway as long as before. Raises ExpectationFailed with the last judgement, how long
    the gateway had had since the change and how many attempts were made. No pause between
    attempts that succeed; a short one after a miss, so a gateway that is still converging
    is not flooded.
    """
    needed = consecutive or timing.required_consecutive
    window = timing.max_time_to_consistency
    start = clock()
    streak = 0
    attempts = 0
    announced = False
    pause = MISS_PAUSE[0]
    while True:
        changed = changed_at() if changed_at is not None else None
        origin = start if changed is None else changed
        began = clock()
        settled = began - origin >= window
        result = attempt()
        attempts += 1
        why = judge(result)
        if why is None:
            streak += 1
            if streak >= needed or settled:
                return result
            continue
        streak = 0
        if settled:
            since = ("since the check began" if changed is None
                     else "since the harness's last configuration change")
            raise ExpectationFailed(
                f"{why} (after {attempts} attempts in {clock() - start:.1f} s; the gateway had had "
                f"{began - origin:.1f} s {since}, a whole --max-time-to-consistency of {window:g} s)",
                evidence=result if isinstance(result, (Response, Rejection, ProbeFailure)) else None)
        now = clock()
        if progress and not announced and now - start > min(PROGRESS_AFTER, window / 3):
            # Which check waits, and why: the person watching should know how long, and
            # how to shorten it.
            progress(f"waiting up to {window:g} s for {what or 'convergence'}; so far {why} "
                     f"(--max-time-to-consistency shortens this wait); {origin + window - now:.0f} s of it left, "
                     f"counted from the last configuration change")
            announced = True
        # Short pauses first: a local gateway converges in tens of milliseconds, and a
        # fixed 0.1 s pause was most of the harness's time beside it (benchmarks/suite_speed.py).
        sleep(max(0.0, min(pause, origin + window - now)))
        pause = min(pause * 2, MISS_PAUSE[1])


#: The public names.
__all__ = ["Judge", "NOT_SERVING", "Timing", "ExpectationFailed", "echo_header", "reached_backend",
           "echo_tls", "backend_saw_tls", "backend_saw_plaintext", "judge_backend_refused",
           "judge_ok", "judge_rejected", "eventually", "pause"]
