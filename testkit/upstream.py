"""Run the upstream Gateway API conformance suite (Go, v1.7.0) against a cluster.

The library of tools/upstream/run.py (its command line, below), of tools/upstream/differential.py,
tools/traefik/run.py and the tiers' upstream tests:

    python tools/upstream/run.py refgateway [--fault NAME]... [--out DIR]
        a throwaway API server tier (testkit/testcluster.py) with the suite's own
        CRDs, refgateway as its controller, and the stand-in kubelet
        (testkit/kubelet_standin.py) running the suite's Deployments with a
        locally built echo-basic; then the suite's TLS tests against it.
    python tools/upstream/run.py cluster --kubeconfig K --gateway-class C --supported-features F,...
        the suite's TLS tests against a cluster that is already there.

The suite is built by tools/upstream/build.sh (cached). Its verdict is judged three
ways, and they must agree: the ``go test`` exit status, the per-test ``--- PASS/FAIL/
SKIP`` lines of ``-test.v``, and the ConformanceReport of ``--report-output``. A test
passes here only if it ran and passed by all three; any disagreement is reported.

Prints one JSON document (``--json``) or a table; exit 0 iff every requested test passed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testkit.procs import ROOT, BuildFailed, run_build, stop_process_group

BUILD_SCRIPT = "tools/upstream/build.sh"

#: The suite's TLS tests this project is judged beside (issue 13), v1.7.0 short names.
TLS_TESTS = (
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayFrontendInvalidDefaultClientCertificateValidation",
    "GatewayInvalidFrontendClientCertificateValidation",
    "GatewayTLSBackendClientCertificate",
    "GatewayInvalidTLSBackendConfiguration",
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "BackendTLSPolicyConflictResolution",
    "BackendTLSPolicyInvalidCACertificateRef",
    "BackendTLSPolicyInvalidKind",
    "BackendTLSPolicyObservedGenerationBump",
    "BackendTLSPolicyPreserveForeignStatus",  # new in v1.7.0, provisional
    "HTTPRouteHTTPSListenerDetectMisdirectedRequests",
)

#: New in v1.7.0 but about route kinds refgateway does not implement (docs/upstream.md).
OUT_OF_SCOPE = {
    "BackendTLSPolicyGRPCRoute": "needs GRPCRoute, which refgateway does not implement",
    "BackendTLSPolicyTLSRouteTerminate": "needs TLSRoute (mode Terminate), which refgateway does not implement",
}

#: What refgateway supports, in the suite's feature names.
REFGATEWAY_FEATURES = (
    "Gateway", "HTTPRoute", "ReferenceGrant",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayBackendClientCertificate",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "BackendTLSPolicy", "BackendTLSPolicySANValidation",
)

ECHO_IMAGE = "gateway-api/conformance/echo-basic"  # registry.k8s.io/gateway-api/conformance/echo-basic:v0.x


class UpstreamError(RuntimeError):
    """The suite could not be built or run at all (the message names the fix)."""


def build() -> Path:
    """The cache dir with bin/{conformance.test,echo-basic,tests.txt} and crds/ (builds if needed)."""
    return run_build(BUILD_SCRIPT, what="the upstream suite", error=UpstreamError)


def built() -> bool:
    """Whether the suite is built already (build() then returns at once, without Go)."""
    try:
        run_build(BUILD_SCRIPT, "--check", what="the upstream suite", log=None)
    except BuildFailed:
        return False
    return True


def all_tests(cache: Path) -> list[str]:
    return [line.strip() for line in (cache / "bin" / "tests.txt").read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- one run


@dataclasses.dataclass
class Result:
    exit_code: int
    outcomes: dict[str, str]  # test -> passed | failed | skipped (from -test.v), absent: never ran
    report: dict | None  # the ConformanceReport as written, None if none was
    report_results: dict[str, str]  # test -> passed | failed | skipped, as the report claims
    disagreements: list[str]
    requested: list[str]
    seconds: float
    log: str

    def verdict(self, test: str) -> str:
        """What -test.v saw, unless the report claims otherwise ("disputed")."""
        seen = self.outcomes.get(test, "not run")
        if seen == "passed" and self.report_results.get(test) != "passed":
            return "disputed"
        return seen

    @property
    def ok(self) -> bool:
        return (self.exit_code == 0 and not self.disagreements
                and all(self.verdict(t) == "passed" for t in self.requested))

    def as_dict(self) -> dict:
        return {"exit_code": self.exit_code, "ok": self.ok, "seconds": round(self.seconds, 1),
                "verdicts": {t: self.verdict(t) for t in self.requested},
                "report_results": {t: self.report_results.get(t, "absent") for t in self.requested},
                "disagreements": self.disagreements, "log": self.log}


_RESULT_LINE = re.compile(r"^\s*--- (PASS|FAIL|SKIP): TestConformance/(\S+) \(")


def parse_verbose(output: str) -> dict[str, str]:
    words = {"PASS": "passed", "FAIL": "failed", "SKIP": "skipped"}
    found: dict[str, str] = {}
    for line in output.splitlines():
        m = _RESULT_LINE.match(line)
        if m and "/" not in m.group(2):  # a test, not one of its subtests
            found[m.group(2)] = words[m.group(1)]
    return found


def parse_report(report: dict) -> dict[str, str]:
    """test -> what the report claims. Passed tests are not named in a report, only
    counted: a test the report neither fails nor skips counts as passed if the
    profile's Passed count leaves room for it (checked by the caller)."""
    claims: dict[str, str] = {}
    for profile in report.get("profiles") or []:
        for part in ("core", "extended"):
            section = profile.get(part) or {}
            for t in section.get("failedTests") or []:
                claims[t] = "failed"
            for t in section.get("skippedTests") or []:
                claims.setdefault(t, "skipped")
    return claims


