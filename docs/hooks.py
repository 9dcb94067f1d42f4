"""MkDocs hook: the options page is rendered from ``fcgi_asgi.cli.build_parser()``.

A page holding the marker ``<!-- options -->`` gets one table per argument group
of ``fcgi-asgi --help``, with each option's names, its ``FCGI_ASGI_*`` variable,
its default and its help text, so the page cannot fall behind the parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from fcgi_asgi.cli import ENV_PREFIX, build_parser
from fcgi_asgi.request_cmd import build_request_parser

MARKER = "<!-- options -->"
REQUEST_MARKER = "<!-- request-options -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    if isinstance(action, argparse.BooleanOptionalAction):
        return " ".join(f"`{o}`" for o in action.option_strings)
    takes_value = action.nargs != 0 and action.dest != "version"
    metavar = action.metavar or (action.dest.upper() if takes_value else "")
    arg = f" {metavar}" if metavar else ""
    if action.choices is not None and not action.metavar:
        arg = " " + "\\|".join(map(str, action.choices))
    return " ".join(f"`{o}{arg}`" for o in action.option_strings)


def _env(action: argparse.Action) -> str:
    flag = next((o for o in action.option_strings if o.startswith("--")), None)
    if flag is None or action.dest == "version":  # not read from the environment
        return ""
    return f"`{ENV_PREFIX}{flag[2:].upper().replace('-', '_')}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return _cell(formatter._expand_help(action)) if action.help else ""


def options_markdown(parser: argparse.ArgumentParser | None = None, env: bool = True) -> str:
    """Markdown tables of every option of ``parser`` (default: the gateway's).

    ``env``: add the column of ``FCGI_ASGI_*`` variables (the gateway reads them;
    ``fcgi-asgi request`` does not).
    """
    parser = parser or build_parser()
    out: list[str] = []
    for group in parser._action_groups:
        actions = [
            a for a in group._group_actions if a.help != argparse.SUPPRESS and a.dest != "help"
        ]
        if not actions:
            continue
        title = group.title or "options"
        out += [f"### {title[0].upper()}{title[1:]}", ""]
        if env:
            out += ["| option | environment | meaning |", "|---|---|---|"]
            out += [f"| {_names(a)} | {_env(a)} | {_help(parser, a)} |" for a in actions]
        else:
            out += ["| option | meaning |", "|---|---|"]
            out += [f"| {_names(a)} | {_help(parser, a)} |" for a in actions]
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Put the generated tables where the page has their markers."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, options_markdown())
    if REQUEST_MARKER in markdown:
        markdown = markdown.replace(
            REQUEST_MARKER, options_markdown(build_request_parser(), env=False)
        )
    return markdown


# The benchmark picture lives beside the benchmark pages it illustrates
# (benchmarks/, included here by snippets); the site serves the same file at
# the two places those pages' links point to.
_PICTURE = Path(__file__).resolve().parent.parent / "benchmarks" / "results.png"


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    """Add ``benchmarks/results.png`` as ``results.png`` and ``benchmarks/results.png``."""
    for uri in ("results.png", "benchmarks/results.png"):
        files.append(File.generated(config, uri, abs_src_path=str(_PICTURE)))
    return files
