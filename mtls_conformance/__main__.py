"""``python -m mtls_conformance``: tools around the suite's reports.

    python -m mtls_conformance report reports/               # reports/index.html and reports/matrix.md
    python -m mtls_conformance report reports/ --regenerate  # rerun the reference runs first

``--regenerate`` runs the scenarios twice against the bundled refgateway and writes
their reports under the folder: ``refgateway/`` (the correct gateway) and
``refgateway-fault-accept-any-client-cert/`` (started with ``--fault
accept-any-client-cert``, so that the matrix always shows what a failing feature looks
like). Each run is exactly what a user types; the commands are printed.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from . import matrix
from .local import REFGATEWAY_COMMAND

#: The scenarios of this installation: the checkout's in a clone, site-packages' from a
#: wheel (README "Layout": the folder is the package, wherever it is installed).
SCENARIOS = Path(__file__).resolve().parent / "scenarios"

#: (subfolder, refgateway faults, --implementation-version) of the reference runs.
REFERENCE_RUNS = (
    ("refgateway", (), None),
    ("refgateway-fault-accept-any-client-cert", ("accept-any-client-cert",),
     "v{version}+fault.accept-any-client-cert"),
)


def reference_run_argv(folder: Path, *, faults: tuple[str, ...], version: str | None) -> list[str]:
    # The local target's own refgateway command, so that the reference runs are given
    # everything it is given ({system_ca_bundle} too) and skip nothing a plain run passes.
    gateway = REFGATEWAY_COMMAND + "".join(f" --fault {shlex.quote(fault)}" for fault in faults)
    argv = [sys.executable, "-m", "pytest", str(SCENARIOS), "-q", "-p", "no:cacheprovider",
            f"--gateway-command={gateway}", f"--report-dir={folder}"]
    if faults:
        # A broken gateway need not be given 30 s to converge before each failure counts.
        argv.append("--max-time-to-consistency=1")
    if version:
        argv.append(f"--implementation-version={version}")
    return argv


def regenerate(folder: Path) -> int:
    import refgateway

    worst = 0
    for sub, faults, version in REFERENCE_RUNS:
        target = folder.resolve() / sub
        for old in target.glob("*.yaml"):
            old.unlink()
        argv = reference_run_argv(target, faults=faults,
                                  version=version.format(version=refgateway.__version__) if version else None)
        print("+ " + shlex.join(argv), flush=True)
        code = subprocess.run(argv).returncode
        expected = (1,) if faults else (0,)
        if code not in expected:
            print(f"the run for {sub} exited {code}, expected {expected[0]}", file=sys.stderr)
            worst = worst or 1
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtls_conformance")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="build the feature matrix of every report in a folder")
    report.add_argument("folder", type=Path, help="folder searched recursively for *-report.yaml")
    report.add_argument("--output", type=Path, default=None,
                        help="where to write index.html and matrix.md (default: the folder)")
    report.add_argument("--regenerate", action="store_true",
                        help="first rerun the reference runs against refgateway into the folder")
    args = parser.parse_args(argv)

    if args.regenerate:
        args.folder.mkdir(parents=True, exist_ok=True)
        if regenerate(args.folder):
            return 1
    try:
        html_path, md_path = matrix.build(args.folder, output=args.output)
    except matrix.MatrixError as exc:
        print(f"python -m mtls_conformance report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {html_path} and {md_path} ({len(matrix.load(args.folder))} reports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