def passed_count(report: dict) -> int:
    return sum(((p.get(part) or {}).get("statistics") or {}).get("Passed", 0)
               for p in report.get("profiles") or [] for part in ("core", "extended"))


def run_suite(cache: Path, kubeconfig: Path, gateway_class: str, features: list[str], out: Path,
              tests: list[str] | tuple[str, ...] = TLS_TESTS, timeout_overrides: str | None = None,
              timeout: float = 3600, extra: tuple[str, ...] = (), prefix: tuple[str, ...] = ()) -> Result:
    """``prefix``: what the suite's binary runs under, e.g. nsenter into the network namespace
    of a node whose ClusterIPs only its own kube-proxy rules reach (tests/node)."""
    out.mkdir(parents=True, exist_ok=True)
    # Not "*-report.yaml": reports/ is searched for those (mtls_conformance/matrix.py), and this one
    # is upstream's, beside our own run's.
    report_path, log_path = out / "upstream.report.yaml", out / "upstream.log"
    report_path.unlink(missing_ok=True)
    skip = sorted(set(all_tests(cache)) - set(tests))
    argv = [str(cache / "bin" / "conformance.test"), "-test.v", "-test.run", "^TestConformance$",
            f"-test.timeout={int(timeout)}s",
            f"--gateway-class={gateway_class}", f"--supported-features={','.join(features)}",
            f"--skip-tests={','.join(skip)}", f"--report-output={report_path}",
            # Without a profile the report has "profiles: null": it claims nothing at all.
            "--conformance-profiles=GATEWAY-HTTP",
            # The whole cluster is thrown away afterwards; the test API server has no
            # namespace controller, so a namespace deletion would never finish.
            "--cleanup-base-resources=false",
            "--organization=mtls-conformance", f"--project={gateway_class}",
            "--url=https://mtls-conformance.invalid", "--version=dev", "--contact=@mtls-conformance",
            *([f"--timeout-config-overrides={timeout_overrides}"] if timeout_overrides else []), *extra]
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.run([*prefix, *argv], cwd=out, env=dict(os.environ, KUBECONFIG=str(kubeconfig)),
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout + 120)
    seconds = time.monotonic() - t0
    output = log_path.read_text(errors="replace")
    outcomes = parse_verbose(output)
    report = None
    if report_path.exists():
        import yaml

        report = yaml.safe_load(report_path.read_text())
    disagreements = []
    report_results: dict[str, str] = {}
    if report is None:
        disagreements.append("no report was written")
    else:
        claims = parse_report(report)
        for t in tests:
            # A report names failed and skipped tests; tests of unsupported features it
            # leaves out (their features are under unsupportedFeatures), as the passed ones.
            absent = "absent" if outcomes.get(t) == "skipped" else "passed"
            report_results[t] = claims.get(t, absent)
        claimed_passed = [t for t in tests if report_results[t] == "passed"]
        if passed_count(report) < len(claimed_passed):
            disagreements.append(f"the report counts {passed_count(report)} passed, fewer than the "
                                 f"{len(claimed_passed)} requested tests it does not fail or skip")
        for t in tests:
            seen = outcomes.get(t, "not run")
            if seen != report_results[t] and not (seen == "skipped" and report_results[t] == "absent"):
                disagreements.append(f"{t}: -test.v says {seen}, the report says {report_results[t]}")
    failed = [t for t, o in outcomes.items() if o == "failed"]
    if (proc.returncode == 0) == bool(failed):
        disagreements.append(f"go test exit status {proc.returncode} with failed tests {failed}")
    return Result(proc.returncode, outcomes, report, report_results, disagreements, list(tests), seconds,
                  str(log_path))


