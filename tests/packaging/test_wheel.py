"""The suite as a vendor gets it: a wheel, a fresh virtual environment, no clone anywhere.

One test, in steps, because each step needs the one before (minutes, not seconds: the
wheel is built once and installed once):

1. ``python -m build`` makes an sdist and, from it, a wheel; nothing generic (fixtures,
   scenarios, conformance, tests) is a top-level name in the wheel;
2. the wheel goes into a fresh venv (pip may take the dependencies from its cache);
3. from an empty directory holding a vendor's own ``fixtures/`` package and
   ``conftest.py``, ``--pyargs mtls_conformance.scenarios`` collects exactly what a
   clone collects, and vendor tests use the plugin's fixtures: the harness's and the
   guides' (PKI, names, ``deploy_gateway``), as the scenarios do;
4. docs/self-certification.md's commands run there as written, against the bundled
   reference gateway (without ``--gateway-class``): the suite passes and the report has
   the implementation fields;
5. ``python -m mtls_conformance report DIR --regenerate`` runs the reference runs from the
   installed package and builds their matrix;
6. the oldest pytest of the runtime range (steps 2-5 ran the newest): options in both
   forms collect the same tests, and a scenario module passes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.xdist_group("wheel")

#: The vendor's own package of fixtures, named like ours (spelled so that rename scripts
#: over this repository leave it alone).
VENDOR_PACKAGE = "fixtures"
VENDOR_CONFTEST = f'''\
# A vendor's own conftest, with its own "{VENDOR_PACKAGE}" package: it must not shadow the suite's.
pytest_plugins = ["{VENDOR_PACKAGE}.vendor"]
'''
#: A profile of the vendor's own (--profile FILE).
PROFILE = "key: mygw\nname: My gateway\nsupported_features: [GatewayFrontendClientCertificateValidation]\n"
VENDOR_FIXTURE = '''\
import pytest

@pytest.fixture
def vendor_thing():
    return "ours"
'''
VENDOR_TEST = '''\
from mtls_conformance import manifests as m
from mtls_conformance.fixtures.guide import HOSTNAME
from mtls_conformance.target import ObjectRef


def test_the_suites_fixtures_work_in_a_vendor_test(vendor_thing, mtls_target, mtls_pki, mtls_namespace):
    ca = mtls_pki.authority("vendor-ca")
    mtls_target.apply_yaml(f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: vendor-ca, namespace: {mtls_namespace}}}
data: {{ca.crt: {ca.cert_pem.decode()!r}}}
""")
    assert vendor_thing == "ours"
    assert mtls_target.get(ObjectRef("ConfigMap", "vendor-ca", mtls_namespace, api_version="v1"))


def test_the_guides_gateway_in_a_vendor_test(mtls_namespace, mtls_gateway_class, mtls_backend, deploy_gateway,
                                             guide_tls_objects, valid_client, untrusted_client):
    # The scenarios' own building blocks: the guide's PKI, its names, deploy_gateway.
    backend = mtls_backend(mtls_namespace, "echo", port=8000)
    gateway = m.gateway("vendor", mtls_namespace, gateway_class=mtls_gateway_class,
                        frontend=m.frontend_tls(default=m.validation(m.object_ref("ca-cert"))),
                        listeners=[m.https_listener("https", 8443, certificate="https-cert")])
    route = m.http_route("echo", mtls_namespace, hostnames=[HOSTNAME], parents=[m.parent_ref("vendor")],
                         rules=[m.rule(m.backend_ref(backend.service, backend.port))])
    gw = deploy_gateway(gateway, *guide_tls_objects, routes=[route])
    gw.expect_pair(8443, sni=HOSTNAME, accepted=valid_client, refused=untrusted_client,
                   what="a vendor's own check on the guide's Gateway")
