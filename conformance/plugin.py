"""pytest plugin of the mTLS conformance harness (registered through the pytest11 entry point).

It is inert until a test asks for ``mtls_target``: options and markers are registered for
every pytest run, but no gateway is started and no cluster is contacted unless a
scenario runs. At the end it prints one verdict per feature and, with ``--report-dir``,
writes a ConformanceReport.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from . import client as _client
from . import features as _features
from . import outputs as _outputs
from . import profiles as _profiles
from . import report as _report
from .client import Settings
from .expect import Timing
from .target import ObjectRef, Target, TargetError

RESULTS_KEY = pytest.StashKey["_report.Results"]()
SUITE_KEY = pytest.StashKey["Suite"]()
OUTPUTS_KEY = pytest.StashKey["_outputs.Outputs"]()
SESSION_KEY = pytest.StashKey[pytest.Session]()
FEATURES_PROPERTY = "mtls_features"


def _csv(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    for name in names:
        try:
            _features.lookup(name)
        except _features.UnknownFeature as exc:
            raise pytest.UsageError(str(exc)) from None
    return names


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":") if value.count(":") == 1 else (value.strip(), "", "")
    if not sep:
        host, port = value.strip(), "443"
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise pytest.UsageError(f"--external-backend-host expects HOST or HOST:PORT (e.g. httpbin.org), "
                                f"got {value!r}")
    return host.lower(), int(port)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1
    if number <= 0:
        raise pytest.UsageError(f"expected a number of seconds greater than 0, got {value!r}")
    return number


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mtls-conformance", "mTLS conformance of Gateway API implementations")
    group.addoption("--target", choices=("auto", "local", "kubernetes"), default="auto",
                    help="where the gateway under test runs: 'local' (a process on this machine), "
                         "'kubernetes' (the cluster of the current kubeconfig context), or 'auto' "
                         "(kubernetes when --gateway-class is given, local otherwise)")
    group.addoption("--gateway-class", metavar="NAME", default=None,
                    help="GatewayClass of the implementation under test")
    group.addoption("--gateway-command", metavar="CMD", default=None,
                    help="local target: command that runs a gateway following docs/local-target.md "
                         "({config_dir}, {state_dir} and, if present, {system_ca_bundle} are filled in; "
                         "see docs/local-target.md); default: the bundled refgateway")
    group.addoption("--controller-name", metavar="NAME", default=None,
                    help="local target: controllerName of the GatewayClass the harness creates")
    group.addoption("--kubeconfig", metavar="FILE", default=None,
                    help="kubernetes target: kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    group.addoption("--context", metavar="NAME", default=None,
                    help="kubernetes target: kubeconfig context (default: the current context)")
    group.addoption("--gateway-address-mode", choices=("status", "port-forward"), default="status",
                    help="kubernetes target: reach listeners at the Gateway's status.addresses "
                         "('status'), or through `kubectl port-forward` to the Gateway's Service")
    group.addoption("--backend-mode", choices=("deployment", "local-process"), default="deployment",
                    help="kubernetes target: backends as Deployments of --echo-image ('deployment'), or "
                         "as processes on this machine in a network namespace, for a gateway running "
                         "here against an API server without kubelets ('local-process', needs root)")
    group.addoption("--echo-image", metavar="IMAGE", default=None,
                    help="kubernetes target: image of the echo backends (default: upstream's echo-basic)")
    group.addoption("--nginx-image", metavar="IMAGE", default=None,
                    help="kubernetes target, --backend-mode=deployment: image of the nginx TLS backends "
                         "(default: docker.io/library/nginx:1.28)")
    group.addoption("--system-ca-bundle", metavar="FILE", default=None,
                    help="kubernetes target: the PEM file the gateway under test reads as its system "
                         "trust store (BackendTLSPolicy wellKnownCACertificates: System), if the harness may "
                         "write it; the harness adds a stand-in public CA and restores the file at the end. "
                         "Without it those scenarios skip (the local target uses {system_ca_bundle})")
    group.addoption("--profile", metavar="FILE", default=None,
                    help="implementation profile (YAML) instead of the built-in one for the controller")
    group.addoption("--supported-features", metavar="A,B", type=_csv, default=None,
                    help="features the implementation supports (overrides the profile)")
    group.addoption("--exempt-features", metavar="A,B", type=_csv, default=None,
                    help="features not to test even if supported")
    group.addoption("--strict-rejection", action="store_true", default=False,
                    help="only a transport-level rejection (alert, reset, close) counts as a "
                         "rejected client certificate, as in the upstream suite")
    group.addoption("--max-time-to-consistency", metavar="SECONDS", type=_positive_float,
                    default=30.0, help="how long traffic may take to match a configuration change")
    group.addoption("--condition-timeout", metavar="SECONDS", type=_positive_float,
                    default=60.0, help="how long a status condition may take to reach the expected "
                                       "value at the object's current generation")
    group.addoption("--report-dir", metavar="DIR", default=None,
                    help="write a ConformanceReport and a summary of the verdicts here")
    group.addoption("--external-backend-host", metavar="HOST[:PORT]", type=_host_port, default=None,
                    help="a public HTTPS host the gateway can reach (e.g. httpbin.org): the backend TLS "
                         "scenarios with wellKnownCACertificates: System also run against it; without "
                         "it they run only against a simulated external host")
    group.addoption("--list-features", action="store_true", default=False,
                    help="print the features this suite checks and exit")
    _outputs.add_options(group)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "features(*names): the Gateway API features a scenario checks; it is skipped "
                   "when the implementation does not support all of them")
    config.stash[RESULTS_KEY] = _report.Results()
    config.stash[SUITE_KEY] = Suite(config)
    config.pluginmanager.register(_Recorder(config), "mtls-recorder")
    config.stash[OUTPUTS_KEY] = _outputs.Outputs(config, config.stash[RESULTS_KEY])
    config.pluginmanager.register(config.stash[OUTPUTS_KEY], "mtls-outputs")


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.getoption("list_features"):
        print("\n".join(_features.table()))
        return 0
    command = config.getoption("gateway_command")
    if command is not None:
        check_gateway_command(command)
    target = config.getoption("target")
    if target == "kubernetes" and config.getoption("gateway_command"):
        raise pytest.UsageError("--gateway-command runs a local gateway and cannot be combined with "
                                "--target=kubernetes; drop one of them")
    return None


def check_gateway_command(command: str) -> None:
    """Refuse a --gateway-command that cannot even be started, before any test runs."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise pytest.UsageError(f"--gateway-command {command!r} cannot be split: {exc}") from None
    if not argv:
        raise pytest.UsageError("--gateway-command is empty; leave it out to use the bundled refgateway")
    if shutil.which(argv[0]) is None:
        raise pytest.UsageError(f"--gateway-command {command!r}: {argv[0]!r} is not an executable "
                                f"file or a command on PATH")


