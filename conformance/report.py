"""Verdicts per feature, and the ConformanceReport they add up to.

A test's verdict is what happened to it over all its phases: failed if any phase failed,
skipped if it was skipped, passed otherwise. A feature's verdict is failed if any of its
tests failed; passed if all of them passed; partial if some passed and the others were
skipped; skipped if none ran; unsupported if the implementation does not claim it; untested
if no collected test checks it. A skipped test never counts as passed.

Three files come out of a run with ``--report-dir``:

- ``<channel>-<version>-<mode>-report.yaml``: the upstream ConformanceReport
  (sigs.k8s.io/gateway-api ``conformance/apis/v1``), upstream features only;
- ``<channel>-<version>-<mode>-verdicts.yaml``: the verdict of every feature, ours
  included, with its tests; ``python -m conformance report`` reads it for the matrix;
- ``summary.md``: the same verdicts for a person.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from . import features as _features

#: The Gateway API release whose feature names and semantics the scenarios follow; the
#: report says this unless the target knows better (a cluster's CRD bundle-version).
GATEWAY_API_VERSION = "v1.6.1"
GATEWAY_API_CHANNEL = "standard"
REPORT_API_VERSION = "gateway.networking.k8s.io/v1"
VERDICTS_API_VERSION = "mtls-conformance.dev/v1alpha1"
#: "untested": the implementation claims the feature, but no collected test checks it.
VERDICTS = ("passed", "partial", "failed", "skipped", "unsupported", "untested")
#: The skip reason the plugin gives a test whose features the implementation lacks.
UNSUPPORTED_PREFIX = "implementation does not support"


def short_name(nodeid: str) -> str:
    """``scenarios/test_x.py::test_y[p]`` -> ``test_x::test_y[p]``: the name --skip-tests takes."""
    path, _, rest = nodeid.partition("::")
    stem = path.rsplit("/", 1)[-1].removesuffix(".py")
    return f"{stem}::{rest}" if rest else stem


def without_params(name: str) -> str:
    return re.sub(r"\[.*\]$", "", name)


@dataclasses.dataclass
class TestResult:
    nodeid: str
    features: list[str]
    outcome: str | None = None  # "passed" | "failed" | "skipped"
    detail: str = ""

    @property
    def name(self) -> str:
        return short_name(self.nodeid)

    @property
    def not_supported(self) -> bool:
        return self.outcome == "skipped" and self.detail.startswith(UNSUPPORTED_PREFIX)


@dataclasses.dataclass
class Results:
    tests: dict[str, TestResult] = dataclasses.field(default_factory=dict)

    def record(self, report, names: list[str]) -> None:
        result = self.tests.setdefault(report.nodeid, TestResult(report.nodeid, list(names)))
        if report.failed:
            result.outcome = "failed"
            # The first line of the exception says what was expected and seen; the rest
            # (reproduction command, paths) belongs to the run, not to the verdict.
            crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
            text = (crash.message if crash is not None else report.longreprtext or "").strip()
            result.detail = text.splitlines()[0][:300] if text else ""
        elif report.skipped and result.outcome != "failed":
            result.outcome = "skipped"
            longrepr = report.longrepr
            detail = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr or "")
            result.detail = detail.removeprefix("Skipped: ")
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


class FeatureProgress:
    """Knows how many tests each feature has, and says when the last one of a feature is done."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self._done: dict[str, set[str]] = {}

    def test_done(self, nodeid: str, names: Iterable[str]) -> list[str]:
        finished = []
        for name in names:
            done = self._done.setdefault(name, set())
            done.add(nodeid)
            if name in self.totals and len(done) == self.totals[name]:
                finished.append(name)
        return finished


def feature_verdict(results: list[TestResult], *, supported: bool = True) -> str:
    outcomes = {r.outcome or "skipped" for r in results}
    if "failed" in outcomes:
        return "failed"
    if not supported and "passed" not in outcomes:
        return "unsupported"
    if outcomes == {"passed"}:
        return "passed"
    if "passed" in outcomes:
        return "partial"
    return "skipped"


