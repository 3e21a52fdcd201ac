"""The API server tier's fixtures: one TestCluster per test module (testkit.testcluster)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster():
    from testkit.testcluster import TestCluster

    with TestCluster() as c:
        yield c


@pytest.fixture(scope="module")
def api(cluster):
    """An admin kubernetes.client.ApiClient of the module's cluster."""
    return cluster.api_client()