class Suite:
    """The per-session state: options, the target (started on first use), the profile."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._target: Target | None = None
        self._profile: _profiles.Profile | None = None
        self.failed_to_start = ""
        self.settings = Settings(
            timing=Timing(max_time_to_consistency=config.getoption("max_time_to_consistency"),
                          condition_timeout=config.getoption("condition_timeout")),
            strict_rejection=config.getoption("strict_rejection"))

    @property
    def target_kind(self) -> str:
        kind = self.config.getoption("target")
        if kind == "auto":
            return "kubernetes" if self.config.getoption("gateway_class") else "local"
        return kind

    def progress(self, message: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        worker = getattr(self.config, "workerinput", {}).get("workerid")
        if reporter is not None:
            # Progress comes mostly from inside fixtures and tests, where output is
            # captured: it would only be shown if the test failed.
            capture = self.config.pluginmanager.get_plugin("capturemanager")
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                if worker:
                    # An xdist worker's terminal reporter is silent, but its uncaptured
                    # stderr is the user's terminal.
                    sys.stderr.write(f"\n[mtls {worker}] {message}\n")
                    sys.stderr.flush()
                else:
                    reporter.write_line(f"[mtls] {message}")

    def target(self) -> Target:
        if self._target is None:
            try:
                self._target = self._start_target()
                self._target.condition_timeout = self.settings.timing.condition_timeout
            except TargetError as exc:
                self.failed_to_start = f"mtls conformance: {exc}"
        if self._target is None:
            if hasattr(self.config, "workerinput"):
                # pytest.exit inside an xdist worker is reported as an internal error of
                # the controller; failing the test and stopping the worker reads better.
                session = self.config.stash[SESSION_KEY]
                session.shouldstop = self.failed_to_start
                pytest.fail(self.failed_to_start, pytrace=False)
            pytest.exit(self.failed_to_start, returncode=pytest.ExitCode.USAGE_ERROR)
        return self._target

    def _start_target(self) -> Target:
        if self.target_kind == "kubernetes":
            from .kubernetes import KubernetesTarget  # imported lazily: it loads the kubernetes client
            return KubernetesTarget.from_options(self.config, progress=self.progress)
        from .local import REFGATEWAY_COMMAND, REFGATEWAY_CONTROLLER, LocalTarget
        if self.config.getoption("system_ca_bundle"):
            raise TargetError("--system-ca-bundle is for the kubernetes target; a local gateway gets its "
                              "trust store from {system_ca_bundle} in --gateway-command (docs/local-target.md)")
        return LocalTarget(
            gateway_class=self.config.getoption("gateway_class") or "refgateway",
            command=self.config.getoption("gateway_command") or REFGATEWAY_COMMAND,
            controller_name=self.config.getoption("controller_name") or REFGATEWAY_CONTROLLER,
            progress=self.progress)

    def controller_name(self) -> str:
        if self.target_kind == "local":
            from .local import REFGATEWAY_CONTROLLER
            return self.config.getoption("controller_name") or REFGATEWAY_CONTROLLER
        return self.target().controller_name

    def profile(self) -> _profiles.Profile:
        if self._profile is None:
            path = self.config.getoption("profile")
            if path:
                try:
                    profile = _profiles.load(Path(path))
                except _profiles.ProfileError as exc:
                    pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
            else:
                profile = _profiles.for_controller(self.controller_name())
                if profile is None:
                    profile = _profiles.GENERIC
                    self.progress(f"no built-in profile for controllerName {self.controller_name()}: "
                                  "running with the generic profile (pass --profile FILE to describe it)")
            # Precedence: --supported-features, the --profile file's list, the GatewayClass
            # status, the built-in profile.
            supported = self.config.getoption("supported_features")
            if supported is not None:
                profile = profile.with_features(supported, source="--supported-features")
            elif not profile.features_source.startswith("--profile"):
                profile = self._features_from_gateway_class(profile)
            self._profile = profile
        return self._profile

    def _features_from_gateway_class(self, profile: _profiles.Profile) -> _profiles.Profile:
        """Upstream features from GatewayClass status.supportedFeatures, when published.

        The status can only name upstream features; extensions of ours stay as the
        profile has them. Names this suite does not check are ignored.
        """
        target = self.target()
        obj = target.get(ObjectRef("GatewayClass", target.gateway_class)) or {}
        published = [(f or {}).get("name") for f in (obj.get("status") or {}).get("supportedFeatures") or []]
        if not published:
            return profile if profile.features_source else profile.with_features(
                profile.supported_features, source="built-in profile")
        upstream = {n for n in published if n in _features.FEATURES and _features.FEATURES[n].upstream}
        extensions = {n for n in profile.supported_features if not _features.FEATURES.get(n, None)
                      or not _features.FEATURES[n].upstream}
        return profile.with_features(upstream | extensions,
                                     source=f"GatewayClass {target.gateway_class} status.supportedFeatures")

    def unsupported(self, names: list[str]) -> list[str]:
        profile = self.profile()
        exempt = set(self.config.getoption("exempt_features") or ())
        return [n for n in names if n not in profile.supported_features or n in exempt]

    def close(self) -> None:
        target, self._target = self._target, None
        if target is not None:
            target.close()


def features_of(item: pytest.Item) -> list[str]:
    names: list[str] = []
    for marker in item.iter_markers("features"):
        names.extend(marker.args)
    return list(dict.fromkeys(names))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    for item in items:
        for name in features_of(item):
            try:
                _features.lookup(name)
            except _features.UnknownFeature as exc:
                raise pytest.UsageError(f"{item.nodeid}: {exc}") from None


def pytest_runtest_setup(item: pytest.Item) -> None:
    names = features_of(item)
    if not names:
        return
    suite = item.config.stash[SUITE_KEY]
    missing = suite.unsupported(names)
    if missing:
        pytest.skip(f"implementation does not support {', '.join(missing)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    # Rejections a GatewayClient sees during the test are recorded on the test itself.
    token = _client.recording.set(item.user_properties)
    try:
        return (yield)
    finally:
        _client.recording.reset(token)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    names = features_of(item)
    if names:
        report.user_properties.append((FEATURES_PROPERTY, names))
    return report


class _Recorder:
    """Collects verdicts in the process that reports (the controller under xdist)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results = config.stash[RESULTS_KEY]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == FEATURES_PROPERTY:
                self.results.record(report, value)
                return

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if hasattr(self.config, "workerinput") or not self.results.tests:
            return
        terminalreporter.write_sep("=", "verdicts per feature")
        claimed = self.config.stash[OUTPUTS_KEY].claimed_features()
        for line in _report.verdict_lines(self.results, supported=claimed):
            terminalreporter.write_line(line)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[SESSION_KEY] = session


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    suite = config.stash[SUITE_KEY]
    suite.close()
    if hasattr(config, "workerinput"):
        return
    config.stash[OUTPUTS_KEY].write_reports()


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mtls_suite(pytestconfig: pytest.Config) -> Suite:
    return pytestconfig.stash[SUITE_KEY]


