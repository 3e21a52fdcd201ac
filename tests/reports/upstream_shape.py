"""The shape of an upstream ConformanceReport, and a checker that names every deviation.

Field lists copied from the Go types in kubernetes-sigs/gateway-api at commit
4564255ac2c35d582249b3cdf261bdf51c8bca32:

- conformance/apis/v1/conformancereport.go: ConformanceReport (metav1.TypeMeta inline,
  ``implementation``, ``date``, ``gatewayAPIVersion``, ``mode``, ``gatewayAPIChannel``,
  ``profiles``, ``succeededProvisionalTests,omitempty``) and Implementation
  (``organization``, ``project``, ``url``, ``version``, ``contact``; Validate() refuses
  any of them empty);
- conformance/apis/v1/profilereport.go: ProfileReport (``name``, ``summary``, ``core``,
  ``extended,omitempty``), ExtendedStatus (Status inline, ``supportedFeatures,omitempty``,
  ``unsupportedFeatures,omitempty``), Status (Result ``result``, Statistics
  ``statistics``, ``skippedTests,omitempty``, ``failedTests,omitempty``);
- conformance/apis/v1/statistics.go: Statistics has no json tags, so its keys are the Go
  field names ``Passed``, ``Skipped``, ``Failed`` (uint32);
- conformance/apis/v1/result.go: Result is ``success`` | ``partial`` | ``failure``.
"""

from __future__ import annotations

REPORT_REQUIRED = {"apiVersion", "kind", "implementation", "date", "gatewayAPIVersion", "mode",
                   "gatewayAPIChannel", "profiles"}
REPORT_OPTIONAL = {"succeededProvisionalTests"}
IMPLEMENTATION_REQUIRED = {"organization", "project", "url", "version", "contact"}
PROFILE_REQUIRED = {"name", "summary", "core"}
PROFILE_OPTIONAL = {"extended"}
STATUS_REQUIRED = {"result", "statistics"}
STATUS_OPTIONAL = {"skippedTests", "failedTests"}
EXTENDED_OPTIONAL = STATUS_OPTIONAL | {"supportedFeatures", "unsupportedFeatures"}
STATISTICS_KEYS = {"Passed", "Skipped", "Failed"}
RESULTS = {"success", "partial", "failure"}


def _keys(where: str, obj, required: set[str], optional: set[str]) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected a mapping, got {type(obj).__name__}"]
    problems = [f"{where}: missing {k}" for k in sorted(required - set(obj))]
    problems += [f"{where}: unknown field {k}" for k in sorted(set(obj) - required - optional)]
    return problems


def _string_list(where: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return [f"{where}: expected a list of strings, got {value!r}"]
    return []


def _status(where: str, status, optional: set[str]) -> list[str]:
    problems = _keys(where, status, STATUS_REQUIRED, optional)
    if problems:
        return problems
    if status["result"] not in RESULTS:
        problems.append(f"{where}.result: {status['result']!r} is not one of {sorted(RESULTS)}")
    stats = status["statistics"]
    if not isinstance(stats, dict) or set(stats) != STATISTICS_KEYS:
        problems.append(f"{where}.statistics: expected exactly {sorted(STATISTICS_KEYS)}, got {stats!r}")
    elif not all(isinstance(v, int) and v >= 0 for v in stats.values()):
        problems.append(f"{where}.statistics: counts must be unsigned integers, got {stats!r}")
    for key in optional & set(status):
        problems += _string_list(f"{where}.{key}", status[key])
    return problems


def check(report) -> list[str]:
    """Every way ``report`` (parsed YAML) differs from the upstream types; [] if none."""
    problems = _keys("report", report, REPORT_REQUIRED, REPORT_OPTIONAL)
    if problems:
        return problems
    if report["apiVersion"] != "gateway.networking.k8s.io/v1" or report["kind"] != "ConformanceReport":
        problems.append(f"report: apiVersion/kind {report['apiVersion']}/{report['kind']}")
    for key in ("date", "gatewayAPIVersion", "mode", "gatewayAPIChannel"):
        if not isinstance(report[key], str) or not report[key]:
            problems.append(f"report.{key}: expected a non-empty string, got {report[key]!r}")
    impl = report["implementation"]
    problems += _keys("implementation", impl, IMPLEMENTATION_REQUIRED, set())
    if isinstance(impl, dict) and not problems:
        for key in ("organization", "project", "url", "version"):
            if not isinstance(impl[key], str) or not impl[key]:
                problems.append(f"implementation.{key}: must not be empty (Implementation.Validate)")
        problems += _string_list("implementation.contact", impl["contact"])
        if not impl["contact"]:
            problems.append("implementation.contact: must not be empty (Implementation.Validate)")
    if not isinstance(report["profiles"], list) or not report["profiles"]:
        return problems + ["report.profiles: expected a non-empty list"]
    for i, profile in enumerate(report["profiles"]):
        where = f"profiles[{i}]"
        keyed = _keys(where, profile, PROFILE_REQUIRED, PROFILE_OPTIONAL)
        problems += keyed
        if keyed:
            continue
        problems += _status(f"{where}.core", profile["core"], STATUS_OPTIONAL)
        if "extended" in profile:
            problems += _status(f"{where}.extended", profile["extended"], EXTENDED_OPTIONAL)
    return problems
