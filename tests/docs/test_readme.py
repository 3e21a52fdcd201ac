"""The README's promises: two commands first, CI runs the second, documented options exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from testkit.child_run import run_pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def first_commands() -> list[str]:
    block = re.search(r"```\n(.*?)```", README, re.S)
    assert block, "README.md has no code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands():
    head = README.split("```", 1)[0]
    assert len(head.splitlines()) <= 4, "the two commands must come first in README.md"
    commands = first_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("python -m pytest"), "command 1 runs the suite (testpaths: scenarios)"
    assert " tests " in commands[1] + " "


def test_ci_runs_readme_command_two_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert first_commands()[1] in ci.splitlines(), ".ci/run must run README command 2 as written"
    assert '"$status" -eq 5' in ci, ".ci/run must not let pytest's 'no tests' exit code pass"


def pytest_help() -> str:
    return run_pytest("--help", check=True).stdout


def plugin_options(help_text: str) -> set[str]:
    """The options of the plugin's own group in ``pytest --help``."""
    section = re.search(r"^mTLS conformance of Gateway API implementations:\n(.*?)(?=^\S)", help_text, re.M | re.S)
    assert section, "pytest --help has no mTLS conformance section"
    return set(re.findall(r"^  (--[a-z][a-z-]+)", section.group(1), re.M))


def section(title: str) -> str:
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ )", README, re.M | re.S)
    assert match, f"README.md has no section {title!r}"
    return match.group(1)


def test_every_documented_option_exists():
    help_text = pytest_help()
    # The left column of the upstream table names upstream's flags, not ours.
    text = README
    for line in section("Upstream flags").splitlines():
        if line.startswith("| `"):
            text = text.replace(line.split("|")[1], "")
    options = set(re.findall(r"`(--[a-z][a-z-]+)", text))
    assert options, "no options documented"
    missing = sorted(o for o in options if o not in help_text)
    assert not missing, f"README documents options pytest does not know: {missing}"


def test_every_plugin_option_is_in_the_options_table():
    table = section("Options")
    first_column = " ".join(line.split("|")[1] for line in table.splitlines() if line.startswith("| `"))
    documented = set(re.findall(r"`(--[a-z][a-z-]+)", first_column))
    missing = sorted(plugin_options(pytest_help()) - documented)
    assert not missing, f"options of the plugin missing from README's Options table: {missing}"


def test_every_documented_fixture_exists():
    out = run_pytest("--fixtures", "mtls_conformance/scenarios", "-q", check=True).stdout
    fixtures = re.findall(r"^\| `(mtls_[a-z_]+)` \|", README, re.M)
    fixtures += [name for row in re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \|", README, re.M)
                 for name in re.findall(r"`([a-z_]+)`", row) if not name.startswith("mtls_")]
    assert fixtures and "deploy_gateway" in fixtures
    missing = [f for f in fixtures if not re.search(rf"^{f}\b", out, re.M)]
    assert not missing, f"README documents fixtures that do not exist: {missing}"


def test_no_example_count_is_hard_coded():
    # Counts change with every scenario added: an example that says "33 passed" is wrong
    # the day a test is added (it said 33 when the suite had 81).
    docs = {"README.md": README, **{f"docs/{p.name}": p.read_text() for p in (ROOT / "docs").glob("*.md")}}
    for name, text in docs.items():
        counts = re.findall(r"\(\d+ (?:passed|failed|skipped)[^)]*\)|\b\d+ (?:tests|items) collected\b", text)
        assert not counts, f"{name} hard-codes test counts {counts}; write N instead"


def test_the_layout_section_names_every_folder_where_it_is():
    """README "Layout": each folder it lists exists, an installed one is the package of its
    import name, and every top-level folder of the checkout is listed."""
    section = README.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("```", 2)[1]
    rows = [line.split(None, 2) for line in table.splitlines()[2:] if line[:1].strip()]
    listed = {row[0].rstrip("/"): row[1] for row in rows}
    for folder, import_name in listed.items():
        assert (ROOT / folder).is_dir(), f"README Layout lists {folder}/, which does not exist"
        if import_name != "(not":
            assert folder == import_name.replace(".", "/"), f"{folder}/ is not where {import_name} is"
            assert (ROOT / folder / "__init__.py").is_file(), f"{folder}/ is not a package"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    tops = {line.split("/", 1)[0] for line in tracked.splitlines() if "/" in line and not line.startswith(".")}
    assert tops <= set(listed), f"top-level folders README Layout does not list: {sorted(tops - set(listed))}"
