"""The embedding API's app type accepts real frameworks' apps (checked by mypy)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(600)


def test_framework_apps_type_check(tmp_path):
    # Before: ASGIApp took a MutableMapping scope, so Quart's, Litestar's and
    # Falcon's apps (TypedDict scopes, their own message types) did not type-check.
    out = subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--strict", "--no-incremental"),
            *("--cache-dir", str(tmp_path), "--python-version", "3.11"),
            *("--follow-imports", "silent", "tests/typing_apps.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found in 1 source file" in out.stdout
