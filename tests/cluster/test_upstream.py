"""The upstream Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance v1.7.0)
run by tools/upstream/run.py against refgateway as a controller on the API server tier.

It is a second, independent judge of refgateway: these tests show that refgateway passes
the upstream TLS tests, and that the tool reads the upstream verdicts right (a failed
parallel test is failed in -test.v, in the exit status and in the report alike).

Needs root (the stand-in kubelet runs the suite's backends in network namespaces) and the
suite built by tools/upstream/build.sh (Go; about 12 minutes cold, cached after).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit import testcluster
from testkit import upstream as run

if not run.built() and not testcluster.go_available():
    pytest.skip("the upstream suite is not built and Go is not installed (bash tools/upstream/build.sh)",
                allow_module_level=True)
if not testcluster.go_available() and not testcluster._complete(testcluster.cache_dir()):
    pytest.skip(f"kube-apiserver/etcd are not built and Go is not installed ({testcluster.BUILD_COMMAND})",
                allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("the stand-in kubelet makes network namespaces, which needs root", allow_module_level=True)

pytestmark = pytest.mark.xdist_group("testcluster")


@pytest.fixture(scope="module")
def cache() -> Path:
    return run.build()


@pytest.fixture(scope="module")
def tier(cache, tmp_path_factory):
    with run.refgateway_tier(cache, tmp_path_factory.mktemp("upstream-tier")) as t:
        yield t


def suite(tier, cache, out: Path, *faults: str, tests=run.TLS_TESTS) -> run.Result:
    cluster, kubelet, start_controller = tier
    start_controller(*faults)
    result = run.run_suite(cache, cluster.kubeconfig, "refgateway", list(run.REFGATEWAY_FEATURES), out, tests)
    assert kubelet.errors == []
    return result


def test_refgateway_passes_every_upstream_tls_test(tier, cache, tmp_path):
    result = suite(tier, cache, tmp_path)
    summary = "\n".join(f"{t}: {v}" for t, v in result.as_dict()["verdicts"].items())
    assert result.ok, f"{summary}\n{result.disagreements}\nlog: {Path(result.log).read_text()[-3000:]}"
    extended = result.report["profiles"][0]["extended"]
    assert extended["statistics"] == {"Passed": len(run.TLS_TESTS), "Failed": 0, "Skipped": 0}
    assert "BackendTLSPolicyPreserveForeignStatus" in result.report["succeededProvisionalTests"]


def test_a_failed_parallel_test_is_failed_in_the_report_too(tier, cache, tmp_path):
    """v1.6.x recorded Parallel tests as passed before they ran (facts s.8); v1.7.0 records
    them in the subtest's Cleanup. BackendTLSPolicySANValidation is Parallel: true."""
    result = suite(tier, cache, tmp_path, "backend-skip-hostname-verification",
                   tests=("BackendTLSPolicySANValidation", "GatewayFrontendClientCertificateValidation"))
    assert result.exit_code != 0
    assert result.outcomes["BackendTLSPolicySANValidation"] == "failed"
    assert result.report_results["BackendTLSPolicySANValidation"] == "failed"
    assert result.verdict("GatewayFrontendClientCertificateValidation") == "passed"
    extended = result.report["profiles"][0]["extended"]
    assert extended["failedTests"] == ["BackendTLSPolicySANValidation"]
    assert extended["result"] == "failure"
    assert result.disagreements == [] and not result.ok
