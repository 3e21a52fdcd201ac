"""Hooks other plugins may implement for the harness."""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["pytest_mtls_process_host"]


@pytest.hookspec(firstresult=True)
def pytest_mtls_process_host(config: pytest.Config) -> Any:
    """A test host for ``--backend-mode=local-process``: where the kubernetes target runs
    backends as processes for a gateway on this machine (the API server refuses loopback
    endpoints, so they need an address of their own).

    Return an object with ``create()`` (called once, before any test; raise
    ``mtls_conformance.target.TargetError`` saying why it cannot), ``destroy()``, ``address``
    (the IP the gateway reaches) and ``command_prefix`` (argv that runs a command there).
    The project's own is a network namespace: testkit/testhost.py.
    """
