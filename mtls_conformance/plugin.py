"""pytest plugin of the mTLS conformance harness (registered through the pytest11 entry point).

It is inert until a test asks for ``mtls_target``: options and markers are registered for
every pytest run, but no gateway is started and no cluster is contacted unless a
scenario runs. At the end it prints one verdict per feature and, with ``--report-dir``,
writes a ConformanceReport.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
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
from . import flags as _flags
from . import outputs as _outputs
from . import processes as _processes
from . import profiles as _profiles
from . import report as _report
from .client import Settings
from .expect import Timing
from .outputs import features_of
from .target import ObjectRef, Target, TargetError

RESULTS_KEY = pytest.StashKey["_report.Results"]()
SUITE_KEY = pytest.StashKey["Suite"]()
OUTPUTS_KEY = pytest.StashKey["_outputs.Outputs"]()
SESSION_KEY = pytest.StashKey[pytest.Session]()
FAILED_KEY = pytest.StashKey[bool]()
FEATURES_PROPERTY = "mtls_features"

#: The fixtures ship with the plugin: a vendor's own tests get mtls_pki, mtls_backend, ...,
#: and the guides' PKI and deploy_gateway that the scenarios use,
#: with the package alone.
pytest_plugins = ["mtls_conformance._ahead", "mtls_conformance.fixtures.pki", "mtls_conformance.fixtures.echo", "mtls_conformance.fixtures.backends", "mtls_conformance.fixtures.nginx", "mtls_conformance.fixtures.guide"]


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


def _module_count(value: str) -> int | None:
    if value == "all":
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise pytest.UsageError(f"--configure-ahead: expected a number of scenario modules (0 or more) or 'all', "
                                f"got {value!r}")
    return number


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs
    pluginmanager.add_hookspecs(hookspecs)


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
    group.addoption("--strict-rejection", action="store_true", default=None,
                    help="only a transport-level rejection (alert, reset, close) counts as a "
                         "rejected client certificate, as in the upstream suite (the default "
                         "with --report-output)")
    group.addoption("--no-strict-rejection", action="store_false", dest="strict_rejection",
                    default=None,
                    help="also count the HTTP statuses the profile lists as rejections, with "
                         "--report-output too (the report's mode then says +status-rejection)")
    group.addoption("--max-time-to-consistency", metavar="SECONDS", type=_positive_float,
                    default=30.0, help="how long traffic may take to match a configuration change, counted "
                                       "from the harness's last change")
    group.addoption("--condition-timeout", metavar="SECONDS", type=_positive_float,
                    default=60.0, help="how long a status condition may take to reach the expected "
                                       "value at the object's current generation")
    group.addoption("--report-dir", metavar="DIR", default=None,
                    help="write a ConformanceReport and a summary of the verdicts here")
    group.addoption("--external-backend-host", metavar="HOST[:PORT]", type=_host_port, default=None,
                    help="a public HTTPS host the gateway can reach (e.g. httpbin.org): the backend TLS "
                         "scenarios with wellKnownCACertificates: System also run against it; without "
                         "it they run only against a simulated external host")
    group.addoption("--configure-ahead", metavar="MODULES", type=_module_count, default=None,
                    help="configure this many scenario modules after the running one (default: all), so that "
                         "their gateways have converged, and a broken one is judged, by the time their checks "
                         "run; 0: each module when it starts. Without xdist only (xdist's workers run "
                         "modules side by side)")
    group.addoption("--list-features", action="store_true", default=False,
                    help="print the features this suite checks and exit")
    _outputs.add_options(group)
    _flags.add_options(group)


def pytest_configure(config: pytest.Config) -> None:
    _processes.terminate_as_interrupt()  # a SIGTERMed run tears down like a Ctrl-C'd one
    _flags.apply(config)
    config.addinivalue_line(
        "markers", "features(*names): the Gateway API features a scenario checks; it is skipped "
                   "when the implementation does not support all of them")
    config.addinivalue_line(
        "markers", "configure_ahead(setup=function): run the function (its arguments: module or session fixtures, and the "
                   "test's parameters) at the start of the module, for every test of the module that runs, "
                   "and give its result to the test as the fixture mtls_configured; a generator function "
                   "configures up to its yield, and checks and changes after it, once every setup has configured, "
                   "together with the other setups' parts after yield "
                   "(at_module_start=True: once its module starts, for what must not age, as a TLS session)")
    config.stash[RESULTS_KEY] = _report.Results()
    config.stash[SUITE_KEY] = Suite(config)
    config.pluginmanager.register(_Recorder(config), "mtls-recorder")
    config.stash[OUTPUTS_KEY] = _outputs.Outputs(config, config.stash[RESULTS_KEY], config.stash[SUITE_KEY])
    config.pluginmanager.register(config.stash[OUTPUTS_KEY], "mtls-outputs")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Find the rootdir and ini file again, now that pytest knows this plugin's options.

    pytest looks for them before any plugin is loaded, so in ``--profile FILE`` (space
    form) it takes FILE for a test path: with FILE outside the checkout, pyproject.toml is
    not found, ``testpaths`` is lost and pytest collects the whole working directory.
    Option values must never change what is collected, whatever their form.
    """
    ns = parser.parse_known_args(list(args), namespace=copy.copy(early_config.option))
    if ns.inifilename or ns.rootdir:
        return  # given explicitly: pytest did not guess
    # pytest's private API (no public one re-finds the rootdir): pyproject.toml bounds the
    # pytest range to the releases CI runs this on.
    from _pytest.config.findpaths import determine_setup

    kwargs = dict(inifile=None, override_ini=ns.override_ini, args=ns.file_or_dir, rootdir_cmd_arg=None,
                  invocation_dir=early_config.invocation_params.dir)
    accepted = inspect.signature(determine_setup).parameters
    rootpath, inipath, inicfg = determine_setup(**{k: v for k, v in kwargs.items() if k in accepted})[:3]
    if (rootpath, inipath) == (early_config.rootpath, early_config.inipath):
        return
    had_ini = early_config.inipath is not None
    early_config._rootpath, early_config._inipath = rootpath, inipath
    setattr(early_config, "_inicfg" if hasattr(early_config, "_inicfg") else "inicfg", inicfg)
    getattr(early_config, "_inicache", {}).clear()
    parser.extra_info["rootdir"], parser.extra_info["inifile"] = str(rootpath), str(inipath)
    addopts = early_config.getini("addopts")
    if addopts and not had_ini:
        args[:] = list(addopts) + args
        early_config.pluginmanager.consider_preparse(list(addopts), exclude_only=False)
    early_config.known_args_namespace = parser.parse_known_args(args, namespace=copy.copy(early_config.option))
    if ns.confcutdir is None:
        early_config.known_args_namespace.confcutdir = str(inipath.parent if inipath else rootpath)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    # Runs once, in the process the user started, before any test and before xdist
    # starts workers: bad input is one line here, not a traceback after the whole suite.
    if config.getoption("list_features"):
        print("\n".join(_features.table()))
        return 0
    command = config.getoption("gateway_command")
    if command is not None:
        check_gateway_command(command)
    check_output_paths(config)
    _flags.check(config)
    profile = config.getoption("profile")
    if profile:
        try:
            _profiles.load(Path(profile))
        except _profiles.ProfileError as exc:
            raise pytest.UsageError(f"{exc}; fix the file or leave --profile out to use the built-in "
                                    f"profile of the GatewayClass's controller") from None
    target = config.getoption("target")
    if target == "kubernetes" and config.getoption("gateway_command"):
        raise pytest.UsageError("--gateway-command runs a local gateway and cannot be combined with "
                                "--target=kubernetes; drop one of them")
    return None


