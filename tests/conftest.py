"""Options of the project's own tests (not of the conformance plugin)."""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption(
        "--selfcheck", choices=("quick", "exact"), default="quick",
        help="how tests/selfcheck proves every scenario can fail: 'quick' (default, README command 2) "
             "runs each scenario test once, under the most targeted fault that must fail it; 'exact' runs "
             "the whole suite under every fault and requires exactly the listed failures "
             "(tox -e selfcheck, and the nightly workflow)")
