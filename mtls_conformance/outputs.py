"""What a run leaves behind for people and machines: progress, JUnit properties, allure, reports.

The pytest plugin (plugin.py) registers one :class:`Outputs` per process. It

- selects tests the way the upstream suite does: ``--run-test`` runs one test and
  skips the others, ``--skip-tests`` skips the named ones; both count as skipped;
- records the tests pytest's own selection left out (``-k``, ``-m``, ``--deselect``,
  node ids on the command line, the other modules of a scenario folder of which only
  some modules were given) as not run, so that no report counts them as passed;
- prints one line per feature as soon as its last test is done (the controller does
  this under xdist, from the reports the workers send);
- puts every feature of a test in its JUnit ``<properties>`` as ``feature``;
- with allure (``--alluredir``) labels every test (epic: the support level in the
  GATEWAY-HTTP profile; feature: each feature; story: the scenario) and attaches the
  evidence of a failure;
- writes the ConformanceReport, the feature verdicts, summary.md and the matrix of the
  folder (``--report-dir``; ``--report-output`` for the ConformanceReport alone).

Test names for ``--skip-tests`` and ``--run-test`` are short names: ``module::function``
(``test_frontend_default::test_expired_client_certificate_is_rejected``, all parameters),
``module::function[params]`` (one parameter set), or a full node id.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import pytest

from . import features as _features
from . import report as _report

FEATURE_PROPERTY = "feature"
TOTALS_ATTRIBUTE = "mtls_feature_totals"
WORKER_PROFILE_KEY = "mtls_profile"
WORKER_NOT_RUN_KEY = "mtls_not_run"
NODE_IDS_REASON = "not among the tests named on the command line"
MODULE_REASON = "its module was not given on the command line"


def strict_rejection(config: pytest.Config) -> bool:
    """The rejection rule of the run: --strict-rejection / --no-strict-rejection, else strict
    exactly when --report-output asks for the submission form (upstream's rule)."""
    chosen = config.getoption("strict_rejection")
    if chosen is not None:
        return chosen
    return bool(config.getoption("report_output"))


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_options(group) -> None:
    """The options modelled on the upstream suite's flags (conformance/utils/flags)."""
    group.addoption("--skip-tests", metavar="A,B", type=_csv_list, default=[],
                    help="tests to skip, by short name (module::function, module::function[params]) "
                         "or node id; they count as skipped in the ConformanceReport")
    group.addoption("--run-test", metavar="NAME", default=None,
                    help="run only this test (short name or node id); the others count as skipped")
    group.addoption("--mode", metavar="MODE", default="default",
                    help="the implementation's operating mode, for the ConformanceReport (default: default)")
    group.addoption("--implementation-organization", metavar="ORG", default=None,
                    help="ConformanceReport implementation.organization (default: from the profile)")
    group.addoption("--implementation-project", metavar="NAME", default=None,
                    help="ConformanceReport implementation.project (default: from the profile)")
    group.addoption("--implementation-url", metavar="URL", default=None,
                    help="ConformanceReport implementation.url (default: from the profile)")
    group.addoption("--implementation-version", metavar="VERSION", default=None,
                    help="ConformanceReport implementation.version (default: from the profile)")
    group.addoption("--implementation-contact", metavar="A,B", type=_csv_list, default=None,
                    help="ConformanceReport implementation.contact, comma-separated "
                         "(GitHub handles, team names or a support URL)")
    group.addoption("--report-output", metavar="FILE", default=None,
                    help="write the ConformanceReport to this file (as upstream --report-output); "
                         "rejections are then judged by upstream's rule unless "
                         "--no-strict-rejection is given")


def features_of(item: pytest.Item) -> list[str]:
    """The features a test declares (``@pytest.mark.features``), each once, in order."""
    names: list[str] = []
    for marker in item.iter_markers("features"):
        names.extend(marker.args)
    return list(dict.fromkeys(names))


def matches(item_or_nodeid, name: str) -> bool:
    """Whether a test answers to ``name``: its node id, or its short name with or without params."""
    nodeid = item_or_nodeid if isinstance(item_or_nodeid, str) else item_or_nodeid.nodeid
    short = _report.short_name(nodeid)
    return name in (nodeid, short, _report.without_params(short))


class Outputs:
    def __init__(self, config: pytest.Config, results: _report.Results, suite) -> None:
        self.config = config
        self.results = results
        self.suite = suite  # plugin.Suite: the target, the profile, the settings
        self.progress = _report.FeatureProgress()
        self.skip_reasons: dict[str, str] = {}
        #: Every collected test with features: node id -> features (node-id selection).
        self._collected: dict[str, list[str]] = {}
        #: The modules collected, by path (to find the scenario modules left out).
        self._modules: dict[Path, pytest.Module] = {}
        #: Tests pytest's selection left out: node id -> (features, reason).
        self.not_run: dict[str, tuple[list[str], str]] = {}
        self.worker_profile: dict | None = None
        #: The Gateway API bundle version the target reports (its CRDs' annotation), if any.
        self.bundle_version: str | None = None
        self._allure = None

    # -- selection -----------------------------------------------------------------------
    def unknown_test_names(self, nodeids: list[str]) -> str | None:
        """The error for a --run-test / --skip-tests name that no collected test answers to."""
        run_test = self.config.getoption("run_test")
        for flag, names in (("--run-test", [run_test] if run_test else []),
                            ("--skip-tests", self.config.getoption("skip_tests") or [])):
            for name in names:
                if not any(matches(nodeid, name) for nodeid in nodeids):
                    examples = ", ".join(sorted({_report.without_params(_report.short_name(n))
                                                 for n in nodeids})[:3])
                    return (f"{flag} {name}: no collected test has that name; use a short name such "
                            f"as {examples or 'test_module::test_function'} or a node id")
        return None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session, config, items) -> None:
        # Under xdist the controller checks the names (pytest_xdist_node_collection_finished):
        # an error raised in a worker would read as a crash.
        if not hasattr(config, "workerinput"):
            error = self.unknown_test_names([item.nodeid for item in items])
            if error:
                raise pytest.UsageError(error)
        run_test = config.getoption("run_test")
        skip_tests = config.getoption("skip_tests") or []
        for item in items:
            if run_test and not matches(item, run_test):
                self.skip_reasons[item.nodeid] = f"not selected by --run-test {run_test}"
            elif any(matches(item, name) for name in skip_tests):
                self.skip_reasons[item.nodeid] = "skipped by --skip-tests"

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector):
        # A module's collection yields all its tests, also those that node ids on the
        # command line leave out: pytest matches the ids afterwards (and reports only the
        # matching nodes to pytest_collectreport).
        report = yield
        if isinstance(collector, pytest.Module):
            self._modules[collector.path] = collector
        for node in report.result or ():
            if isinstance(node, pytest.Item):
                names = features_of(node)
                if names:
                    self._collected[node.nodeid] = names
        return report

    def _deselection_reason(self) -> str:
        opt = self.config.getoption
        how = [f"-k {opt('keyword')!r}" if opt("keyword") else "",
               f"-m {opt('markexpr')!r}" if opt("markexpr") else "",
               "--deselect" if opt("deselect") else "",
               "--last-failed" if opt("lf", None) else ""]
        how = [h for h in how if h]
        return f"deselected by {' / '.join(how)}" if how else "deselected"

    def pytest_deselected(self, items) -> None:
        reason = self._deselection_reason()
        for item in items:
            names = features_of(item)
            if names:
                self.not_run[item.nodeid] = (names, reason)

    def _record_not_run(self) -> None:
        for nodeid, (names, reason) in self.not_run.items():
            self.results.not_run(nodeid, names, reason)

    def _left_out_modules(self) -> None:
        """The tests of the scenario modules beside the collected ones that were not given.

        ``pytest mtls_conformance/scenarios/test_a.py`` checks a part of what the features of test_a are
        about; the tests of test_b.py in the same folder did not run and must not be
        silently absent from the verdicts. The folders are those of collected modules with
        feature-marked tests; their other modules are collected here only to be listed.
        """
        folders = {}
        for path, module in self._modules.items():
            if any(n.startswith(module.nodeid + "::") for n in self._collected):
                folders.setdefault(path.parent, module.parent)
        for parent in folders.values():
            try:
                children = list(parent.collect())
            except Exception:  # a folder that cannot be listed: nothing more to say
                continue
            for child in children:
                if isinstance(child, pytest.Module) and child.path not in self._modules:
                    for item in _items_of(child):
                        names = features_of(item)
                        if names and item.nodeid not in self.not_run:
                            self.not_run[item.nodeid] = (names, MODULE_REASON)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        selected = {item.nodeid for item in session.items}
        for nodeid, names in self._collected.items():
            if nodeid not in selected and nodeid not in self.not_run:
                self.not_run[nodeid] = (names, NODE_IDS_REASON)
        self._left_out_modules()
        if not hasattr(self.config, "workerinput"):
            self._record_not_run()
        totals: dict[str, int] = {}
        for item in session.items:
            for name in features_of(item):
                totals[name] = totals.get(name, 0) + 1
        self.progress.totals = totals

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        names = features_of(item)
        if names and self.allure is not None:
            self._label(item, names)
        reason = self.skip_reasons.get(item.nodeid)
        # As upstream, "not supported" wins over "skipped": the plugin's own setup says so.
        if reason and not (names and self.suite.unsupported(names)):
            pytest.skip(reason)

    # -- evidence ------------------------------------------------------------------------
    @property
    def allure(self):
        """The allure module when allure-pytest is recording this run (--alluredir), else None."""
        if self._allure is None and self.config.pluginmanager.get_plugin("allure_listener"):
            self._allure = importlib.import_module("allure")
        return self._allure

    def _label(self, item: pytest.Item, names: list[str]) -> None:
        allure = self.allure
        known = [_features.FEATURES[n] for n in names if n in _features.FEATURES]
        support = "extended" if any(f.support == "extended" for f in known) else "core"
        allure.dynamic.epic(f"{_features.GATEWAY_HTTP} {support}")
        for name in names:
            allure.dynamic.feature(name)
        allure.dynamic.story(scenario_title(item))
        allure.dynamic.parameter("implementation", self.implementation_label())

    def implementation_label(self) -> str:
        impl = self.run_info(allow_start=True).implementation
        return f"{impl.project} {impl.version}"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        try:
            return (yield)
        except BaseException as exc:
            if self.allure is not None and features_of(item):
                self.allure.attach(evidence_text(exc), name="evidence",
                                   attachment_type=self.allure.attachment_type.TEXT)
            raise

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if self.bundle_version is None:
            self.bundle_version = getattr(self.suite._target, "gateway_api_version", None)
        names = features_of(item)
        if names:
            # JUnit writes the teardown report's user_properties as <property> elements.
            report.user_properties.extend((FEATURE_PROPERTY, n) for n in names
                                          if (FEATURE_PROPERTY, n) not in report.user_properties)
            # Crosses to the xdist controller with the report (TestReport keeps extra fields).
            setattr(report, TOTALS_ATTRIBUTE, dict(self.progress.totals))
        return report

    # -- progress ------------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown" or hasattr(self.config, "workerinput"):
            return
        names = [v for k, v in report.user_properties if k == FEATURE_PROPERTY]
        if not names:
            return
        if not self.progress.totals:
            self.progress.totals = dict(getattr(report, TOTALS_ATTRIBUTE, None) or {})
        claimed = self.claimed_features()
        for name in self.progress.test_done(report.nodeid, names):
            tests = self.results.resolved(claimed).by_feature().get(name, [])
            line = _report.verdict_line(name, tests, supported=claimed is None or name in claimed)
            self._write_line(f"[mtls] feature done: {' '.join(line.split())}")

    def _write_line(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        reporter.ensure_newline()
        reporter.write_line(text)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        error = self.unknown_test_names(list(ids))
        if error:
            pytest.exit(error, returncode=pytest.ExitCode.USAGE_ERROR)

    # -- the profile of the run ------------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        # xdist: the controller never runs a test; the workers know the profile.
        output = getattr(node, "workeroutput", {})
        data = output.get(WORKER_PROFILE_KEY)
        if data and self.worker_profile is None:
            self.worker_profile = data
        # Every worker collects (and deselects) the same tests; the controller none.
        for nodeid, names, reason in output.get(WORKER_NOT_RUN_KEY) or ():
            self.results.not_run(nodeid, names, reason)

    def claimed_features(self) -> set[str] | None:
        info = self.profile_info()
        if info is None:
            return None
        return set(info["supported"]) - set(self.config.getoption("exempt_features") or ())

    def profile_info(self, *, allow_start: bool = False) -> dict | None:
        """What the reports need of the profile, as plain data (it crosses from xdist workers)."""
        suite = self.suite
        profile = suite.profile() if allow_start else suite._profile
        if profile is None:
            return self.worker_profile
        return {"key": profile.key, "supported": sorted(profile.supported_features),
                "source": profile.features_source, "organization": profile.organization,
                "project": profile.project or profile.key, "url": profile.url,
                "version": profile.version or _default_version(profile.key),
                "contact": list(profile.contact), "gatewayAPIVersion": self.bundle_version,
                "rejectionStatuses": sorted(profile.rejection_statuses)}

    def run_info(self, *, allow_start: bool = False) -> _report.RunInfo:
        from . import profiles as _profiles
        info = self.profile_info(allow_start=allow_start)
        if info is None:  # no test got far enough to know the profile
            generic = _profiles.GENERIC
            info = {"key": generic.key, "supported": sorted(generic.supported_features),
                    "source": "", "organization": "", "project": generic.key, "url": "",
                    "version": "", "contact": []}
        opt = self.config.getoption
        implementation = _report.Implementation(
            organization=opt("implementation_organization") or info["organization"] or "unknown",
            project=opt("implementation_project") or info["project"],
            url=opt("implementation_url") or info["url"] or "unknown",
            version=opt("implementation_version") or info["version"] or "unknown",
            contact=tuple(opt("implementation_contact") or info["contact"]))
        settings = self.suite.settings
        timing = settings.timing
        return _report.RunInfo(
            implementation=implementation,
            supported_features=frozenset(info["supported"]),
            exempt_features=frozenset(opt("exempt_features") or ()),
            features_source=info["source"],
            mode=opt("mode"),
            gateway_api_version=info.get("gatewayAPIVersion") or _report.GATEWAY_API_VERSION,
            strict_rejection=settings.strict_rejection,
            rejection_statuses=tuple(info.get("rejectionStatuses") or ()),
            timeouts={"MaxTimeToConsistency": timing.max_time_to_consistency,
                      "ConditionTimeout": timing.condition_timeout,
                      "RequestTimeout": timing.request_timeout})

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            info = self.profile_info()
            if info is not None:
                self.config.workeroutput[WORKER_PROFILE_KEY] = info
            self.config.workeroutput[WORKER_NOT_RUN_KEY] = [
                [nodeid, names, reason] for nodeid, (names, reason) in self.not_run.items()]

    def write_reports(self) -> list[Path]:
        """The reports asked for with --report-dir / --report-output (controller only)."""
        report_dir = self.config.getoption("report_dir")
        report_output = self.config.getoption("report_output")
        if hasattr(self.config, "workerinput") or not self.results.tests or \
                not (report_dir or report_output):
            return []
        run = self.run_info()
        # One date for every file of the run (the two ConformanceReports are equal).
        run = dataclasses.replace(run, date=run.stamp())
        written = []
        if report_dir:
            written.append(_report.write(Path(report_dir), self.results, run))
            # The matrix of every report in the folder: this run, and earlier ones kept there.
            from . import matrix
            written.extend(matrix.build(Path(report_dir)))
        if report_output:
            written.append(_report.write_conformance_report(Path(report_output), self.results, run))
        for path in written:
            self._write_line(f"[mtls] wrote {path}")
        impl = run.implementation
        lacking = [f"--implementation-{key}" for key, value in (
            ("organization", impl.organization), ("url", impl.url), ("version", impl.version))
            if value in ("", "unknown")] + ([] if impl.contact else ["--implementation-contact"])
        if lacking:
            # conformance/apis/v1 Implementation.Validate refuses empty fields.
            self._write_line(f"[mtls] before submitting this ConformanceReport, rerun with "
                             f"{', '.join(lacking)}: upstream refuses it without them")
        return written


def _items_of(collector) -> list[pytest.Item]:
    """Every test under a collector; one that cannot be collected has none to list."""
    try:
        children = list(collector.collect())
    except Exception:
        return []
    items = []
    for child in children:
        if isinstance(child, pytest.Item):
            items.append(child)
        elif isinstance(child, pytest.Class):
            items.extend(_items_of(child))
    return items


def _default_version(key: str) -> str:
    if key == "refgateway":
        refgateway = sys.modules.get("refgateway") or importlib.import_module("refgateway")
        return f"v{refgateway.__version__}"
    return ""


def scenario_title(item: pytest.Item) -> str:
    """The scenario a test belongs to: the first line of its module's docstring."""
    module = getattr(item, "module", None)
    doc = (getattr(module, "__doc__", None) or "").strip()
    if doc:
        return doc.splitlines()[0].rstrip(".")
    return getattr(module, "__name__", item.nodeid.split("::")[0]).rsplit(".", 1)[-1]


def evidence_text(exc: BaseException) -> str:
    """The failure message, and what the client saw in full, for an allure attachment."""
    lines = [f"{type(exc).__name__}: {exc}"]
    evidence = getattr(exc, "evidence", None)
    if evidence is not None:
        lines += ["", "observed: " + evidence.describe()]
        fields = dataclasses.asdict(evidence) if dataclasses.is_dataclass(evidence) else {}
        for key, value in fields.items():
            if key == "body" and isinstance(value, bytes):
                value = value[:2000].decode("utf-8", "replace")
            if key == "tls" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k != "server_certificate_pem"}
            lines.append(f"  {key}: {value}")
    return "\n".join(lines) + "\n"
