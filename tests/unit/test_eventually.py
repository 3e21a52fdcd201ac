"""The consistency window of ``eventually``: it runs from the last configuration change.

A fake clock stands in for time: each attempt and each pause advance it, so the rule is
shown exactly, without waiting. What is checked:

- inside the window (measured from the change) today's convergence rule holds: several
  accepted answers in a row, and a rejected one is tried again until the window ends;
- once the gateway has had a full window since the change, one answer decides, either
  way, and a failure says how long the gateway had and what it answered;
- without a known change, the window runs from the start of the check (upstream's rule);
- a change made while a check waits moves the end of its window;
- status waits (Target.wait_for) count their timeout from the last change too.
"""

from __future__ import annotations

import time

import pytest

from mtls_conformance.expect import ExpectationFailed, Timing, eventually
from mtls_conformance.target import ObjectRef, Target, WaitTimeout

WINDOW = 30.0
TIMING = Timing(max_time_to_consistency=WINDOW, required_consecutive=3)


class Clock:
    """Monotonic time that only moves when the code under test probes or pauses."""

    def __init__(self, now: float = 1000.0, per_attempt: float = 0.01) -> None:
        self.now = now
        self.per_attempt = per_attempt
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.pauses.append(seconds)
        self.now += seconds


class Gateway:
    """Answers "ok" from ``converged_at`` on (clock time), "bad" before; counts attempts."""

    def __init__(self, clock: Clock, converged_at: float = float("-inf"), answer: str = "ok") -> None:
        self.clock = clock
        self.converged_at = converged_at
        self.answer = answer
        self.attempts = 0

    def __call__(self) -> str:
        self.attempts += 1
        seen = self.answer if self.clock.now >= self.converged_at else "bad"
        self.clock.now += self.clock.per_attempt
        return seen


def judge(answer: str) -> str | None:
    return None if answer == "ok" else f"got {answer!r}"


def run(clock: Clock, gateway: Gateway, changed: float | None):
    return eventually(gateway, judge, timing=TIMING, changed_at=lambda: changed, clock=clock, sleep=clock.sleep)


def test_a_gateway_stable_for_a_full_window_is_decided_by_one_accepted_answer():
    clock = Clock()
    gateway = Gateway(clock)
    assert run(clock, gateway, changed=clock.now - WINDOW - 1) == "ok"
    assert gateway.attempts == 1


def test_a_gateway_stable_for_a_full_window_fails_on_its_first_wrong_answer_at_once():
    clock = Clock()
    gateway = Gateway(clock, answer="wrong")
    start = clock.now
    with pytest.raises(ExpectationFailed) as failure:
        run(clock, gateway, changed=start - 100)
    assert gateway.attempts == 1
    assert clock.now - start < 1
    message = str(failure.value)
    assert "got 'wrong'" in message  # what it answered
    assert "had had 100.0 s since the harness's last configuration change" in message
    assert "after 1 attempts" in message


def test_inside_the_window_several_accepted_answers_in_a_row_are_needed():
    clock = Clock()
    gateway = Gateway(clock)
    assert run(clock, gateway, changed=clock.now - 1) == "ok"
    assert gateway.attempts == 3


def test_inside_the_window_a_slow_gateway_gets_until_the_window_ends_from_the_change():
    clock = Clock()
    change = clock.now - 5
    gateway = Gateway(clock, converged_at=change + 20)  # converges 20 s after the change
    assert run(clock, gateway, changed=change) == "ok"
    assert change + 20 <= clock.now < change + 21


def test_a_wrong_answer_inside_the_window_is_retried_until_the_window_from_the_change_ends():
    clock = Clock()
    change = clock.now - 10
    gateway = Gateway(clock, answer="wrong")
    with pytest.raises(ExpectationFailed, match=r"had had 30\.\d s since the harness's last configuration change"):
        run(clock, gateway, changed=change)
    # The window ends 30 s after the change, not 30 s after the check began.
    assert change + WINDOW <= clock.now < change + WINDOW + 1
    assert gateway.attempts > 10  # it kept asking while the gateway might still converge


def test_without_a_known_change_the_window_runs_from_the_start_of_the_check():
    clock = Clock()
    start = clock.now
    gateway = Gateway(clock, answer="wrong")
    with pytest.raises(ExpectationFailed, match="since the check began"):
        run(clock, gateway, changed=None)
    assert start + WINDOW <= clock.now < start + WINDOW + 1


