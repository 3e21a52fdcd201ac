"""A scenario module's configuration is applied before its first test runs (plugin.py
``_mtls_configure_ahead``): its module fixtures, then its tests' configure_ahead setups;
a setup's error is its own test's failure, and tests that will be skipped are not set up."""

from __future__ import annotations

import textwrap

import pytest

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


# -- later modules configured while earlier ones run (--configure-ahead, _ahead.py) ------
#: What each of the three modules starts with: an event log the test reads.
PREAMBLE = '''
import os
import pytest

pytestmark = pytest.mark.features("Gateway")


def event(text):
    with open(os.environ["AHEAD_EVENTS"], "a") as f:
        f.write(text + "\\n")
'''

FIRST = PREAMBLE + '''

@pytest.fixture(scope="module")
def own(mtls_target, mtls_namespace):
    mtls_target.apply({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "first", "namespace": mtls_namespace}, "data": {}})
    event("first configured")


def test_first(own, mtls_target):
    event("first test")
    # The later modules' changes are theirs: this module's window still runs from its own.
    event(f"first window from its own change: {mtls_target.last_change < float(os.environ['AHEAD_T'] or 0)}")
'''

SECOND = PREAMBLE + '''

@pytest.fixture(scope="module")
def made(mtls_target, mtls_namespace, request):
    mtls_target.apply({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "second", "namespace": mtls_namespace}, "data": {}})
    os.environ["AHEAD_T"] = repr(mtls_target.last_change)
    event(f"second configured in {request.module.__name__}")
    request.addfinalizer(lambda: event("second finalizer"))
    yield {"namespace": mtls_namespace}
    event("second torn down")


@pytest.fixture(scope="module")
def failing(made):
    raise RuntimeError("the fixture's own error")


@pytest.fixture(scope="module")
def only_in_a_setup(mtls_namespace):
    event("fixture only a setup asks for")
    return mtls_namespace


def setup(only_in_a_setup):
    return only_in_a_setup


@pytest.mark.configure_ahead(setup=setup)
def test_setup_of_its_own(mtls_configured, made):
    assert mtls_configured == made["namespace"]


def test_second(made, mtls_target):
    event("second test")
    assert mtls_target.last_change == float(os.environ["AHEAD_T"])


def test_second_again(made):
    event("second test again")


def test_with_a_failing_fixture(failing):
    pass
'''

THIRD = PREAMBLE + '''

@pytest.fixture(scope="module")
def odd(request):
    event(f"third configured ({'odd' in request.fixturenames})")


def test_third(odd):
    event("third test")
'''


