"""The built wheel: what it installs into site-packages and what PyPI shows."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(600)


def test_wheel_contents_and_metadata(tmp_path):
    # A copy of what an sdist holds: an in-tree build/ left by an earlier
    # build would otherwise leak old files into the wheel.
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "*.so"))
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(tree)],
        check=True,
        capture_output=True,
        timeout=540,
    )
    [wheel] = tmp_path.glob("fcgi_asgi-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(z.read(metadata))
    # Before: _speedups.c was installed next to the module built from it.
    assert not [n for n in names if n.endswith(".c")], names
    assert "fcgi_asgi/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert meta["License-Expression"] == "MIT"
    assert meta["Author"] == "the fcgi-asgi maintainers"
    assert "fastcgi" in meta["Keywords"]
    classifiers = set(meta.get_all("Classifier"))
    for wanted in (
        "Operating System :: POSIX",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: WWW/HTTP",
    ):
        assert wanted in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert sorted(meta.get_all("Provides-Extra")) == [
        "docs",
        "fuzz",
        "httpx",
        "reload",
        "test",
        "yaml",
    ]