def test_an_accepted_streak_that_reaches_the_end_of_the_window_is_decided_by_the_answer_after_it():
    clock = Clock(per_attempt=0.5)
    change = clock.now - WINDOW + 0.3  # the first answer inside the window, the second after it
    gateway = Gateway(clock)
    run(clock, gateway, changed=change)
    assert gateway.attempts == 2


def test_a_change_while_the_check_waits_moves_the_end_of_its_window():
    clock = Clock()
    first = clock.now - 25
    changes = [first]
    gateway = Gateway(clock, converged_at=first + 40)  # needs the window of the second change

    def changed_at() -> float:
        if clock.now >= first + 20 and len(changes) == 1:
            changes.append(clock.now)  # the harness changed something again
        return changes[-1]

    assert eventually(gateway, judge, timing=TIMING, changed_at=changed_at, clock=clock, sleep=clock.sleep) == "ok"
    assert clock.now >= first + 40


def test_pauses_after_a_miss_start_short_and_stay_bounded():
    clock = Clock()
    gateway = Gateway(clock, answer="wrong")
    with pytest.raises(ExpectationFailed):
        run(clock, gateway, changed=clock.now)
    assert clock.pauses[0] <= 0.02
    assert max(clock.pauses) <= 0.2
    assert clock.pauses[1] > clock.pauses[0]  # backing off while the gateway converges


# -- status waits: the same window rule (Target.wait_for) ------------------------------------


class Recorded(Target):
    """A Target whose objects never get the awaited status; it records each wait's deadline."""

    kind = "recorded"

    def __init__(self) -> None:
        super().__init__()
        self.deadlines: list[float] = []

    def close(self): ...
    def create_namespace(self, name): ...
    def delete_namespace(self, name): ...
    def apply(self, *objects): self.changed()
    def delete(self, *objects): self.changed()
    def get(self, ref): return {"status": {}}
    def publish_service(self, namespace, name, ports): ...
    def listener_address(self, gateway, port): return ("127.0.0.1", port)

    def _observe(self, ref, deadline):
        self.deadlines.append(deadline)
        while True:
            yield self.get(ref)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)


def test_a_status_wait_long_after_the_last_change_is_decided_by_its_first_observation():
    target = Recorded()
    target.apply({})
    target.last_change -= 100  # the change was 100 s ago
    start = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"within 60 s of the harness's last configuration change \(100\.\d s"):
        target.wait_for(ObjectRef("Gateway", "g", "ns"), lambda obj: "no condition", what="Programmed", timeout=60)
    assert time.monotonic() - start < 1


def test_a_status_wait_right_after_a_change_gets_its_whole_timeout_from_the_change():
    target = Recorded()
    target.apply({})
    with pytest.raises(WaitTimeout):
        target.wait_for(ObjectRef("Gateway", "g", "ns"), lambda obj: "no condition", what="Programmed", timeout=0.3)
    assert target.deadlines == [pytest.approx(target.last_change + 0.3, abs=0.05)]


def test_a_change_counts_for_its_own_scope_and_a_trust_store_change_for_every_scope():
    target = Recorded()
    target.change_scope = "a.py"
    target.changed()
    own = target.last_change
    target.change_scope = "b.py"
    assert target.last_change is None  # b.py changed nothing yet: a.py's change is not its
    target.changed()
    assert target.last_change > own
    target.change_scope = "a.py"
    assert target.last_change == own
    target.change_scope = "b.py"
    target.changed(for_all=True)  # the system trust store
    target.change_scope = "a.py"
    assert target.last_change > own


def test_a_tests_scope_counts_its_modules_changes_and_its_own_count_for_it_alone():
    target = Recorded()
    target.change_scope = "a.py"
    target.changed()
    module = target.last_change
    target.change_scope = "a.py::test_x[p::q]"  # a parameter may hold "::" too
    assert target.last_change == module
    target.changed()
    own = target.last_change
    assert own > module
    target.change_scope = "a.py"
    assert target.last_change == module  # the module's other tests do not wait for test_x's change
    target.change_scope = "a.py::test_y"
    assert target.last_change == module
    target.change_scope = "a.py"
    target.changed()
    target.change_scope = "a.py::test_x[p::q]"
    assert target.last_change > own
