"""The feature matrix: every report under a folder, as one static HTML page and one Markdown table.

Rows are the features of the registry (features.py), columns are runs: implementation,
version, channel and mode. A column comes from a ConformanceReport
(``*-report.yaml``). When the run was ours, the ``*-verdicts.yaml`` beside it gives the
verdict of every feature; for a report without one (say, a copy of a published upstream
report) the verdicts are read off the report itself: a feature it lists as unsupported
is ``unsupported``, a supported one takes the result of its half (core or extended),
and a feature the report does not mention is ``untested``.

Zero executed tests is never ``passed``, whatever the file says: a half whose statistics
count no passed or failed test (upstream's v1.6 reports say "success" for those), or a
verdicts entry that passed nothing, shows as ``untested``.

The page has no external assets: it is meant to be opened from disk or attached to a
CI run as is.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
from pathlib import Path

import yaml

from . import features as _features

#: "skipped" is what verdicts files written before "untested" covered it call a feature none of
#: whose tests ran; it is still shown as they say.
CELLS = ("passed", "partial", "failed", "skipped", "unsupported", "untested")
_RESULT_TO_CELL = {"success": "passed", "partial": "partial", "failure": "failed"}


class MatrixError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Column:
    project: str
    organization: str
    version: str
    channel: str
    mode: str
    date: str
    source: str  # the report's path, relative to the folder
    cells: dict[str, str]
    details: dict[str, str]  # feature -> a tooltip: counts, failed tests
    notes: str = ""  # how the run decided: supported-feature source, rejection rule

    @property
    def label(self) -> str:
        return f"{self.project} {self.version}"

    @property
    def sublabel(self) -> str:
        return f"{self.channel} / {self.mode}"


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MatrixError(f"{path}: cannot read it: {exc}") from exc
    if not isinstance(data, dict):
        raise MatrixError(f"{path}: not a mapping")
    return data


def _half_cell(status: dict) -> str:
    stats = status.get("statistics") or {}
    if not (stats.get("Passed") or 0) and not (stats.get("Failed") or 0):
        return "untested"
    return _RESULT_TO_CELL.get(status.get("result"), "untested")


def _from_report(report: dict) -> tuple[dict[str, str], dict[str, str]]:
    cells: dict[str, str] = {}
    details: dict[str, str] = {}
    profile = next((p for p in report.get("profiles") or [] if p.get("name") == _features.GATEWAY_HTTP),
                   None)
    if profile is None:
        return {name: "untested" for name in _features.FEATURES}, {}
    extended = profile.get("extended") or {}
    supported = set(extended.get("supportedFeatures") or [])
    unsupported = set(extended.get("unsupportedFeatures") or [])
    for name, feature in _features.FEATURES.items():
        if not feature.upstream:
            cells[name] = "untested"
        elif feature.support == "core":
            status = profile.get("core") or {}
            cells[name] = _half_cell(status)
            details[name] = f"core: {status.get('statistics')}"
        elif name in unsupported:
            cells[name] = "unsupported"
        elif name in supported:
            cells[name] = _half_cell(extended)
            details[name] = f"extended: {extended.get('statistics')}"
        else:
            cells[name] = "untested"
    return cells, details


def _from_verdicts(verdicts: dict) -> tuple[dict[str, str], dict[str, str]]:
    cells: dict[str, str] = {}
    details: dict[str, str] = {}
    entries = verdicts.get("features") or {}
    tests = verdicts.get("tests") or {}
    for name in _features.FEATURES:
        entry = entries.get(name)
        if not entry:
            cells[name] = "untested"
            continue
        cells[name] = entry.get("verdict", "untested")
        if cells[name] in ("passed", "partial") and not entry.get("passed"):
            cells[name] = "untested"
        text = f"{entry.get('passed', 0)} passed, {entry.get('failed', 0)} failed, " \
               f"{entry.get('skipped', 0)} skipped"
        if entry.get("notSupported"):
            text += f", {entry['notSupported']} not run for lacking another feature"
        failed = [t for t, e in tests.items()
                  if e.get("outcome") == "failed" and name in (e.get("features") or [])]
        if failed:
            text += "; failed: " + ", ".join(failed)
        details[name] = text
    return cells, details


def load(folder: Path) -> list[Column]:
    """Every ConformanceReport under ``folder`` (recursively), as matrix columns."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MatrixError(f"{folder} is not a folder; give the folder that holds the reports")
    columns = []
    for path in sorted(folder.rglob("*-report.yaml")):
        report = _load_yaml(path)
        if report.get("kind") != "ConformanceReport":
            continue
        verdicts_path = path.with_name(path.name.removesuffix("-report.yaml") + "-verdicts.yaml")
        notes = ""
        if verdicts_path.exists():
            verdicts = _load_yaml(verdicts_path)
            cells, details = _from_verdicts(verdicts)
            notes = (f"supported features from {verdicts.get('featuresSource') or '?'}; "
                     f"rejection rule: {verdicts.get('rejectionRule') or '?'}")
            if verdicts.get("timeouts"):
                notes += "; timeouts: " + ", ".join(f"{k}={v:g}s" for k, v in verdicts["timeouts"].items())
        else:
            cells, details = _from_report(report)
            notes = "read off the ConformanceReport (no verdicts file)"
        impl = report.get("implementation") or {}
        columns.append(Column(
            project=str(impl.get("project", "?")), organization=str(impl.get("organization", "?")),
            version=str(impl.get("version", "?")),
            channel=str(report.get("gatewayAPIChannel", "?")), mode=str(report.get("mode", "?")),
            date=str(report.get("date", "")), source=str(path.relative_to(folder)),
            cells=cells, details=details, notes=notes))
    columns.sort(key=lambda c: (c.project, c.version, c.channel, c.mode, c.source))
    return columns


