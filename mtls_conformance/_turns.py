"""Checks that wait at the same time, taking turns: the parts after ``yield`` of the
configure_ahead setups (_ahead.py ``_finish_setups``).

Why: run one after another, a setup whose check waits out its window against a broken
gateway delays every later setup's change by that window, and each later test then waits
its own window after that change (issue 21, benchmarks/results-2026-12-06-two-part.md:
the four faults that were not within 2x plus one window). Run together, their waits
overlap.

Together, not in parallel: one job runs at a time, and hands its turn over only while it
waits for the gateway (``pause`` between a check's attempts, ``waiting`` around a watch),
as a coroutine would at an ``await``. The harness's state (the target's objects and
change scope, probe records, port-forwards, a local gateway's files) is therefore never
used by two jobs at once, and code that never waits never notices the others. A job
that gets its turn back late has only given the gateway more time: every window runs
from a change, never from when an observation was due.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_local = threading.local()


class _Stopped(BaseException):
    """The run was interrupted while this job waited: it stops at its next wait."""


class Turns:
    """Run jobs together, one at a time, each handing over its turn while it waits.

    ``save()`` returns the shared state a job runs in (the change scope), and
    ``restore(state)`` sets it back when a job gets its turn again.
    """

    def __init__(self, save: Callable[[], Any], restore: Callable[[Any], None]) -> None:
        self._turn = threading.Lock()
        self._save = save
        self._restore = restore
        self._stopped = False

    def run(self, jobs: list[Callable[[], T]]) -> list[T]:
        """Each job's result, in order. What a job raised is raised here (the first one);
        an interrupt here stops every job at its next wait, and is raised once all have."""
        start = self._save()
        results: list[Any] = [None] * len(jobs)
        errors: list[BaseException | None] = [None] * len(jobs)

        handed: list[threading.Event] = [threading.Event() for _ in jobs]

        def work(index: int, job: Callable[[], T]) -> None:
            _local.turns, _local.handed = self, handed[index]
            try:
                with self._turn:
                    if self._stopped:
                        raise _Stopped
                    self._restore(start)
                    results[index] = job()
            except BaseException as exc:  # handed to the main thread, which raises it
                errors[index] = exc
            finally:
                handed[index].set()

        threads = [threading.Thread(target=contextvars.copy_context().run, args=(work, index, job),
                                    name=f"mtls-setup-{index}", daemon=True)
                   for index, job in enumerate(jobs)]
        try:
            # In order: each job runs until it first waits, then the next one starts. Jobs
            # that never wait run exactly as one after another.
            for thread, first_wait in zip(threads, handed):
                thread.start()
                first_wait.wait()
            for thread in threads:
                thread.join()  # interruptible: Ctrl-C reaches the main thread here
        except BaseException:
            self._stopped = True
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
            raise
        finally:
            self._restore(start)
        for error in errors:
            if error is not None:
                raise error
        return results

    @contextlib.contextmanager
    def _handed_over(self) -> Iterator[None]:
        state = self._save()
        self._turn.release()
        _local.handed.set()
        try:
            yield
        finally:
            self._turn.acquire()
            self._restore(state)
            if self._stopped:
                raise _Stopped


def _current() -> Turns | None:
    return getattr(_local, "turns", None)


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """A block that only waits for something outside the harness: other jobs take their
    turns meanwhile. Outside ``Turns.run``, nothing happens."""
    turns = _current()
    if turns is None:
        yield
        return
    with turns._handed_over():
        yield


def pause(seconds: float) -> None:
    """``time.sleep``, during which other jobs take their turns."""
    with waiting():
        time.sleep(seconds)


def waiting_for(items: Iterable[T]) -> Iterator[T]:
    """``items`` (a watch's events), other jobs taking their turns while each is awaited."""
    iterator = iter(items)
    while True:
        with waiting():
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item
