"""The documentation says what the code does: the CLI page names every option of every command and no other,
README.md stays short with its set-up and test commands on the first screen, and the pages it links exist."""

from __future__ import annotations

import re

import pytest
from paths import ROOT

from harness.cli.main import build_parser

COMMANDS = ("run", "list", "plugins", "report", "compare", "export")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def help_options() -> dict[str, set[str]]:
    from harness.run.host import load_host

    parser = build_parser(load_host())
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    found = {name: set(OPTION.findall(commands[name].format_help())) - {"--help"} for name in COMMANDS}
    found["harness"] = set(OPTION.findall(parser.format_help())) - {"--help"}
    return found


def test_the_cli_page_names_every_option_of_every_command_and_no_other():
    page = (ROOT / "docs" / "cli.md").read_text()
    documented = set(OPTION.findall(page))
    options = help_options()
    missing = {command: sorted(names - documented) for command, names in options.items() if names - documented}
    assert missing == {}
    offered = set().union(*options.values())
    # Each table row documents one option: it must be one some command has.
    rows = {OPTION.findall(line)[0] for line in page.splitlines() if line.startswith("| `--")}
    assert sorted(rows - offered) == []


def test_readme_is_short_and_starts_with_set_up_and_test():
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 200
    first_screen = "\n".join(lines[:40])
    assert 'pip install -e ".[all]"' in first_screen and "python -m pytest" in first_screen
    for link in re.findall(r"\]\((docs/[\w.-]+)\)", readme):
        assert (ROOT / link).is_file(), link


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_every_docs_page_has_a_title_and_its_links_resolve(page):
    text = (ROOT / "docs" / page).read_text()
    assert text.startswith("# ")
    for link in re.findall(r"\]\((\.\./[^)#\s]+|[\w-]+\.md)\)", text):
        assert (ROOT / "docs" / link).resolve().exists(), link