'''


def run(argv: list[str], *, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    return proc


def collected_names(output: str) -> list[str]:
    """``--collect-only -q`` node ids as module::test[params], wherever the files are."""
    names = []
    for line in output.splitlines():
        if "::" in line:
            path, _, rest = line.strip().partition("::")
            names.append(f"{Path(path).stem}::{rest}")
    return sorted(names)


def self_certification_commands() -> list[str]:
    doc = (ROOT / "docs" / "self-certification.md").read_text()
    block = doc.split("## The commands", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert 1 <= len(commands) <= 3, "from pip install to a report in at most three commands"
    return commands


def test_the_wheel_runs_the_suite_from_an_empty_directory(tmp_path):
    # 1. the wheel and the sdist
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=tmp_path, timeout=600)
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith((".dist-info", ".data"))} == {"mtls_conformance", "refgateway"}, tops
    # The project's own tooling (testkit, and the .pth an editable install adds for it) is
    # not shipped; the sdist holds only the build backend of testkit/ (it builds the wheel).
    assert not any(name.endswith(".pth") or "testkit" in name for name in names), names
    with tarfile.open(sdists[0]) as sdist:
        ours = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {n for n in ours if n.startswith(("testkit/", "tests/", "tools/", "benchmarks/"))} == \
        {"testkit/build_backend.py"}, sorted(ours)

    # 2. a fresh venv with only the wheel (dependencies from PyPI or pip's cache)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", str(wheels[0])], cwd=tmp_path, timeout=900)

    # 3. a vendor's directory: its own fixtures/ and conftest.py
    vendor = tmp_path / "vendor"
    (vendor / VENDOR_PACKAGE).mkdir(parents=True)
    (vendor / VENDOR_PACKAGE / "__init__.py").write_text("")
    (vendor / VENDOR_PACKAGE / "vendor.py").write_text(VENDOR_FIXTURE)
    (vendor / "conftest.py").write_text(VENDOR_CONFTEST)
    (vendor / "test_vendor.py").write_text(VENDOR_TEST)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"

    from_wheel = run([str(python), "-m", "pytest", "--pyargs", "mtls_conformance.scenarios", "--collect-only", "-q"],
                     cwd=vendor, env=env)
    from_clone = run([sys.executable, "-m", "pytest", "--collect-only", "-q"], cwd=ROOT)
    assert collected_names(from_wheel.stdout), from_wheel.stdout
    assert collected_names(from_wheel.stdout) == collected_names(from_clone.stdout), \
        "the wheel collects other scenarios than a clone"
    own = run([str(python), "-m", "pytest", "-q", "test_vendor.py"], cwd=vendor, env=env)
    assert "2 passed" in own.stdout, own.stdout

    # 4. docs/self-certification.md, as written, against the bundled reference gateway
    for command in self_certification_commands():
        argv = shlex.split(command)
        if argv[:2] == ["pip", "install"]:
            argv = [str(python), "-m", "pip", "install", "-q", str(wheels[0])]
        else:
            assert argv[0] == "pytest", command
            argv = [str(python), "-m", "pytest", *[a for a in argv[1:] if not a.startswith("--gateway-class")]]
            argv[argv.index("-n") + 1] = "2"  # this machine's two cores
        proc = run(argv, cwd=vendor, env=env, timeout=1200)
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and not re.search(r"failed|error", summary), proc.stdout[-3000:]
    assert "verdicts per feature" in proc.stdout
    report = yaml.safe_load((vendor / "report.yaml").read_text())
    assert report["implementation"] == {"organization": "ORG", "project": "PROJECT", "url": "URL",
                                        "version": "VERSION", "contact": ["CONTACT"]}

    # 5. the reference runs and their matrix, from the wheel (they looked for a scenarios/
    # folder beside site-packages' mtls_conformance, which only a clone has)
    proc = run([str(python), "-m", "mtls_conformance", "report", "matrix", "--regenerate"], cwd=vendor, env=env,
               timeout=1800)
    assert "wrote " in proc.stdout and "(2 reports)" in proc.stdout, proc.stdout[-3000:]
    for sub in ("refgateway", "refgateway-fault-accept-any-client-cert"):
        assert list((vendor / "matrix" / sub).glob("*-report.yaml")), f"no report of the {sub} run"
    assert (vendor / "matrix" / "index.html").is_file() and (vendor / "matrix" / "matrix.md").is_file()

    # 6. the oldest pytest the runtime range allows (pyproject.toml says why it is bounded;
    # steps 2-5 ran the newest): the plugin's options in both forms, and a scenario module
    oldest = re.search(r'"pytest>=([\d.]+),<[\d.]+"', (ROOT / "pyproject.toml").read_text()).group(1)
    old_env = tmp_path / "venv-oldest-pytest"
    venv.create(old_env, with_pip=True)
    old_python = old_env / "bin" / "python"
    run([str(old_python), "-m", "pip", "install", "-q", str(wheels[0]), f"pytest=={oldest}.*"], cwd=tmp_path,
        timeout=900)
    version = run([str(old_python), "-m", "pytest", "--version"], cwd=vendor, env=env)
    assert f"pytest {oldest}." in version.stdout + version.stderr, version.stdout + version.stderr
    profile = tmp_path / "profile.yaml"  # outside the directory, as --profile FILE usually is
    profile.write_text(PROFILE)
    for form in ([f"--profile={profile}"], ["--profile", str(profile)]):
        old = run([str(old_python), "-m", "pytest", "--pyargs", "mtls_conformance.scenarios", "--collect-only", "-q",
                   *form], cwd=vendor, env=env)
        assert collected_names(old.stdout) == collected_names(from_wheel.stdout), form
    module = run([str(old_python), "-m", "pytest", "-q", "--pyargs", "mtls_conformance.scenarios.test_frontend_default"],
                 cwd=vendor, env=env)
    summary = module.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and not re.search(r"failed|error", summary), module.stdout[-3000:]
