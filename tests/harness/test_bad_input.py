"""Bad input is one line naming the option and the fix, before the first test, with and without xdist.

Each case runs the suite twice, as a user would (``pytest scenarios ARG`` and the same with
``-n 2``): the exit code is pytest's usage error (4) both times, the error line is the same,
and nothing ran (no test, no gateway, no INTERNALERROR from an xdist worker).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from testkit.child_run import PytestRun, run_pytest

ROOT = Path(__file__).resolve().parents[2]

#: (case id, the argument(s), what the error line says); {tmp} is a fresh directory.
BAD_INPUT = [
    ("report-dir-in-proc", ["--report-dir=/proc/mtls-x"], r"--report-dir /proc/mtls-x: .*kernel file system"),
    ("report-dir-is-a-file", ["--report-dir={tmp}/file"], r"--report-dir \S+/file: exists and is not a directory"),
    ("report-output-in-proc", ["--report-output=/proc/mtls-x/r.yaml"], r"--report-output /proc/mtls-x/r\.yaml: "),
    ("report-output-is-a-dir", ["--report-output={tmp}"], r"--report-output \S+: is a directory"),
    ("report-output-under-a-file", ["--report-output={tmp}/file/r.yaml"], r"--report-output \S+: \S+/file is not a directory"),
    ("junitxml-in-proc", ["--junitxml=/proc/mtls-x.xml"], r"--junitxml /proc/mtls-x\.xml: "),
    ("junitxml-is-a-dir", ["--junitxml={tmp}"], r"--junitxml .*(is a directory|must be a filename)"),
    ("alluredir-in-proc", ["--alluredir=/proc/mtls-x"], r"--alluredir /proc/mtls-x: "),
    ("alluredir-is-a-file", ["--alluredir={tmp}/file"], r"--alluredir \S+/file: exists and is not a directory"),
    ("profile-missing", ["--profile={tmp}/missing.yaml"], r"--profile \S+/missing\.yaml: cannot read it"),
    ("profile-not-a-mapping", ["--profile={tmp}/list.yaml"], r"--profile \S+/list\.yaml: expected a mapping"),
    ("profile-unknown-field", ["--profile={tmp}/field.yaml"], r"--profile \S+/field\.yaml: unknown fields \['colour'\]"),
    ("timeout-unknown-field", ["--timeout-config-overrides=MaxTimeToConsistancy:60"],
     r"--timeout-config-overrides: 'MaxTimeToConsistancy' is not a field of upstream's TimeoutConfig"),
    ("timeout-not-a-pair", ["--timeout-config-overrides=MaxTimeToConsistency=60"],
     r"--timeout-config-overrides: 'MaxTimeToConsistency=60' is not NAME:SECONDS"),
    ("conformance-profiles-without-http", ["--conformance-profiles=GATEWAY-TLS"], r"include it, or nothing would run"),
    ("all-and-supported-features", ["--all-features", "--supported-features=GatewayFrontendClientCertificateValidation"],
     r"--all-features claims every feature and --supported-features names some"),
    ("cleanup-not-a-bool", ["--cleanup-base-resources=maybe"], r"--cleanup-base-resources expects true or false"),
    ("profile-unknown-feature", ["--profile={tmp}/feature.yaml"], r"--profile \S+/feature\.yaml: .*NoSuchFeature"),
]
PROFILES = {"list.yaml": "- key: x\n", "field.yaml": "key: x\nname: X\ncolour: blue\n",
            "feature.yaml": "key: x\nname: X\nsupported_features: [NoSuchFeature]\n"}


def run(args: list[str], *extra: str) -> PytestRun:
    return run_pytest("mtls_conformance/scenarios", "-q", *args, *extra, timeout=120)


@pytest.mark.parametrize("args, expected", [pytest.param(a, e, id=i) for i, a, e in BAD_INPUT])
def test_bad_input_is_one_line_before_any_test_with_and_without_xdist(tmp_path, args, expected):
    (tmp_path / "file").write_text("not a directory\n")
    for name, text in PROFILES.items():
        (tmp_path / name).write_text(text)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    outcomes = []
    for extra in ((), ("-n", "2")):
        proc = run(args, *extra)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 4, f"{' '.join(extra) or 'without xdist'}: exit {proc.returncode}\n{output}"
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
        assert len(errors) == 1, output
        assert re.search(expected, errors[0]), errors[0]
        assert "INTERNALERROR" not in output and "Traceback" not in output, output
        assert not re.search(r"\b(passed|failed|skipped)\b", proc.stdout), "tests ran before the error"
        outcomes.append((proc.returncode, errors[0]))
    assert outcomes[0] == outcomes[1], "the same bad input must read the same with -n 2"
