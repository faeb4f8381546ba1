"""Lint and format: ``ruff check`` and ``ruff format --check`` over the package, the tests and the scripts.

The rules are in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning_utilities")


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
        message = "ruff is not installed (pip install -e '.[test]' installs it)"
        if os.environ.get("CI"):  # CI installs the test extra: a missing ruff must not hide lint failures
            pytest.fail(message)
        pytest.skip(message)
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


def test_package_uses_no_private_lightning_names():
    """No ``from pytorch_lightning/lightning... import _Private`` and no ``pytorch_lightning._x`` module paths."""
    import ast

    offenders = []
    for path in sorted((ROOT / "lit_advgame").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIGHTNING_PACKAGES:
                parts = node.module.split(".") + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                parts = [
                    p
                    for alias in node.names
                    if alias.name.split(".")[0] in LIGHTNING_PACKAGES
                    for p in alias.name.split(".")
                ]
            else:
                continue
            if any(part.startswith("_") for part in parts):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"private Lightning imports: {offenders}"
