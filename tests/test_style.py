"""Lint and format: ``ruff check`` and ``ruff format --check`` over the package, the tests and the scripts.

The rules are in pyproject.toml."""

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


def _run_ruff(*args: str) -> subprocess.CompletedProcess:
    command = _ruff()
    if command is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    return subprocess.run(
        [*command, *args, "--no-cache", "lit_advgame", "tests", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_check_passes():
    result = _run_ruff("check")
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"


def test_ruff_format_check_passes():
    result = _run_ruff("format", "--check")
    assert result.returncode == 0, f"ruff format would reformat:\n{result.stdout}{result.stderr}"
