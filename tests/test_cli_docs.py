"""The README's options table documents every option of ``fcgi-asgi --help``."""

from __future__ import annotations

import re

import pytest

from fcgi_asgi.cli import build_parser
from tests.conftest import ROOT


def _table_first_cells() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Options", 1)[1].split("\n#", 1)[0]
    return [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]


@pytest.fixture
def help_options(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    # Wide enough that argparse never wraps a help line at an option's hyphen.
    monkeypatch.setenv("COLUMNS", "1000")
    text = build_parser().format_help()
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", text)) - {"--help"}


def test_every_option_is_in_the_readme_table(help_options):
    cells = _table_first_cells()
    options = sorted(help_options)
    assert len(options) > 10
    missing = [
        opt
        for opt in options
        if not any(re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", cell) for cell in cells)
    ]
    assert not missing, f"options missing from the README's options table: {missing}"


def test_the_table_names_no_option_that_does_not_exist(help_options):
    known = help_options
    named = {opt for cell in _table_first_cells() for opt in re.findall(r"--[\w-]+", cell)}
    assert named <= known, named - known
