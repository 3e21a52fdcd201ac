"""Verdicts per feature, and the ConformanceReport they add up to.

A test's verdict is what happened to it over all its phases: failed if any phase failed,
skipped if it was skipped, passed otherwise. A feature's verdict is failed if any of its
tests failed, passed if at least one passed and none failed, skipped if all were skipped.
A skipped test never counts as passed.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import yaml

from . import features as _features
from .profiles import Profile

GATEWAY_API_VERSION = "v1.5.0"
GATEWAY_API_CHANNEL = "standard"


@dataclasses.dataclass
class TestResult:
    nodeid: str
    features: list[str]
    outcome: str | None = None  # "passed" | "failed" | "skipped"
    detail: str = ""


@dataclasses.dataclass
class Results:
    tests: dict[str, TestResult] = dataclasses.field(default_factory=dict)

    def record(self, report, names: list[str]) -> None:
        result = self.tests.setdefault(report.nodeid, TestResult(report.nodeid, list(names)))
        if report.failed:
            result.outcome = "failed"
            result.detail = (report.longreprtext or "").strip().splitlines()[-1:][0] \
                if report.longreprtext else ""
        elif report.skipped and result.outcome != "failed":
            result.outcome = "skipped"
            longrepr = report.longrepr
            result.detail = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr or "")
        elif report.when == "call" and result.outcome is None:
            result.outcome = "passed"

    def by_feature(self) -> dict[str, list[TestResult]]:
        grouped: dict[str, list[TestResult]] = {}
        order = list(_features.FEATURES)
        for result in self.tests.values():
            for name in result.features:
                grouped.setdefault(name, []).append(result)
        return dict(sorted(grouped.items(),
                           key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def feature_verdict(results: list[TestResult]) -> str:
    outcomes = {r.outcome for r in results}
    if "failed" in outcomes:
        return "failed"
    if "passed" in outcomes:
        return "passed"
    return "skipped"


def verdict_lines(results: Results) -> list[str]:
    lines = []
    for name, tests in results.by_feature().items():
        counts = {o: sum(1 for t in tests if t.outcome == o) for o in ("passed", "failed", "skipped")}
        summary = ", ".join(f"{n} {o}" for o, n in counts.items() if n)
        lines.append(f"{name:60} {feature_verdict(tests).upper():8} ({summary})")
    return lines


def _status(tests: list[TestResult], *, extended: bool, supported: list[str] = (),
            unsupported: list[str] = ()) -> dict:
    counts = {"Passed": 0, "Failed": 0, "Skipped": 0}
    for t in tests:
        counts[(t.outcome or "skipped").capitalize()] += 1
    result = "failure" if counts["Failed"] else "partial" if counts["Skipped"] else "success"
    status: dict = {"result": result, "statistics": counts}
    failed = sorted(t.nodeid for t in tests if t.outcome == "failed")
    skipped = sorted(t.nodeid for t in tests if t.outcome == "skipped")
    if failed:
        status["failedTests"] = failed
    if skipped:
        status["skippedTests"] = skipped
    if extended:
        status["supportedFeatures"] = sorted(supported)
        status["unsupportedFeatures"] = sorted(unsupported)
    return status


def conformance_report(results: Results, *, profile: Profile, version: str = "",
                       contact: list[str] | None = None, mode: str = "default") -> dict:
    """The upstream ConformanceReport (conformance/apis/v1) for the GATEWAY-HTTP profile."""
    upstream = {n: f for n, f in _features.FEATURES.items() if f.upstream}
    core_tests, extended_tests = [], []
    for t in results.tests.values():
        names = [n for n in t.features if n in upstream]
        if not names:
            continue  # only extensions of ours: reported in the summary, not upstream
        (extended_tests if any(upstream[n].support == "extended" for n in names)
         else core_tests).append(t)
    extended_names = [n for n, f in upstream.items() if f.support == "extended"]
    supported = [n for n in extended_names if n in profile.supported_features]
    unsupported = [n for n in extended_names if n not in profile.supported_features]
    core = _status(core_tests, extended=False)
    extended = _status(extended_tests, extended=True, supported=supported, unsupported=unsupported)
    summary = (f"Core tests {'succeeded' if core['result'] == 'success' else core['result']}. "
               f"Extended tests {'succeeded' if extended['result'] == 'success' else extended['result']}.")
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ConformanceReport",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gatewayAPIVersion": GATEWAY_API_VERSION,
        "gatewayAPIChannel": GATEWAY_API_CHANNEL,
        "mode": mode,
        "implementation": {"organization": profile.organization or "unknown",
                           "project": profile.project or profile.key,
                           "url": profile.url or "", "version": version or "unknown",
                           "contact": list(contact or [])},
        "profiles": [{"name": "GATEWAY-HTTP", "summary": summary, "core": core, "extended": extended}],
    }


def write(directory: Path, results: Results, *, profile: Profile, strict_rejection: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    report = conformance_report(results, profile=profile)
    path = directory / f"{GATEWAY_API_CHANNEL}-{report['implementation']['version']}-default-report.yaml"
    path.write_text(yaml.safe_dump(report, sort_keys=False))
    rule = "strict (transport-level only)" if strict_rejection else "any client-visible rejection"
    lines = [f"# mTLS conformance verdicts: {profile.name}", "",
             f"Rejection rule: {rule}.", "", "| feature | verdict | tests |", "|---|---|---|"]
    for name, tests in results.by_feature().items():
        lines.append(f"| {name} | {feature_verdict(tests)} | {len(tests)} |")
    (directory / "summary.md").write_text("\n".join(lines) + "\n")
    return path