_CSS = """
body { font: 14px/1.4 sans-serif; margin: 24px; color: #1b1f24; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.meta { color: #57606a; margin: 0 0 16px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #d0d7de; padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
th.run small { display: block; font-weight: normal; color: #57606a; }
td.feature small { display: block; color: #57606a; max-width: 38em; }
td.cell { text-align: center; vertical-align: middle; font-weight: bold; white-space: nowrap; }
.passed { background: #2da44e; color: #fff; }
.partial { background: #d4a72c; color: #1b1f24; }
.failed { background: #cf222e; color: #fff; }
.skipped { background: #8c959f; color: #fff; }
.unsupported { background: #eaeef2; color: #57606a; }
.untested { background: #fff; color: #8c959f; font-weight: normal; }
ul.legend { list-style: none; padding: 0; display: flex; gap: 8px; }
ul.legend li { padding: 2px 8px; border-radius: 3px; }
"""


def render_html(columns: list[Column], *, title: str = "mTLS conformance matrix") -> str:
    esc = html.escape
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = "".join(
        f'<th class="run" title="{esc(c.source)}: {esc(c.notes)}">{esc(c.label)}'
        f'<small>{esc(c.sublabel)}</small>'
        f'<small>{esc(c.date)}</small></th>' for c in columns)
    rows = []
    for name, feature in _features.FEATURES.items():
        origin = "upstream" if feature.upstream else "extension"
        cells = "".join(
            f'<td class="cell {esc(c.cells.get(name, "untested"))}" '
            f'title="{esc(c.details.get(name, ""))}">{esc(c.cells.get(name, "untested"))}</td>'
            for c in columns)
        rows.append(f'<tr><td class="feature"><code>{esc(name)}</code>'
                    f'<small>{esc(feature.support)}, {origin}: {esc(feature.description)}</small></td>'
                    f'{cells}</tr>')
    legend = "".join(f'<li class="{c}">{c}</li>' for c in CELLS)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p class="meta">{len(columns)} runs, {len(_features.FEATURES)} features; generated {generated}.</p>
<ul class="legend">{legend}</ul>
<table>
<thead><tr><th>feature</th>{head}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body>
</html>
"""


def render_markdown(columns: list[Column], *, title: str = "mTLS conformance matrix") -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"# {title}", "",
             "| feature | " + " | ".join(cell(f"{c.label} ({c.sublabel})") for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name in _features.FEATURES:
        lines.append(f"| {name} | " + " | ".join(c.cells.get(name, "untested") for c in columns) + " |")
    lines += ["", "Sources:", ""] + [f"- {c.label} ({c.sublabel}): `{c.source}`; {c.notes}"
                                     for c in columns]
    return "\n".join(lines) + "\n"


def build(folder: Path, *, output: Path | None = None) -> tuple[Path, Path]:
    """Write ``index.html`` and ``matrix.md`` for the reports under ``folder``."""
    columns = load(folder)
    if not columns:
        raise MatrixError(f"no ConformanceReport (*-report.yaml) under {folder}; run the suite with "
                          f"--report-dir {folder}/<implementation> first")
    output = Path(output or folder)
    output.mkdir(parents=True, exist_ok=True)
    html_path, md_path = output / "index.html", output / "matrix.md"
    html_path.write_text(render_html(columns))
    md_path.write_text(render_markdown(columns))
    return html_path, md_path
