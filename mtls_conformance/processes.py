"""Child processes that cannot outlive the run, and SIGTERM handled like Ctrl-C.

The harness starts gateways, backends, nginx and kubectl in sessions of their own, so
that a Ctrl-C typed in the terminal reaches pytest only and pytest stops them in order.
Two things would still leave them behind: a run ended by SIGTERM (CI's ``timeout``, a
job cancelled), which by default kills pytest before any teardown; and pytest itself
killed outright. ``terminate_as_interrupt`` makes SIGTERM take Ctrl-C's path through
pytest's teardown; ``spawn`` asks the kernel to end each child with its parent as a
last resort (only the temporary files of such a child are then left).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import threading
from collections.abc import Iterator

__all__ = ["finish_uninterrupted", "spawn", "terminate_as_interrupt", "uninterrupted"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux: the teardown remains the only stop
        pass


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` in a session of its own, ended by the kernel if we die.

    The parent-death signal fires when the *thread* that forked the child ends, so it is
    set only from the main thread, where pytest runs tests and fixtures (also under
    xdist); a child started from a helper thread relies on the teardown alone.
    """
    kwargs.setdefault("start_new_session", True)
    if threading.current_thread() is threading.main_thread():
        kwargs.setdefault("preexec_fn", _die_with_parent)
    return subprocess.Popen(argv, **kwargs)


def terminate_as_interrupt() -> None:
    """Let SIGTERM end the run the way Ctrl-C does: through every fixture's teardown.

    Only when nobody else handles SIGTERM, and only in the main thread (where signal
    handlers run). The first SIGTERM interrupts; later ones are ignored so that the
    teardown it started can finish (SIGKILL remains for a run that must die at once).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)


def _held(signum, frame) -> None:
    _HELD.append(signum)


_HELD: list[int] = []


def finish_uninterrupted() -> None:
    """From now to the end of the run, Ctrl-C and SIGTERM are noted, not acted on.

    Called when the session's teardown starts: each remaining cleanup (gateway, backends,
    namespaces, test hosts, files) is bounded in time, and a KeyboardInterrupt raised in
    one of them would skip all the ones after it. SIGKILL still ends a run at once.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _held)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while a cleanup runs, then deliver them.

    A cleanup cut short by KeyboardInterrupt leaves exactly what it was removing (a
    process, a namespace, a directory of keys). A signal that arrives meanwhile is
    delivered as KeyboardInterrupt once the block is done, unless the session is already
    finishing (``finish_uninterrupted``). Outside the main thread, where no signal
    handler runs, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _held) for sig in (signal.SIGINT, signal.SIGTERM)}
    before = len(_HELD)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    arrived = _HELD[before:]
    if arrived and previous[signal.SIGINT] is not _held:
        del _HELD[before:]
        if signal.SIGTERM in arrived and previous[signal.SIGTERM] not in (signal.SIG_DFL, signal.SIG_IGN):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as terminate_as_interrupt's handler does
        raise KeyboardInterrupt("SIGTERM" if signal.SIGTERM in arrived else "SIGINT")
