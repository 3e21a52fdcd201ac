"""One node cluster for the whole tier, and the order that lets it be one.

Both modules use the session-scoped ``node`` fixture: one NodeCluster per session
(a start costs a minute or two, and only one node runs on a machine at a time).
test_ctrl_c_stops_everything_it_started starts a node of its own, in a child, as a
human does; so it must run before the shared one starts, or it would wait for the
lock the shared one holds for the rest of the session. pytest_collection_modifyitems
puts it first among the tier's tests, and the tier's tests together (the shared node
is stopped after the last of them, not at the end of the session, so that the tests
after them do not share two cores with an idle cluster). ``trylast``: after
pytest-randomly's shuffle, which would otherwise undo it. Under xdist the tier is one
``xdist_group`` ("node"), so one worker runs all of it, in this order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CTRL_C_TEST = "test_ctrl_c_stops_everything_it_started"

_shared: dict = {}


def _in_tier(item: pytest.Item | None) -> bool:
    return item is not None and Path(str(item.fspath)).resolve().parent == HERE


def _rank(item: pytest.Item) -> int:
    if item.name == CTRL_C_TEST:
        return 0
    return 1 if Path(str(item.fspath)).name == "test_nodecluster.py" else 2  # the node itself, then what runs on it


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    tier = [item for item in items if _in_tier(item)]
    if not tier:
        return
    first = items.index(tier[0])
    rest = [item for item in items if not _in_tier(item)]
    # sorted() is stable: within a rank the order given (random or not) stays.
    items[:] = rest[:first] + sorted(tier, key=_rank) + rest[first:]


def _stop_shared() -> None:
    cluster = _shared.pop("cluster", None)
    if cluster is not None:
        cluster.stop()


@pytest.fixture(scope="session")
def node():
    from testkit.nodecluster import NodeCluster

    # A test run waits for a node another run (or this run's Ctrl-C test, should it ever
    # run beside this tier) is stopping, as a human would, instead of failing after LOCK_WAIT.
    cluster = NodeCluster(lock_wait=900)
    _shared["cluster"] = cluster
    try:
        cluster.start()
    except BaseException:
        _shared.pop("cluster", None)
        raise
    yield cluster
    _stop_shared()


@pytest.fixture(autouse=True)
def _node_not_stopped_early():
    """A tier test after the early stop would get a stopped cluster: say so, not time out."""
    if _shared.get("stopped"):
        pytest.fail("the shared node cluster was stopped after what looked like the tier's last test; "
                    "tests/node/conftest.py runs the tier's tests together, so something reordered them after it")


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if _in_tier(item) and not _in_tier(nextitem) and "cluster" in _shared:
        _shared["stopped"] = True
        _stop_shared()
