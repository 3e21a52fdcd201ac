"""Verdicts per feature, and the ConformanceReport they add up to.

A test's verdict is what happened to it over all its phases: failed if any phase failed,
skipped if it was skipped (or never run: deselected by -k, -m or node ids), passed
otherwise. A test counts for every feature it declares, except a test skipped because the
implementation lacks one of its features: as upstream (NOT_SUPPORTED), it counts for none,
so it cannot make a feature whose own tests all passed partial. A feature's verdict is
failed if any of its counted tests failed; unsupported if the implementation does not
claim it; untested if none of its tests ran (zero tests is never a pass); passed if all
of them passed; partial if some passed and the others were skipped.

Three files come out of a run with ``--report-dir``:

- ``<channel>-<version>-<mode>-report.yaml``: the upstream ConformanceReport
  (sigs.k8s.io/gateway-api ``conformance/apis/v1``), upstream features only;
- ``<channel>-<version>-<mode>-verdicts.yaml``: the verdict of every feature, ours
  included, with its tests; ``python -m mtls_conformance report`` reads it for the matrix;
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
GATEWAY_API_VERSION = "v1.7.0"
GATEWAY_API_CHANNEL = "standard"
REPORT_API_VERSION = "gateway.networking.k8s.io/v1"
VERDICTS_API_VERSION = "mtls-conformance.dev/v1alpha1"
#: "untested": the implementation claims the feature, but none of its tests ran.
VERDICTS = ("passed", "partial", "failed", "unsupported", "untested")
#: The skip reason the plugin gives a test whose features the implementation lacks.
UNSUPPORTED_PREFIX = "implementation does not support"
#: The skip reason of a test that was collected but never run (deselected, not named).
NOT_RUN_PREFIX = "not run: "
#: A test's user property "FEATURE: sentence": the sentence joins that feature's verdict
#: line (e.g. what a check could not exercise), see client.VERDICT_NOTE_PROPERTY.
VERDICT_NOTE_PROPERTY = "mtls_verdict_note"


def short_name(nodeid: str) -> str:
    """``mtls_conformance/scenarios/test_x.py::test_y[p]`` -> ``test_x::test_y[p]``: the name --skip-tests takes."""
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
    notes: list[str] = dataclasses.field(default_factory=list)  # VERDICT_NOTE_PROPERTY values

    @property
    def name(self) -> str:
        return short_name(self.nodeid)

    @property
    def not_supported(self) -> bool:
        return self.outcome == "skipped" and self.detail.startswith(UNSUPPORTED_PREFIX)

    @property
    def missing(self) -> list[str]:
        """The features the implementation lacks, when that is why the test was skipped."""
        if not self.not_supported:
            return []
        # The plugin's skip reason names them after the prefix (whatever else it says).
        words = re.split(r"[^A-Za-z0-9]+", self.detail.removeprefix(UNSUPPORTED_PREFIX))
        return [w for w in dict.fromkeys(words) if w in self.features]

    def counts_for(self, feature: str) -> bool:
        """Whether this test's outcome says anything about ``feature``.

        A test skipped for lacking another feature says nothing about this one (upstream
        records it as NOT_SUPPORTED, in no statistic).
        """
        missing = self.missing
        return not missing or feature in missing


@dataclasses.dataclass
class Results:
    tests: dict[str, TestResult] = dataclasses.field(default_factory=dict)

    def record(self, report, names: list[str]) -> None:
        result = self.tests.setdefault(report.nodeid, TestResult(report.nodeid, list(names)))
        for key, value in report.user_properties:
            if key == VERDICT_NOTE_PROPERTY and value not in result.notes:
                result.notes.append(value)
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

    def not_run(self, nodeid: str, names: list[str], reason: str) -> None:
        """A test that was collected but never run (deselected); a real outcome wins."""
        if nodeid not in self.tests:
            self.tests[nodeid] = TestResult(nodeid, list(names), "skipped", f"{NOT_RUN_PREFIX}{reason}")

    def resolved(self, claimed: Iterable[str] | None) -> Results:
        """These results as the plugin would have had them had every test been selected.

        A test that was not run and needs a feature the implementation does not claim
        would have been skipped as not supported (which wins over any other skip, as
        upstream's NOT_SUPPORTED does), so it is counted as such.
        """
        if claimed is None:
            return self
        claimed = set(claimed)
        out = Results()
        for nodeid, t in self.tests.items():
            missing = [n for n in t.features if n not in claimed]
            if t.outcome == "skipped" and t.detail.startswith(NOT_RUN_PREFIX) and missing:
                t = dataclasses.replace(t, detail=f"{UNSUPPORTED_PREFIX} {', '.join(missing)}")
            out.tests[nodeid] = t
        return out

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


def _executed(tests: list[TestResult]) -> int:
    return sum(1 for t in tests if t.outcome in ("passed", "failed"))


def feature_verdict(results: list[TestResult], *, supported: bool = True,
                    feature: str | None = None) -> str:
    """The verdict of a feature from its tests (``feature`` decides which of them count)."""
    counted = [t for t in results if feature is None or t.counts_for(feature)]
    outcomes = {t.outcome or "skipped" for t in counted}
    if "failed" in outcomes:
        return "failed"
    if not supported and "passed" not in outcomes:
        return "unsupported"
    if "passed" not in outcomes:
        return "untested"  # zero tests ran: never a pass
    return "passed" if outcomes == {"passed"} else "partial"


def _counts(tests: list[TestResult], feature: str | None = None) -> dict[str, int]:
    counted = [t for t in tests if feature is None or t.counts_for(feature)]
    return {o: sum(1 for t in counted if (t.outcome or "skipped") == o)
            for o in ("passed", "failed", "skipped")}


def _not_counted(tests: list[TestResult], feature: str) -> dict[str, int]:
    """Tests of ``feature`` not run for lacking another feature, by that feature."""
    lacking: dict[str, int] = {}
    for t in tests:
        if not t.counts_for(feature):
            for name in t.missing:
                lacking[name] = lacking.get(name, 0) + 1
    return lacking


def verdict_line(name: str, tests: list[TestResult], *, supported: bool = True) -> str:
    counts = _counts(tests, name)
    summary = ", ".join(f"{n} {o}" for o, n in counts.items() if n)
    if not counts["passed"] and not counts["failed"]:
        summary = "no test ran" + (f", {summary}" if summary else "")
    lacking = _not_counted(tests, name)
    if lacking:
        summary += f"; {sum(lacking.values())} not run: need {', '.join(sorted(lacking))}"
    notes = dict.fromkeys(n.partition(": ")[2] for t in tests if t.counts_for(name) and t.outcome == "passed"
                          for n in t.notes if n.startswith(f"{name}: "))
    if notes:
        summary += "; " + "; ".join(notes)
    verdict = feature_verdict(tests, supported=supported, feature=name)
    return f"{name:60} {verdict.upper():11} ({summary})"


def verdict_lines(results: Results, *, supported: Iterable[str] | None = None,
                  interrupted: bool = False) -> list[str]:
    """One line per feature. An interrupted run passes nothing: the tests it never reached
    are not in ``results``, so every verdict but a failure reads INCOMPLETE."""
    claimed = None if supported is None else set(supported)
    grouped = results.resolved(claimed).by_feature()
    lines = [verdict_line(name, tests, supported=claimed is None or name in claimed)
             for name, tests in grouped.items()]
    if interrupted:
        lines = [line if line[61:].startswith("FAILED") else f"{line[:61]}{'INCOMPLETE':11}{line[72:]}"
                 for line in lines]
    # A claimed feature that no collected test checks is untested too, and says so.
    lines += [f"{name:60} {'UNTESTED':11} (no test collected)" for name in _features.FEATURES
              if claimed is not None and name in claimed and name not in grouped]
    return lines


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
    #: --strict-rejection: only transport-level rejections count (upstream's rule).
    strict_rejection: bool = False
    #: The HTTP statuses the profile says refuse a certificate (count unless strict).
    rejection_statuses: tuple[int, ...] = ()
    #: The timeouts used, by the names of upstream's TimeoutConfig where it has one.
    timeouts: Mapping[str, float] = dataclasses.field(default_factory=dict)
    date: str = ""

    def claimed(self) -> frozenset[str]:
        return self.supported_features - self.exempt_features

    @property
    def upstream_rule(self) -> bool:
        """Whether a rejection was judged as upstream judges it (transport-level only)."""
        return self.strict_rejection or not self.rejection_statuses

    @property
    def rejection_rule(self) -> str:
        if self.upstream_rule:
            return "upstream (transport-level only)"
        statuses = [str(s) for s in sorted(self.rejection_statuses)]
        listed = statuses[0] if len(statuses) == 1 else f"{', '.join(statuses[:-1])} or {statuses[-1]}"
        return f"transport-level, or HTTP status {listed} (not upstream's)"

    @property
    def report_mode(self) -> str:
        """``mode`` of the reports: --mode, flagged when rejections were not judged as upstream.

        The mode is the first thing a reader of an upstream report (and its file name)
        shows; a run that counted HTTP statuses as rejections must not pass for one that
        used upstream's rule.
        """
        return self.mode if self.upstream_rule else f"{self.mode}+status-rejection"

    def timeouts_text(self) -> str:
        return ", ".join(f"{k}={v:g}s" for k, v in self.timeouts.items())

    def stamp(self) -> str:
        return self.date or datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")


def _status(tests: list[TestResult], *, extended: bool, supported: list[str] = (),
            unsupported: list[str] = ()) -> dict:
    counts = _counts(tests)
    statistics = {"Failed": counts["failed"], "Passed": counts["passed"],
                  "Skipped": counts["skipped"]}
    # conformance/utils/suite/reports.go: any failure fails, else any skip is partial. Unlike
    # upstream, a half in which no test ran is partial, never success: zero tests proves nothing.
    result = ("failure" if counts["failed"] else
              "partial" if counts["skipped"] or not counts["passed"] else "success")
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


def _summary(core: dict, extended: dict, run: RunInfo) -> str:
    # Wording of conformance/utils/suite/reports.go buildReportSummary, except for a half
    # in which nothing ran; then how the run judged, which upstream's format has no field for.
    def word(status: dict) -> str:
        stats = status["statistics"]
        if not stats["Passed"] and not stats["Failed"]:
            skipped = f", {stats['Skipped']} skipped" if stats["Skipped"] else ""
            return f"did not run (0 executed{skipped})"
        return {"success": "succeeded",
                "partial": f"partially succeeded with {stats['Skipped']} test skips",
                "failure": f"failed with {stats['Failed']} test failures"}[status["result"]]
    text = f"Core tests {word(core)}. Extended tests {word(extended)}. " \
           f"Rejection rule: {run.rejection_rule}."
    if run.timeouts:
        text += f" Timeouts: {run.timeouts_text()}."
    return text


def conformance_report(results: Results, run: RunInfo) -> dict:
    """The upstream ConformanceReport (conformance/apis/v1) for the GATEWAY-HTTP profile.

    A test belongs to the extended half when any of its upstream features is extended.
    Tests that check only extensions of ours stay out: upstream has no name for them. As
    upstream (conformance/utils/suite/suite.go, testNotSupported), a test skipped because
    the implementation lacks a feature is not counted at all; the feature is listed in
    unsupportedFeatures instead. Tests skipped for any other reason (--skip-tests,
    --run-test, deselected by -k, -m or node ids) count as Skipped and make the result
    partial. A half in which no test ran is partial (upstream would say success).
    ``mode`` and ``summary`` say how rejections were judged, and the summary the timeouts.
    """
    results = results.resolved(run.claimed())
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
        "mode": run.report_mode,
        "implementation": run.implementation.as_dict(),
        "profiles": [{"name": _features.GATEWAY_HTTP, "summary": _summary(core, extended, run),
                      "core": core, "extended": extended}],
    }


def feature_verdicts(results: Results, run: RunInfo) -> dict:
    """Our per-feature verdicts, extensions included: the input of the matrix."""
    results = results.resolved(run.claimed())
    grouped = results.by_feature()
    claimed = run.claimed()
    out: dict[str, dict] = {}
    for name, feature in _features.FEATURES.items():
        tests = grouped.get(name, [])
        out[name] = {"verdict": feature_verdict(tests, supported=name in claimed, feature=name),
                     **_counts(tests, name),
                     # Tests of the feature not run because another feature they need is
                     # missing: counted for none of their features, as upstream.
                     "notSupported": sum(_not_counted(tests, name).values()),
                     "support": feature.support, "upstream": feature.upstream}
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
        "mode": run.report_mode,
        "implementation": run.implementation.as_dict(),
        "featuresSource": run.features_source,
        "rejectionRule": run.rejection_rule,
        "rejection": {"upstream": run.upstream_rule,
                      "statuses": [] if run.strict_rejection else sorted(run.rejection_statuses)},
        "timeouts": dict(run.timeouts),
        "features": out,
        "tests": tests,
    }


def file_stem(run: RunInfo) -> str:
    """``<channel>-<version>-<mode>``, as the upstream reports/ folders name their files."""
    version = re.sub(r"[^A-Za-z0-9._+-]+", "_", run.implementation.version or "unknown")
    return f"{run.channel}-{version}-{run.report_mode}"


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
             f"Gateway API {run.gateway_api_version} ({run.channel}), mode {run.report_mode}; "
             f"rejection rule: {run.rejection_rule}; "
             f"timeouts: {run.timeouts_text() or 'defaults'}; supported features from "
             f"{run.features_source or 'the profile'}.", "",
             "A test skipped because the implementation lacks another feature it needs counts "
             "for none of its features (column 'not supported'); untested: none of the "
             "feature's tests ran.", "",
             "| feature | verdict | passed | failed | skipped | not supported |",
             "|---|---|---|---|---|---|"]
    for name, entry in verdicts["features"].items():
        lines.append(f"| {name} | {entry['verdict']} | {entry['passed']} | {entry['failed']} "
                     f"| {entry['skipped']} | {entry['notSupported']} |")
    (directory / "summary.md").write_text("\n".join(lines) + "\n")
    return path
