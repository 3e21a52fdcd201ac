"""Jobs that take turns (mtls_conformance/_turns.py): one runs at a time, handing over only
while it waits; each keeps its own shared state; errors and Ctrl-C reach the caller."""

from __future__ import annotations

import signal
import threading

import pytest

from mtls_conformance._turns import Turns, pause, waiting


class Scope:
    """Stands for the suite's change scope: one value that every job sets for itself."""

    def __init__(self) -> None:
        self.value = "module"

    def turns(self) -> Turns:
        return Turns(save=lambda: self.value, restore=self.set)

    def set(self, value: str) -> None:
        self.value = value


def test_jobs_that_never_wait_run_one_after_another_in_order():
    log: list[str] = []
    jobs = [lambda name=name: (log.extend([f"{name} starts", f"{name} ends"]), name)[1] for name in "abc"]
    assert Scope().turns().run(jobs) == ["a", "b", "c"]
    assert log == ["a starts", "a ends", "b starts", "b ends", "c starts", "c ends"]


def test_a_waiting_job_lets_the_next_one_run_and_gets_its_state_back():
    scope = Scope()
    log: list[str] = []
    b_done = threading.Event()

    def a() -> str:
        scope.set("a")
        log.append(f"a waits in {scope.value}")
        with waiting():
            b_done.wait(timeout=60)
        log.append(f"a goes on in {scope.value}")
        return "a"

    def b() -> str:
        log.append(f"b starts in {scope.value}")  # the caller's state, not a's
        scope.set("b")
        b_done.set()
        pause(0)  # a may take its turn; b's state is b's again after it
        log.append(f"b ends in {scope.value}")
        return "b"

    assert scope.turns().run([a, b]) == ["a", "b"]
    assert log[:2] == ["a waits in a", "b starts in module"]
    assert sorted(log[2:]) == ["a goes on in a", "b ends in b"]
    assert scope.value == "module"  # the caller's again


def test_only_one_job_runs_at_a_time():
    running: list[int] = []
    overlaps: list[int] = []

    def job() -> None:
        for _ in range(20):
            running.append(1)
            overlaps.append(len(running))
            for _ in range(1000):
                pass
            running.pop()
            pause(0.001)

    Scope().turns().run([job, job, job])
    assert max(overlaps) == 1


def test_what_a_job_raised_is_raised_once_every_job_is_done():
    log: list[str] = []

    def fails() -> None:
        raise ValueError("broken setup")

    def slow() -> None:
        pause(0.05)
        log.append("slow done")

    with pytest.raises(ValueError, match="broken setup"):
        Scope().turns().run([fails, slow])
    assert log == ["slow done"]


def test_ctrl_c_stops_every_job_at_its_next_wait():
    rounds: list[int] = []

    def waits_long() -> None:
        for number in range(2000):
            rounds.append(number)
            pause(0.01)

    def interrupts() -> None:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        Scope().turns().run([waits_long, interrupts])
    assert len(rounds) < 2000
    assert not [t for t in threading.enumerate() if t.name.startswith("mtls-setup-")]


def test_outside_turns_pause_only_sleeps_and_waiting_does_nothing():
    pause(0)
    with waiting():
        pass