#: Output options: (dest, flag, whether the value is a directory). --junitxml and
#: --alluredir belong to pytest and allure-pytest, which write them only at the end.
OUTPUT_OPTIONS = (("report_dir", "--report-dir", True), ("report_output", "--report-output", False),
                  ("xmlpath", "--junitxml", False), ("allure_report_dir", "--alluredir", True))


def check_output_paths(config: pytest.Config) -> None:
    """Refuse an output path that cannot be written, before the first test."""
    for dest, flag, is_dir in OUTPUT_OPTIONS:
        value = getattr(config.option, dest, None)
        if not value:
            continue
        problem = unwritable(Path(value), is_dir=is_dir)
        if problem:
            kind = "a directory" if is_dir else "a file"
            raise pytest.UsageError(f"{flag} {value}: {problem}; give {kind} path this user can write")


def unwritable(path: Path, *, is_dir: bool) -> str | None:
    """Why ``path`` cannot be written (creating missing parents is fine), or None."""
    path = path.expanduser().absolute()
    if is_dir and path.exists() and not path.is_dir():
        return "exists and is not a directory"
    if not is_dir and path.is_dir():
        return "is a directory"
    existing = path if is_dir else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if is_dir and existing == path or not is_dir and path.exists():
        target = path
    else:
        target = existing
    if not os.access(target, os.W_OK) or (target.is_dir() and not os.access(target, os.X_OK)):
        return f"{target} is not writable"
    if str(target).startswith(("/proc/", "/sys/")) or str(target) in ("/proc", "/sys"):
        return f"{target} is a kernel file system"
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
        self.said_cannot_keep = False
        #: Target.change_scope: the scenario module being configured or run now.
        self.change_scope = ""
        self.settings = Settings(
            timing=Timing(max_time_to_consistency=config.getoption("max_time_to_consistency"),
                          condition_timeout=config.getoption("condition_timeout"),
                          **({"request_timeout": config.option.mtls_request_timeout}
                             if hasattr(config.option, "mtls_request_timeout") else {})),
            strict_rejection=_outputs.strict_rejection(config))

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
                self._target.change_scope = self.change_scope
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

    def set_change_scope(self, scope: str) -> None:
        self.change_scope = scope
        if self._target is not None:
            self._target.change_scope = scope

    @contextlib.contextmanager
    def changes_of(self, scope: str):
        """Changes made inside the block belong to ``scope`` (a module configured ahead)."""
        before = self.change_scope
        self.set_change_scope(scope)
        try:
            yield
        finally:
            self.set_change_scope(before)

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
            if self.config.getoption("all_features"):
                supported, source = list(_features.FEATURES), "--all-features"
            else:
                source = "--supported-features"
            if supported is not None:
                profile = profile.with_features(supported, source=source)
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


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    for item in items:
        for name in features_of(item):
            try:
                _features.lookup(name)
            except _features.UnknownFeature as exc:
                raise pytest.UsageError(f"{item.nodeid}: {exc}") from None