def _counts(tests: list[TestResult]) -> dict[str, int]:
    return {o: sum(1 for t in tests if (t.outcome or "skipped") == o)
            for o in ("passed", "failed", "skipped")}


def verdict_line(name: str, tests: list[TestResult], *, supported: bool = True) -> str:
    summary = ", ".join(f"{n} {o}" for o, n in _counts(tests).items() if n)
    return f"{name:60} {feature_verdict(tests, supported=supported).upper():11} ({summary})"


def verdict_lines(results: Results, *, supported: Iterable[str] | None = None) -> list[str]:
    claimed = None if supported is None else set(supported)
    return [verdict_line(name, tests, supported=claimed is None or name in claimed)
            for name, tests in results.by_feature().items()]


# -- the ConformanceReport --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Implementation:
    """``implementation`` of a ConformanceReport (conformance/apis/v1/conformancereport.go)."""

    organization: str
    project: str
    url: str
    version: str
    contact: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"organization": self.organization, "project": self.project, "url": self.url,
                "version": self.version, "contact": list(self.contact)}


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a report says about the run besides the verdicts."""

    implementation: Implementation
    supported_features: frozenset[str]
    exempt_features: frozenset[str] = frozenset()
    features_source: str = ""
    mode: str = "default"
    channel: str = GATEWAY_API_CHANNEL
    gateway_api_version: str = GATEWAY_API_VERSION
    rejection_rule: str = "any client-visible rejection"
    date: str = ""

    def claimed(self) -> frozenset[str]:
        return self.supported_features - self.exempt_features

    def stamp(self) -> str:
        return self.date or datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")


def _status(tests: list[TestResult], *, extended: bool, supported: list[str] = (),
            unsupported: list[str] = ()) -> dict:
    counts = _counts(tests)
    statistics = {"Failed": counts["failed"], "Passed": counts["passed"],
                  "Skipped": counts["skipped"]}
    # conformance/utils/suite/reports.go: any failure fails, else any skip is partial.
    result = "failure" if counts["failed"] else "partial" if counts["skipped"] else "success"
    status: dict = {"result": result, "statistics": statistics}
    skipped = sorted(t.name for t in tests if (t.outcome or "skipped") == "skipped")
    failed = sorted(t.name for t in tests if t.outcome == "failed")
    if skipped:
        status["skippedTests"] = skipped
    if failed:
        status["failedTests"] = failed
    if extended:
        if supported:
            status["supportedFeatures"] = sorted(supported)
        if unsupported:
            status["unsupportedFeatures"] = sorted(unsupported)
    return status


def _summary(core: dict, extended: dict) -> str:
    # Wording of conformance/utils/suite/reports.go buildReportSummary.
    def word(status: dict) -> str:
        stats = status["statistics"]
        return {"success": "succeeded",
                "partial": f"partially succeeded with {stats['Skipped']} test skips",
                "failure": f"failed with {stats['Failed']} test failures"}[status["result"]]
    return f"Core tests {word(core)}. Extended tests {word(extended)}."


def conformance_report(results: Results, run: RunInfo) -> dict:
    """The upstream ConformanceReport (conformance/apis/v1) for the GATEWAY-HTTP profile.

    A test belongs to the extended half when any of its upstream features is extended.
    Tests that check only extensions of ours stay out: upstream has no name for them. As
    upstream (conformance/utils/suite/suite.go, testNotSupported), a test skipped because
    the implementation lacks a feature is not counted at all; the feature is listed in
    unsupportedFeatures instead. Tests skipped for any other reason (--skip-tests,
    --run-test) count as Skipped and make the result partial.
    """
    upstream = {n: f for n, f in _features.FEATURES.items() if f.upstream}
    core_tests, extended_tests = [], []
    for t in results.tests.values():
        names = [n for n in t.features if n in upstream]
        if not names or t.not_supported:
            continue
        (extended_tests if any(upstream[n].support == "extended" for n in names)
         else core_tests).append(t)
    claimed = run.claimed()
    extended_names = [n for n, f in upstream.items() if f.support == "extended"]
    supported = [n for n in extended_names if n in claimed]
    unsupported = [n for n in extended_names if n not in claimed]
    core = _status(core_tests, extended=False)
    extended = _status(extended_tests, extended=True, supported=supported, unsupported=unsupported)
    return {
        "apiVersion": REPORT_API_VERSION,
        "kind": "ConformanceReport",
        "date": run.stamp(),
        "gatewayAPIVersion": run.gateway_api_version,
        "gatewayAPIChannel": run.channel,
        "mode": run.mode,
        "implementation": run.implementation.as_dict(),
        "profiles": [{"name": _features.GATEWAY_HTTP, "summary": _summary(core, extended),
                      "core": core, "extended": extended}],
    }


def feature_verdicts(results: Results, run: RunInfo) -> dict:
    """Our per-feature verdicts, extensions included: the input of the matrix."""
    grouped = results.by_feature()
    claimed = run.claimed()
    out: dict[str, dict] = {}
    for name, feature in _features.FEATURES.items():
        tests = grouped.get(name, [])
        out[name] = {"verdict": feature_verdict(tests, supported=name in claimed) if tests
                     else ("unsupported" if name not in claimed else "untested"),
                     **_counts(tests), "support": feature.support, "upstream": feature.upstream}
    tests: dict[str, dict] = {}
    for t in sorted(results.tests.values(), key=lambda t: t.name):
        entry = {"outcome": t.outcome or "skipped", "features": list(t.features)}
        if t.outcome in ("failed", "skipped") and t.detail:
            entry["reason"] = t.detail
        tests[t.name] = entry
    return {
        "apiVersion": VERDICTS_API_VERSION,
        "kind": "FeatureVerdicts",
        "date": run.stamp(),
        "gatewayAPIVersion": run.gateway_api_version,
        "gatewayAPIChannel": run.channel,
        "mode": run.mode,
        "implementation": run.implementation.as_dict(),
        "featuresSource": run.features_source,
        "rejectionRule": run.rejection_rule,
        "features": out,
        "tests": tests,
    }


def file_stem(run: RunInfo) -> str:
    """``<channel>-<version>-<mode>``, as the upstream reports/ folders name their files."""
    version = re.sub(r"[^A-Za-z0-9._+-]+", "_", run.implementation.version or "unknown")
    return f"{run.channel}-{version}-{run.mode}"


def _dump(data: Mapping) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)


def write_conformance_report(path: Path, results: Results, run: RunInfo) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dump(conformance_report(results, run)))
    return path


def write(directory: Path, results: Results, run: RunInfo) -> Path:
    """Write the ConformanceReport, the verdicts and summary.md; return the report's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = file_stem(run)
    path = write_conformance_report(directory / f"{stem}-report.yaml", results, run)
    verdicts = feature_verdicts(results, run)
    (directory / f"{stem}-verdicts.yaml").write_text(_dump(verdicts))
    impl = run.implementation
    lines = [f"# mTLS conformance verdicts: {impl.project} {impl.version}", "",
             f"Gateway API {run.gateway_api_version} ({run.channel}), mode {run.mode}; "
             f"rejection rule: {run.rejection_rule}; supported features from "
             f"{run.features_source or 'the profile'}.", "",
             "| feature | verdict | passed | failed | skipped |", "|---|---|---|---|---|"]
    for name, entry in verdicts["features"].items():
        lines.append(f"| {name} | {entry['verdict']} | {entry['passed']} | {entry['failed']} "
                     f"| {entry['skipped']} |")
    (directory / "summary.md").write_text("\n".join(lines) + "\n")
    return path