def _three_modules(tmp_path, monkeypatch, *options):
    for name, text in (("test_a_first.py", FIRST), ("test_b_second.py", SECOND), ("test_c_third.py", THIRD)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    events = tmp_path / "events"
    monkeypatch.setenv("AHEAD_EVENTS", str(events))
    monkeypatch.setenv("AHEAD_T", "")
    run = run_pytest(str(tmp_path), "-p", "no:xdist", "-q", "-p", "no:randomly", *options,
                     f"--gateway-command={refgateway_command()}", junit=tmp_path / "junit.xml", timeout=120)
    return run, events.read_text().splitlines() if events.exists() else []


def test_later_modules_are_configured_before_the_first_module_runs(tmp_path, monkeypatch):
    run, events = _three_modules(tmp_path, monkeypatch)
    assert run.outcomes == {
        "test_a_first.py::test_first": "passed",
        "test_b_second.py::test_setup_of_its_own": "passed",
        "test_b_second.py::test_second": "passed",
        "test_b_second.py::test_second_again": "passed",
        "test_b_second.py::test_with_a_failing_fixture": "failed",  # an error at setup
        "test_c_third.py::test_third": "passed",
    }, run.stdout[-3000:]
    # The third module's fixture asks its request for what only pytest's setup gives.
    assert events == ["first configured", "second configured in test_b_second", "fixture only a setup asks for",
                      "first test", "first window from its own change: True",
                      "second test", "second test again", "second torn down", "second finalizer",
                      "third configured (True)", "third test"], run.stdout[-3000:]
    # A fixture's error made ahead is the error its tests see, as without configuring ahead.
    assert "the fixture's own error" in run.messages["test_b_second.py::test_with_a_failing_fixture"]
    assert "configured 1 scenario module(s) ahead" in run.stdout
    assert "test_c_third.py: configured when it runs, not ahead" in run.stdout


def test_configure_ahead_0_configures_each_module_when_it_starts(tmp_path, monkeypatch):
    run, events = _three_modules(tmp_path, monkeypatch, "--configure-ahead=0")
    assert events[:4] == ["first configured", "first test", "first window from its own change: False",
                          "second configured in test_b_second"], run.stdout[-3000:]
    assert "(--configure-ahead)" not in run.stdout and "not ahead" not in run.stdout


def test_a_run_stopped_early_tears_down_what_it_configured_ahead(tmp_path, monkeypatch):
    (tmp_path / "test_a_first.py").write_text(textwrap.dedent(FIRST).replace(
        'event("first test")', 'event("first test"); assert False, "stop here"'))
    (tmp_path / "test_b_second.py").write_text(textwrap.dedent(SECOND))
    events = tmp_path / "events"
    monkeypatch.setenv("AHEAD_EVENTS", str(events))
    monkeypatch.setenv("AHEAD_T", "")
    run = run_pytest(str(tmp_path), "-p", "no:xdist", "-q", "-x", f"--gateway-command={refgateway_command()}",
                     junit=tmp_path / "junit.xml", timeout=120)
    assert run.outcomes == {"test_a_first.py::test_first": "failed"}, run.stdout[-3000:]
    assert events.read_text().splitlines() == [
        "first configured", "second configured in test_b_second", "fixture only a setup asks for", "first test",
        "second torn down", "second finalizer"], run.stdout[-3000:]


def test_a_bad_configure_ahead_value_is_one_clear_error(tmp_path):
    run = run_pytest(str(tmp_path), "--configure-ahead=some", "-p", "no:xdist", junit=tmp_path / "junit.xml",
                     timeout=60, check=False)
    assert run.returncode == 4 and "--configure-ahead: expected a number of scenario modules" in run.stderr


# -- setups in two parts: configure up to yield, check and change after it ------------------
TWO_PART = PREAMBLE + '''

def checked_then_changed(mtls_target, mtls_namespace):
    event("{m} configured")
    yield
    event(f"{m} checked in {{mtls_target.change_scope.rsplit('/', 1)[-1]}}")
    mtls_target.apply({{"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {{"name": "{m}-own", "namespace": mtls_namespace}}, "data": {{}}}})
    os.environ["{M}_OWN"] = repr(mtls_target.last_change)
    return "{m}"


@pytest.mark.configure_ahead(setup=checked_then_changed)
def test_{m}(mtls_configured, mtls_target):
    event(f"{m} test {{mtls_configured}} in {{mtls_target.change_scope.rsplit('/', 1)[-1]}}")
'''
TWO_PART_A = TWO_PART.format(m="a", M="A")
TWO_PART_B = TWO_PART.format(m="b", M="B") + '''

def session(mtls_target):
    event("b session configured")
    yield
    event("b session taken")
    return "s"


def twice():
    yield
    yield


@pytest.mark.configure_ahead(setup=session, at_module_start=True)
def test_session(mtls_configured):
    event(f"b session test {mtls_configured}")


@pytest.mark.configure_ahead(setup=twice)
def test_twice(mtls_configured):
    pass


def test_plain(mtls_target):
    # test_b's own change is its own: the module's other tests do not wait for it.
    event(f"b plain counts test_b's change: {mtls_target.last_change >= float(os.environ['B_OWN'])}")
'''


def test_setups_check_and_change_once_every_module_is_configured_in_their_tests_scope(tmp_path, monkeypatch):
    for name, text in (("test_a.py", TWO_PART_A), ("test_b.py", TWO_PART_B)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    events = tmp_path / "events"
    monkeypatch.setenv("AHEAD_EVENTS", str(events))
    run = run_pytest(str(tmp_path), "-p", "no:xdist", "-q", "-p", "no:randomly",
                     f"--gateway-command={refgateway_command()}", junit=tmp_path / "junit.xml", timeout=120)
    assert run.outcomes == {"test_a.py::test_a": "passed", "test_b.py::test_b": "passed",
                            "test_b.py::test_session": "passed", "test_b.py::test_twice": "failed",
                            "test_b.py::test_plain": "passed"}, run.stdout[-3000:]
    assert events.read_text().splitlines() == [
        "a configured", "b configured", "b session configured",  # every module's first part
        "a checked in test_a.py::test_a", "b checked in test_b.py::test_b",  # then the rest, each its test's
        "a test a in test_a.py::test_a",
        "b session taken",  # at_module_start: when test_b.py starts
        "b test b in test_b.py::test_b", "b session test s", "b plain counts test_b's change: False",
    ], run.stdout[-3000:]
    assert "yields more than once" in run.messages["test_b.py::test_twice"]
    assert "checked and changed the configuration of 3 test(s)" in run.stdout  # a's, b's and twice's


WAITS = PREAMBLE + """
from mtls_conformance.target import ObjectRef


def scope(target):
    return target.change_scope.rsplit("/", 1)[-1]


def waits_for_b(mtls_target, mtls_namespace):
    os.environ["A_NS"] = mtls_namespace
    yield
    event(f"a waits in {scope(mtls_target)}")
    # A status wait as the scenarios' are, on what only b's setup makes: ended by b's
    # change if b gets its turn meanwhile, by the timeout if b waits for a to finish.
    mtls_target.wait_for(ObjectRef("ConfigMap", "from-b", mtls_namespace, api_version="v1"),
                         lambda obj: None if obj else "absent", what="b's ConfigMap", timeout=60)
    event(f"a saw b's change in {scope(mtls_target)}")


@pytest.mark.configure_ahead(setup=waits_for_b)
def test_a(mtls_configured):
    pass
"""

CHANGES = """

def changes(mtls_target):
    yield
    mtls_target.apply({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "from-b", "namespace": os.environ["A_NS"]}, "data": {}})
    event(f"b changed in {mtls_target.change_scope.rsplit('/', 1)[-1]}")


@pytest.mark.configure_ahead(setup=changes)
def test_b(mtls_configured):
    pass
"""


@pytest.mark.parametrize("ahead", ["all", "0"])
def test_a_setup_that_waits_does_not_hold_back_the_changes_of_the_setups_after_it(tmp_path, monkeypatch, ahead):
    # Against a broken gateway a setup's check waits out its window; the setups after it
    # must make their changes meanwhile, or each of their tests waits a window more
    # (_turns.py). Shown by order, not by time: a waits for what b's setup makes, after
    # a's in the same turns; one after another, a would time out before b ran.
    # Without a lookahead only a module's own setups run together, so there b is a's.
    if ahead == "0":
        (tmp_path / "test_a.py").write_text(textwrap.dedent(WAITS + CHANGES))
    else:
        (tmp_path / "test_a.py").write_text(textwrap.dedent(WAITS))
        (tmp_path / "test_b.py").write_text(textwrap.dedent(PREAMBLE + CHANGES))
    events = tmp_path / "events"
    monkeypatch.setenv("AHEAD_EVENTS", str(events))
    run = run_pytest(str(tmp_path), "-p", "no:xdist", "-q", "-p", "no:randomly", f"--configure-ahead={ahead}",
                     f"--gateway-command={refgateway_command()}", junit=tmp_path / "junit.xml", timeout=120)
    assert set(run.outcomes.values()) == {"passed"} and len(run.outcomes) == 2, run.stdout[-3000:]
    b_module = "test_a.py" if ahead == "0" else "test_b.py"
    assert events.read_text().splitlines() == [
        "a waits in test_a.py::test_a", f"b changed in {b_module}::test_b", "a saw b's change in test_a.py::test_a",
    ], run.stdout[-3000:]