def pytest_runtest_setup(item: pytest.Item) -> None:
    suite = item.config.stash[SUITE_KEY]
    module = item.getparent(pytest.Module)
    # The test's changes, and its module's setup and teardown, are its module's (Target.last_change).
    suite.set_change_scope(module.nodeid if module is not None else "")
    names = features_of(item)
    if not names:
        return
    missing = suite.unsupported(names)
    if missing:
        pytest.skip(f"implementation does not support {', '.join(missing)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    # Rejections a GatewayClient sees during the test are recorded on the test itself.
    token = _client.recording.set(item.user_properties)
    testing = _client.testing.set(_client.property_of(item.name))
    try:
        return (yield)
    finally:
        _client.testing.reset(testing)
        _client.recording.reset(token)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    module = item.getparent(pytest.Module)
    if report.failed and module is not None:
        module.stash[FAILED_KEY] = True  # --keep-objects=failed keeps the module's namespace
    names = features_of(item)
    if names:
        report.user_properties.append((FEATURES_PROPERTY, names))
        if report.failed and call.excinfo is not None and item.config.getoption("tbstyle") == "auto":
            shorten_failure(item, call.excinfo, report, names)
    return report


def shorten_failure(item: pytest.Item, excinfo: pytest.ExceptionInfo, report: pytest.TestReport,
                    names: list[str]) -> None:
    """A scenario's failure as a person reads it once: the scenario's own lines and the message.

    The harness's frames and the fixture values (certificates, clients) say nothing the
    message does not; ``--tb=long`` (or any --tb) shows the full traceback again.
    """
    own = [entry for entry in excinfo.traceback if Path(str(entry.path)) == Path(str(item.path))]
    if own:
        excinfo.traceback = excinfo.traceback.filter(lambda entry: entry in own)
    longrepr = excinfo.getrepr(style="short", funcargs=False, chain=False)
    label = f"feature{'s' if len(names) > 1 else ''} {', '.join(names)}"
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        crash.message = f"[{label}] {crash.message}"  # the short summary line names the feature
    longrepr.addsection("mtls", f"{label}; --tb=long for the full traceback")
    report.longrepr = longrepr


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

    def pytest_terminal_summary(self, terminalreporter, exitstatus) -> None:
        if hasattr(self.config, "workerinput") or not self.results.tests:
            return
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        terminalreporter.write_sep("=", "verdicts per feature" + (
            " (the run was interrupted: incomplete)" if interrupted else ""))
        claimed = self.config.stash[OUTPUTS_KEY].claimed_features()
        for line in _report.verdict_lines(self.results, supported=claimed, interrupted=interrupted):
            terminalreporter.write_line(line)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[SESSION_KEY] = session


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # This runs before pytest tears down the session's fixtures (its runner's hook is
    # called last): from here on, see processes.finish_uninterrupted.
    _processes.finish_uninterrupted()
    _finish(session, exitstatus)


def _finish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    suite = config.stash[SUITE_KEY]
    suite.close()
    if hasattr(config, "workerinput"):
        return
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        # Its report would claim the features of every test the run never reached.
        if config.getoption("report_dir") or config.getoption("report_output"):
            config.stash[OUTPUTS_KEY]._write_line("[mtls] the run was interrupted: no report written")
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
    keep = request.config.getoption("keep_objects")
    try:
        yield name
    finally:
        failed = request.node.stash.get(FAILED_KEY, False)
        how = mtls_target.keep_namespace(name) if keep == "always" or keep == "failed" and failed else None
        suite = request.config.stash[SUITE_KEY]
        if how:
            suite.progress(f"kept namespace {name} (--keep-objects={keep}): {how}")
        else:
            if keep != "never" and not suite.said_cannot_keep:
                suite.said_cannot_keep = True
                suite.progress(f"--keep-objects={keep}: the {mtls_target.kind} target cannot keep objects after "
                               "a module (they live in its gateway process); --pdb stops at a failure while "
                               "they still exist")
            mtls_target.delete_namespace(name)
