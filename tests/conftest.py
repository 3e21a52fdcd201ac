"""Options of the project's own tests (not of the conformance plugin)."""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption(
        "--selfcheck", choices=("quick", "exact"), default="quick",
        help="how tests/selfcheck proves every scenario can fail: 'quick' (default, README command 2) "
             "runs each scenario test once, under the most targeted fault that must fail it; 'exact' runs "
             "the whole suite under every fault and requires exactly the listed failures "
             "(tox -e selfcheck, and the nightly workflow)")




def pytest_configure(config):
    """Refuse to run when --dist loadgroup cannot take effect.

    The cluster tiers (tests/cluster, tests/node) and the whole-suite runs rely on
    ``xdist_group``: one worker runs a group's tests, in order. pytest-xdist groups a test
    by rewriting ``Node._nodeid`` in each worker; pytest 9.2 keeps the node id elsewhere,
    so the groups are silently ignored and a tier's tests run on both workers at once,
    fighting over one node's lock and routes. Say so before the first test, from the
    controller (an error raised in a worker reads as an xdist crash).
    """
    if hasattr(config, "workerinput") or config.getoption("dist", "no") != "loadgroup":
        return
    import pytest

    class Probe(pytest.Item):
        def runtest(self) -> None:  # never runs: only its nodeid is read
            pass

    probe = object.__new__(Probe)
    probe._nodeid = "probe@group"  # what pytest-xdist does to a grouped test
    try:
        takes = probe.nodeid == "probe@group"
    except AttributeError:
        takes = False
    if not takes:
        import xdist

        raise pytest.UsageError(
            f"--dist loadgroup cannot group tests with pytest {pytest.__version__} and pytest-xdist "
            f"{xdist.__version__} (xdist sets Node._nodeid, which this pytest ignores), so the cluster tiers "
            "would run on both workers at once. Install the versions the dev extra allows: "
            "pip install -e '.[dev]'")
