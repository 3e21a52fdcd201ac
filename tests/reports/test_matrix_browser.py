"""The HTML matrix built from the committed reports renders in a real browser.

Headless Chromium (Debian's ``chromium`` package) takes a screenshot and dumps the DOM
it rendered: the screenshot must not be blank, and the page must name every feature of
the registry. Without Chromium the test fails and says how to install it: a check that
silently skips is a check that never runs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mtls_conformance import features, matrix

from . import png
from ..selfcheck.runner import ROOT

REPORTS = ROOT / "reports"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is needed to render the matrix: install it with "
                    "`apt-get install -y chromium` (.ci/run does this on a clean machine)")
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("matrix")
    columns = matrix.load(REPORTS)
    assert len(columns) >= 2, (
        f"reports/ should hold at least two runs, found {[c.source for c in columns]}; "
        f"regenerate them with `python -m mtls_conformance report reports/ --regenerate`")
    html_path, _ = matrix.build(REPORTS, output=out)
    return html_path


def run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    return proc


def test_matrix_page_renders_every_feature(chromium, page, tmp_path):
    dom = run_chromium(chromium, tmp_path / "profile-dom", "--dump-dom", page.as_uri()).stdout
    missing = [name for name in features.FEATURES if f"<code>{name}</code>" not in dom]
    assert missing == [], f"the rendered page lacks {missing}"
    for column in matrix.load(REPORTS):
        assert column.label in dom


def test_matrix_screenshot_is_not_blank(chromium, page, tmp_path):
    shot = tmp_path / "matrix.png"
    run_chromium(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,900",
                 page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 0, "Chromium wrote no screenshot"
    # White page, black text, and the five verdict colours at least.
    assert png.distinct_colours(shot.read_bytes()) >= 8


def test_a_blank_page_is_seen_as_blank(chromium, tmp_path):
    """The colour count can fail: an empty page has one colour."""
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body style='background:#fff'></body></html>")
    shot = tmp_path / "blank.png"
    run_chromium(chromium, tmp_path / "profile-blank", f"--screenshot={shot}", "--window-size=400,300",
                 blank.as_uri())
    assert png.distinct_colours(shot.read_bytes()) == 1
