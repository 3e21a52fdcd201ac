"""A scenario module's configuration is applied before its first test runs (plugin.py
``_mtls_configure_ahead``): its module fixtures, then its tests' configure_ahead setups;
a setup's error is its own test's failure, and tests that will be skipped are not set up."""

from __future__ import annotations

import textwrap

from testkit.child_run import refgateway_command, run_pytest

MODULE = '''
import pytest

pytestmark = pytest.mark.features("Gateway")
EVENTS = []


@pytest.fixture(scope="module")
def first():
    EVENTS.append("first fixture")


@pytest.fixture(scope="module")
def later():
    EVENTS.append("later fixture")


@pytest.fixture(scope="module")
def of_the_last_test():
    EVENTS.append("fixture of the last test")


@pytest.fixture(scope="module")
def of_a_skipped_test():
    EVENTS.append("fixture of a skipped test")


def numbered(later, n):
    EVENTS.append(f"setup {n}")
    return n * 10


def broken(first):
    EVENTS.append("setup broken")
    raise RuntimeError("the setup's own error")


def test_first(first):
    # The tests' module fixtures in the order of the tests, then the setups (which ask for
    # their own fixtures: later).
    assert EVENTS == ["first fixture", "fixture of the last test", "later fixture", "setup 1", "setup 2",
                      "setup broken"]


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.configure_ahead(setup=numbered)
def test_numbered(n, mtls_configured):
    assert mtls_configured == n * 10


@pytest.mark.configure_ahead(setup=broken)
def test_broken(mtls_configured):
    pass


@pytest.mark.skip(reason="skipped")
def test_skipped(of_a_skipped_test):
    pass


@pytest.mark.features("FrontendResumptionScopedToValidation")
def test_of_an_unsupported_feature(of_a_skipped_test):
    pass


def test_last(of_the_last_test):
    assert "fixture of a skipped test" not in EVENTS
'''


def test_module_configuration_is_applied_before_the_first_test(tmp_path):
    path = tmp_path / "test_ahead.py"
    path.write_text(textwrap.dedent(MODULE))
    run = run_pytest(str(path), "-p", "no:xdist", "-q", f"--gateway-command={refgateway_command()}",
                     "--exempt-features=FrontendResumptionScopedToValidation", junit=tmp_path / "junit.xml",
                     timeout=120)
    assert run.outcomes == {
        "test_ahead.py::test_first": "passed",
        "test_ahead.py::test_numbered[1]": "passed",
        "test_ahead.py::test_numbered[2]": "passed",
        "test_ahead.py::test_broken": "failed",
        "test_ahead.py::test_skipped": "skipped",
        "test_ahead.py::test_of_an_unsupported_feature": "skipped",
        "test_ahead.py::test_last": "passed",
    }, run.stdout[-3000:]
    assert "the setup's own error" in run.messages["test_ahead.py::test_broken"]


PER_TEST = '''
import os
import pytest

pytestmark = pytest.mark.features("Gateway")


def record(n):
    with open(os.environ["AHEAD_EVENTS"], "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} setup {n}\\n")
    return n


@pytest.mark.parametrize("n", range(6))
@pytest.mark.configure_ahead(setup=record)
def test_numbered(n, mtls_configured):
    assert mtls_configured == n
'''


def test_under_xdist_load_each_setup_runs_once_on_the_worker_of_its_test(tmp_path, monkeypatch):
    """--dist load hands a worker single tests: configuring the module's other tests ahead
    there would configure each test on every worker."""
    path = tmp_path / "test_per_test.py"
    path.write_text(textwrap.dedent(PER_TEST))
    events = tmp_path / "events"
    monkeypatch.setenv("AHEAD_EVENTS", str(events))
    run = run_pytest(str(path), "-n", "2", "--dist", "load", "-q", f"--gateway-command={refgateway_command()}",
                     junit=tmp_path / "junit.xml", timeout=120)
    assert set(run.outcomes.values()) == {"passed"} and len(run.outcomes) == 6, run.stdout[-3000:]
    setups = sorted(line.split(" ", 1)[1] for line in events.read_text().splitlines())
    assert setups == [f"setup {n}" for n in range(6)], events.read_text()
