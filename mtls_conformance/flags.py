"""The upstream suite's flag spellings (sigs.k8s.io/gateway-api conformance/utils/flags, v1.7.0).

A vendor who runs ``go test ./conformance -args --organization=... --report-output=...``
can pass the same flags here. Where a flag has a longer name of ours, the upstream one is
an alias with its own destination, folded into ours in :func:`apply` (an explicit
option of ours wins). README "Upstream flags" has the table; pytest's own ``--version``
and ``--debug`` keep their pytest meaning, so those two are ours only as
``--implementation-version`` and ``-v``.
"""

from __future__ import annotations

import pytest

from . import features as _features

#: upstream flag -> our option (dest), for the report fields.
ALIASES = {"organization": "implementation_organization", "project": "implementation_project",
           "url": "implementation_url", "contact": "implementation_contact"}

#: upstream TimeoutConfig fields (conformance/utils/config/timeout.go) -> our setting.
#: Status waits are one setting here (--condition-timeout): the longest given wins.
TIMEOUT_FIELDS = {
    "MaxTimeToConsistency": "max_time_to_consistency",
    "RequestTimeout": "request_timeout",
    **{name: "condition_timeout" for name in (
        "GatewayMustHaveCondition", "GatewayListenersMustHaveConditions", "GatewayStatusMustHaveListeners",
        "GWCMustBeAccepted", "HTTPRouteMustHaveCondition", "RouteMustHaveParents",
        "HTTPRouteMustNotHaveParents", "TLSRouteMustHaveParents", "GatewayMustHaveAddress",
        "NamespacesMustBeReady", "ListenerSetMustHaveCondition", "ListenerSetListenersMustHaveConditions")},
}
#: Upstream fields with nothing to set here (this suite has no such wait).
TIMEOUT_IGNORED = ("CreateTimeout", "DeleteTimeout", "GetTimeout", "ManifestFetchTimeout",
                   "DefaultTestTimeout", "RequiredConsecutiveSuccesses", "DefaultPollInterval")

KEEP_CHOICES = ("never", "failed", "always")


def _bool(flag: str):
    def parse(value: str) -> bool:
        lowered = value.strip().lower()
        if lowered in ("1", "t", "true", "yes"):
            return True
        if lowered in ("0", "f", "false", "no"):
            return False
        raise pytest.UsageError(f"{flag} expects true or false (as upstream: {flag}=false), got {value!r}")
    return parse


def parse_timeouts(value: str) -> dict[str, float]:
    """``"MaxTimeToConsistency:60;RequestTimeout:15"`` -> our settings, in seconds.

    Upstream skips a malformed pair silently; here it is an error, so that a typo never
    runs the suite with timeouts other than the ones asked for.
    """
    settings: dict[str, float] = {}
    for pair in filter(None, (p.strip() for p in value.split(";"))):
        name, sep, seconds = (part.strip() for part in pair.partition(":"))
        if not sep or not seconds.isdigit() or int(seconds) <= 0:
            raise pytest.UsageError(f"--timeout-config-overrides: {pair!r} is not NAME:SECONDS (e.g. "
                                    f"\"MaxTimeToConsistency:60;RequestTimeout:15\")")
        if name in TIMEOUT_IGNORED:
            continue
        if name not in TIMEOUT_FIELDS:
            raise pytest.UsageError(f"--timeout-config-overrides: {name!r} is not a field of upstream's "
                                    f"TimeoutConfig; known: {', '.join(sorted([*TIMEOUT_FIELDS, *TIMEOUT_IGNORED]))}")
        key = TIMEOUT_FIELDS[name]
        settings[key] = max(settings.get(key, 0.0), float(seconds))
    return settings


def _profiles_list(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    known = ("GATEWAY-HTTP", "GATEWAY-HTTPS", "GATEWAY-TLS", "GATEWAY-GRPC", "MESH-HTTP", "MESH-GRPC")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise pytest.UsageError(f"--conformance-profiles: unknown profile {unknown[0]!r}; known: {', '.join(known)}")
    if names and _features.GATEWAY_HTTP not in names:
        raise pytest.UsageError(f"--conformance-profiles {value}: every feature this suite checks belongs to "
                                f"{_features.GATEWAY_HTTP}; include it, or nothing would run")
    return names


def add_options(group) -> None:
    group.addoption("--organization", metavar="ORG", default=None,
                    help="upstream spelling of --implementation-organization")
    group.addoption("--project", metavar="NAME", default=None, help="upstream spelling of --implementation-project")
    group.addoption("--url", metavar="URL", default=None, help="upstream spelling of --implementation-url")
    group.addoption("--contact", metavar="A,B", default=None,
                    type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
                    help="upstream spelling of --implementation-contact")
    group.addoption("--all-features", action="store_true", default=False,
                    help="claim every feature this suite checks (as upstream --all-features); "
                         "cannot be combined with --supported-features")
    group.addoption("--conformance-profiles", metavar="A,B", type=_profiles_list, default=None,
                    help="upstream conformance profiles to run; this suite's features all belong to GATEWAY-HTTP")
    group.addoption("--timeout-config-overrides", metavar="NAME:S;NAME:S", type=parse_timeouts, default=None,
                    help="upstream's timeout overrides, e.g. \"MaxTimeToConsistency:60;RequestTimeout:15\" "
                         "(status waits: --condition-timeout; see README 'Upstream flags')")
    group.addoption("--keep-objects", choices=KEEP_CHOICES, default="never",
                    help="kubernetes target: leave a scenario module's namespace and objects in the cluster "
                         "after it ran ('failed': only modules with a failure; 'always'), to look at them by "
                         "hand; the run prints each namespace it kept")
    group.addoption("--cleanup-base-resources", metavar="BOOL", nargs="?", const=True, default=None,
                    type=_bool("--cleanup-base-resources"),
                    help="upstream spelling: =false is --keep-objects=always")
    group.addoption("--cleanup-test-resources", metavar="BOOL", nargs="?", const=True, default=None,
                    type=_bool("--cleanup-test-resources"),
                    help="upstream spelling: =false is --keep-objects=always")


def check(config: pytest.Config) -> None:
    """Combinations that cannot mean anything (run once, before any test)."""
    if config.getoption("all_features") and config.getoption("supported_features") is not None:
        raise pytest.UsageError("--all-features claims every feature and --supported-features names some; "
                                "give one of them")
    for ours, upstream in (("implementation_organization", "organization"),
                           ("implementation_project", "project"), ("implementation_url", "url"),
                           ("implementation_contact", "contact")):
        a, b = config.getoption(ours), config.getoption(upstream)
        if a is not None and b is not None and a != b:
            raise pytest.UsageError(f"--{ours.replace('_', '-')} and --{upstream} disagree; give one of them")


def apply(config: pytest.Config) -> None:
    """Fold the upstream spellings into our options (in every process, xdist workers too)."""
    option = config.option
    for upstream, ours in ALIASES.items():
        if getattr(option, ours, None) is None and getattr(option, upstream, None) is not None:
            setattr(option, ours, getattr(option, upstream))
    if False in (option.cleanup_base_resources, option.cleanup_test_resources) and option.keep_objects == "never":
        option.keep_objects = "always"
    overrides = option.timeout_config_overrides or {}
    # An explicit option of ours wins over the upstream spelling.
    defaults = {"max_time_to_consistency": 30.0, "condition_timeout": 60.0}
    for key, seconds in overrides.items():
        if key in defaults and getattr(option, key) != defaults[key]:
            continue
        setattr(option, key if key in defaults else f"mtls_{key}", seconds)