@pytest.fixture(scope="session")
def mtls_target(mtls_suite: Suite) -> Target:
    """The system under test (started on first use, stopped at the end of the session)."""
    return mtls_suite.target()


@pytest.fixture(scope="session")
def mtls_profile(mtls_suite: Suite) -> _profiles.Profile:
    return mtls_suite.profile()


@pytest.fixture(scope="session")
def mtls_settings(mtls_suite: Suite) -> Settings:
    return mtls_suite.settings


@pytest.fixture(scope="session")
def mtls_external_backend_host(pytestconfig: pytest.Config) -> tuple[str, int]:
    """``--external-backend-host`` as (host, port); tests that need it skip without it."""
    value = pytestconfig.getoption("external_backend_host")
    if value is None:
        pytest.skip("needs --external-backend-host HOST (a public HTTPS host the gateway can reach, "
                    "e.g. httpbin.org); the simulated external host covers the same checks offline")
    return value


@pytest.fixture(scope="session")
def mtls_gateway_class(mtls_target: Target) -> str:
    return mtls_target.gateway_class


def _namespace_name(module_name: str, worker: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", module_name.rsplit(".", 1)[-1].lower().replace("_", "-"))
    stem = stem.removeprefix("test-").strip("-")[:40] or "scenario"
    return f"mtls-{stem}-{worker}-{uuid.uuid4().hex[:5]}"


@pytest.fixture(scope="module")
def mtls_namespace(request: pytest.FixtureRequest, mtls_target: Target):
    """A namespace of the scenario module's own, deleted with its content afterwards."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
    name = _namespace_name(request.module.__name__, worker)
    mtls_target.create_namespace(name)
    try:
        yield name
    finally:
        mtls_target.delete_namespace(name)
