"""Lint: ``ruff check`` over the package, the tests and the scripts (rules in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str] | None:
    """The ruff command: the executable on PATH, else ``python -m ruff`` when the package is installed."""
    executable = shutil.which("ruff")
    if executable:
        return [executable]
    try:
        import ruff  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "ruff"]


# strict: once the remaining findings (other parts of the code, fixed after the issue-9 merge) are gone this
# xfail turns into a failure, as a reminder to delete the marker
@pytest.mark.xfail(strict=True, reason="issue 9: lint findings outside data/models/utils are fixed after the merge")
def test_ruff_check_passes():
    command = _ruff()
    if command is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    result = subprocess.run(
        [*command, "check", "--no-cache", "lit_advgame", "tests", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"
