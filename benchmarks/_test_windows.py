"""pytest plugin for benchmarks/suite_speed.py: when each test ran (setup to teardown).

Writes one JSON line per test to $SUITE_SPEED_WINDOWS: nodeid, start, end (epoch seconds).
"""

from __future__ import annotations

import json
import os
import time

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.time()
    yield
    path = os.environ.get("SUITE_SPEED_WINDOWS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"nodeid": item.nodeid, "start": start, "end": time.time()}) + "\n")
