"""A run of the suite writes all its outputs, and a failing run says what a person needs.

Each test runs the scenarios in a child pytest, exactly as a user does, against the
bundled refgateway (correct or deliberately broken).
"""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from mtls_conformance import matrix

from testkit.child_run import PytestRun, refgateway_command, run_pytest
from testkit.procs import ROOT
from . import upstream_shape

MODULE = ROOT / "mtls_conformance" / "scenarios" / "test_frontend_default.py"
FE = "GatewayFrontendClientCertificateValidation"
SKIPPED = "test_frontend_default::test_expired_client_certificate_is_rejected"
UNTRUSTED = "test_frontend_default::test_untrusted_client_certificate_is_rejected"


def run(*args: str, faults: tuple[str, ...] = (), workers: int = 0, cwd: Path = ROOT,
        nodeids: list[str] | None = None) -> PytestRun:
    xdist = ["-n", str(workers)] if workers else ["-p", "no:xdist"]
    return run_pytest(*(nodeids or [str(MODULE)]), *xdist, "-q", f"--gateway-command={refgateway_command(faults=faults)}",
                      "--max-time-to-consistency=1", *args, cwd=cwd, timeout=600)


def junit_cases(path: Path) -> dict[str, ET.Element]:
    return {case.get("name"): case for case in ET.parse(path).getroot().iter("testcase")}


def test_a_run_writes_report_verdicts_junit_allure_and_progress(tmp_path):
    reports, junit, allure_dir = tmp_path / "reports" / "gw", tmp_path / "junit.xml", tmp_path / "allure"
    proc = run(f"--report-dir={reports}", f"--report-output={tmp_path / 'upstream.yaml'}",
               f"--junitxml={junit}", f"--alluredir={allure_dir}", f"--skip-tests={SKIPPED}",
               "--implementation-version=v9.9.9", "--implementation-contact=@me,@you")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]

    # 1. The ConformanceReport, in both places, with the upstream shape.
    report = yaml.safe_load((reports / "standard-v9.9.9-default-report.yaml").read_text())
    assert report == yaml.safe_load((tmp_path / "upstream.yaml").read_text())
    assert upstream_shape.check(report) == []
    assert report["implementation"]["contact"] == ["@me", "@you"]
    extended = report["profiles"][0]["extended"]
    assert extended["result"] == "partial"
    # The other scenario modules were not given: their tests did not run either.
    in_module = [t for t in extended["skippedTests"] if t.startswith("test_frontend_default::")]
    assert in_module == [f"{SKIPPED}[https-8443]", f"{SKIPPED}[https-8444]"]
    assert extended["statistics"]["Skipped"] == len(extended["skippedTests"]) > 2
    assert extended["statistics"]["Failed"] == 0
    verdicts = yaml.safe_load((reports / "standard-v9.9.9-default-verdicts.yaml").read_text())
    assert verdicts["features"][FE]["verdict"] == "partial"
    assert verdicts["featuresSource"] == "GatewayClass refgateway status.supportedFeatures"
    assert f"| {FE} | partial |" in (reports / "summary.md").read_text()

    # 2. JUnit: every test names its features; the skip says why.
    cases = junit_cases(junit)
    assert cases
    for name, case in cases.items():
        features = [p.get("value") for p in case.iter("property") if p.get("name") == "feature"]
        assert FE in features, f"{name}: no feature property in {ET.tostring(case)[:500]!r}"
    skipped = cases["test_expired_client_certificate_is_rejected[https-8443]"].find("skipped")
    assert skipped is not None and "skipped by --skip-tests" in skipped.get("message", "")

    # 3. allure: labels and the implementation as a parameter.
    results = [json.loads(p.read_text()) for p in allure_dir.glob("*-result.json")]
    assert len(results) == len(cases)
    for result in results:
        labels = {(label["name"], label["value"]) for label in result["labels"]}
        assert ("epic", "GATEWAY-HTTP extended") in labels, result["name"]
        assert ("feature", FE) in labels
        assert ("story", "Frontend mTLS: one default validation for every HTTPS listener of a Gateway") \
            in labels
        assert {"name": "implementation", "value": "'refgateway v9.9.9'"} in result["parameters"]

    # 4. Progress: one line for the feature, when its last test is done; the matrix builds.
    done = [line for line in output.splitlines() if line.startswith("[mtls] feature done:")]
    assert [line.split()[3] for line in done].count(FE) == 1, output[-3000:]
    assert f"[mtls] wrote {reports / 'index.html'}" in output
    assert f"<code>{FE}</code>" in (reports / "index.html").read_text()
    assert f"| {FE} | partial |" in (reports / "matrix.md").read_text()
    html_path, _ = matrix.build(tmp_path / "reports")
    assert FE in html_path.read_text()


