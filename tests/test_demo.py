"""The README's first command, examples/demo.sh, as a user runs it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(300)
def test_demo_serves_through_nginx():
    assert shutil.which("nginx"), ".ci/run installs nginx"
    out = subprocess.run(
        ["bash", str(ROOT / "examples" / "demo.sh")],
        capture_output=True,
        timeout=280,
        cwd=ROOT,
    )
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert text.count("hello from lifespan") == 2  # over FastCGI, then through nginx
    assert "Server: nginx" in text
    assert '{"id":42,"path":"/items/42","root_path":""}' in text
    assert '{"item_id":7,"q":"hello"}' in text
