"""The documentation site builds with ``mkdocs build --strict``, and what it generates is whole.

The site shows the example configs and the options as the code has them: configs are included
from ``examples/`` and the options tables are rendered from the argument parser by
``docs/hooks.py``. These tests check that every option and every web server config reaches the
site, and that ``--strict`` really fails on a broken link.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fcgi_asgi.cli import build_parser
from fcgi_asgi.request_cmd import build_request_parser
from tests.conftest import ROOT

SERVERS = ("nginx", "lighttpd", "apache2", "caddy", "h2o", "haproxy")


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(config_dir: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=config_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_site_sources(dest: Path) -> None:
    # Everything mkdocs.yml and the snippets read, so a broken copy can be built alone.
    shutil.copy(ROOT / "mkdocs.yml", dest)
    shutil.copy(ROOT / "README.md", dest)
    for name in ("docs", "examples", "benchmarks", "src"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))


def test_the_site_builds_strict(tmp_path):
    result = _build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    options = (tmp_path / "site" / "options" / "index.html").read_text()
    assert "FCGI_ASGI_TIMEOUT_KEEP_ALIVE" in options
    nginx = (tmp_path / "site" / "servers" / "nginx" / "index.html").read_text()
    # The config itself, not the include line.
    assert "fastcgi_pass" in nginx and "--8&lt;--" not in nginx
    assert nginx.count('class="tabbed-block"') == len(list((ROOT / "examples" / "nginx").iterdir()))
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert 'id="fcgi_asgi.start_server"' in api
    # The docstrings are reST: their roles and literal blocks are rewritten for the site.
    assert ":class:" not in api and ":meth:" not in api
    assert "serve_forever()" in api


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        ("[a page](no-such-page.md)", "no-such-page.md"),
        ("[an anchor](options.md#no-such-anchor)", "no-such-anchor"),
        ('--8<-- "examples/gone"', "examples/gone"),
    ],
)
def test_strict_fails_on_a_broken_reference(tmp_path, breakage, named):
    src = tmp_path / "src"
    src.mkdir()
    _copy_site_sources(src)
    faq = src / "docs" / "faq.md"
    faq.write_text(faq.read_text() + f"\n{breakage}\n")
    result = _build(src, tmp_path / "site")
    assert result.returncode != 0, result.stderr
    # Failed for this breakage, not for something the copy lacks.
    assert named in result.stderr, result.stderr


@pytest.mark.parametrize("which", ["gateway", "request"])
def test_every_option_is_on_the_options_page(monkeypatch, which):
    monkeypatch.setenv("COLUMNS", "1000")
    hooks = _hooks()
    parser = build_parser() if which == "gateway" else build_request_parser()
    help_options = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", parser.format_help()))
    page = hooks.on_page_markdown((ROOT / "docs" / "options.md").read_text())
    missing = [
        opt
        for opt in sorted(help_options - {"--help"})
        if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", page)
    ]
    assert len(help_options) > 3
    assert not missing, missing
    assert "<!--" not in page  # every marker was replaced


def test_every_web_server_config_is_on_the_site():
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "servers").glob("*.md"))
    included = set(re.findall(r'--8<-- "(examples/[^"]+)"', pages))
    configs = {
        f"examples/{server}/{f.name}"
        for server in SERVERS
        for f in (ROOT / "examples" / server).iterdir()
    }
    assert configs, "no example configs found"
    assert configs <= included, sorted(configs - included)