def test_a_broken_gateway_fails_with_evidence_and_a_reproduction(tmp_path):
    junit, allure_dir = tmp_path / "junit.xml", tmp_path / "allure"
    proc = run(f"--run-test={UNTRUSTED}[https-8443-TLSv1.3]", f"--junitxml={junit}",
               f"--alluredir={allure_dir}", "--basetemp", str(tmp_path / "base"),
               "--max-time-to-consistency=3", faults=("accept-any-client-cert",))
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    # A wait of more than 2 s says what it waits for.
    assert "[mtls] waiting up to 3 s for listener port 8443 (SNI example.com, tls_version TLSv1.3) " \
           "with client certificate 'untrusted-client': the connection to be rejected" in proc.stdout
    case = junit_cases(junit)["test_untrusted_client_certificate_is_rejected[https-8443-TLSv1.3]"]
    failure = case.find("failure")
    assert failure is not None
    message = failure.text or ""  # the message attribute is cut short; the text is whole
    # The expectation, what was seen, where, and how to repeat it by hand.
    assert "a certificate from a CA the Gateway does not trust is refused (TLSv1.3)" in message
    assert "listener port 8443 (SNI example.com, tls_version TLSv1.3) with client certificate " \
           "'untrusted-client': expected the connection to be rejected, the backend answered HTTP 200 over " \
           "TLSv1.3, the listener requested a client certificate: the request was let through" in message
    repro = re.search(r"reproduce: (curl .*)", message)
    assert repro, message
    argv = shlex.split(repro.group(1))
    for flag in ("--cacert", "--cert", "--key"):
        path = Path(argv[argv.index(flag) + 1])
        assert path.is_file(), f"{flag} {path} was not kept after the failed run"
    # The other tests were not selected, and say so.
    assert "not selected by --run-test" in (proc.stdout + ET.tostring(ET.parse(junit).getroot(),
                                                                   encoding="unicode"))
    # allure holds the evidence as an attachment.
    attachments = [a for p in allure_dir.glob("*-result.json")
                   for a in json.loads(p.read_text()).get("attachments", []) if a["name"] == "evidence"]
    assert len(attachments) == 1
    evidence = (allure_dir / attachments[0]["source"]).read_text()
    assert "observed: HTTP 200 over TLSv1.3, the listener requested a client certificate" in evidence
    assert "reproduce: curl" in evidence


def test_unknown_test_names_are_refused_with_the_accepted_form(tmp_path):
    proc = run("--skip-tests=test_frontend_default::no_such_test")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert ("--skip-tests test_frontend_default::no_such_test: no collected test has that name; "
            "use a short name such as test_frontend_default::") in proc.stderr
    # Under xdist the controller says the same, instead of a worker crash.
    proc = run("--run-test=test_frontend_default::no_such_test", workers=1)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert ("--run-test test_frontend_default::no_such_test: no collected test has that name; "
            "use a short name such as test_frontend_default::") in proc.stdout + proc.stderr
    assert "INTERNALERROR" not in proc.stdout + proc.stderr


def test_xdist_workers_report_progress_and_the_profile(tmp_path):
    proc = run(f"--run-test={UNTRUSTED}[https-8443-TLSv1.3]", "--max-time-to-consistency=3",
               f"--report-dir={tmp_path}", workers=1, faults=("accept-any-client-cert",))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "[mtls gw0] waiting up to 3 s for listener port 8443" in output, output[-3000:]
    assert f"[mtls] feature done: {FE} FAILED (1 failed, " in output, output[-3000:]
    # The controller runs no test; the profile the worker used still reaches the report.
    verdicts = yaml.safe_load(next(tmp_path.glob("*-verdicts.yaml")).read_text())
    assert verdicts["featuresSource"] == "GatewayClass refgateway status.supportedFeatures"
    assert verdicts["implementation"]["project"] == "refgateway"