# --------------------------------------------------------------------------- refgateway on the API server tier


@contextlib.contextmanager
def refgateway_tier(cache: Path, workdir: Path, *, crds: str = "standard", gateway_class: dict | None = None):
    """An API server with the suite's CRDs, a GatewayClass (default: refgateway's) and a
    stand-in kubelet; yields (cluster, kubelet, start_controller) where start_controller
    (re)starts a refgateway controller with the given faults."""
    from testkit.kubelet_standin import TestKubelet
    from testkit.testcluster import TestCluster

    echo = str(cache / "bin" / "echo-basic")
    programs = {ECHO_IMAGE: ([echo], lambda env: None if "UDP_ECHO_SERVER" in env else 3000)}
    with TestCluster(crds=None) as cluster:
        cluster.crd_dir = cache / "crds"
        cluster.install_gateway_crds(crds)
        import yaml
        from kubernetes import client

        if gateway_class is None:
            gateway_class = yaml.safe_load((ROOT / "deploy" / "refgateway" / "gatewayclass.yaml").read_text())
        client.CustomObjectsApi(cluster.api_client()).create_cluster_custom_object(
            "gateway.networking.k8s.io", "v1", "gatewayclasses", gateway_class)
        kubelet = TestKubelet(cluster.api_client(), selector=None, programs=programs).start()
        controllers: list[subprocess.Popen] = []

        def start_controller(*faults: str, log_name: str = "refgateway.log") -> subprocess.Popen:
            for proc in controllers:
                stop_process_group(proc)
            controllers.clear()
            argv = [sys.executable, "-m", "refgateway", "controller", "--kubeconfig", str(cluster.kubeconfig),
                    "--log-level", "WARNING"]
            for fault in faults:
                argv += ["--fault", fault]
            workdir.mkdir(parents=True, exist_ok=True)
            with open(workdir / log_name, "wb") as log:
                proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            controllers.append(proc)
            return proc

        try:
            yield cluster, kubelet, start_controller
        finally:
            for proc in controllers:
                stop_process_group(proc)
            kubelet.stop()


def reset_tests(cluster, kubelet) -> None:
    """Between two runs on one cluster: nothing of the last run's tests stays (base
    resources stay, as the suite leaves them with --cleanup-base-resources=false)."""
    # The suite deletes what each test applied; nothing to do here today. Kept as the
    # one place to add it if a run leaves objects behind.


# --------------------------------------------------------------------------- CLI


def _print(result: Result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    for t in result.requested:
        print(f"{result.verdict(t):9} {t}")
    for d in result.disagreements:
        print(f"DISAGREEMENT {d}")
    print(f"go test exit {result.exit_code}, {result.seconds:.0f} s, log {result.log}")


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so that the tier's processes and network namespaces go too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    p = argparse.ArgumentParser(prog="tools/upstream/run.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    ref = sub.add_parser("refgateway", help="refgateway on a throwaway API server tier")
    ref.add_argument("--fault", action="append", default=[])
    ext = sub.add_parser("cluster", help="a cluster that is already there")
    ext.add_argument("--kubeconfig", required=True, type=Path)
    ext.add_argument("--gateway-class", required=True)
    ext.add_argument("--supported-features", required=True)
    for s in (ref, ext):
        s.add_argument("--out", type=Path, default=None, help="directory for the report and the log")
        s.add_argument("--test", action="append", default=[], help="run these tests (default: the TLS tests)")
        s.add_argument("--timeout-config-overrides", default=None)
        s.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    tests = args.test or list(TLS_TESTS)
    out = args.out or Path(tempfile.mkdtemp(prefix="upstream-"))
    out.mkdir(parents=True, exist_ok=True)
    cache = build()
    if args.mode == "cluster":
        result = run_suite(cache, args.kubeconfig, args.gateway_class, args.supported_features.split(","), out,
                           tests, args.timeout_config_overrides)
    else:
        with refgateway_tier(cache, out) as (cluster, kubelet, start_controller):
            start_controller(*args.fault)
            result = run_suite(cache, cluster.kubeconfig, "refgateway", list(REFGATEWAY_FEATURES), out, tests,
                               args.timeout_config_overrides)
            result.disagreements += [f"stand-in kubelet: {e}" for e in kubelet.errors]
    _print(result, args.json)
    return 0 if result.ok else 1

