"""The linters CI runs: `ruff check .` over the repository and `mypy czb_core`, both configured in pyproject.toml
and pinned in requirements.txt. A finding fails the test with the tool's own report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtualenv's bin/ (.venv/bin under make test)

pytestmark = pytest.mark.slow


def run_tool(*argv: str) -> subprocess.CompletedProcess:
    tool = BIN / argv[0]
    assert tool.exists(), f"{tool} is missing: install requirements.txt into the virtualenv (make venv)"
    return subprocess.run([str(tool), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_ruff_finds_nothing():
    done = run_tool("ruff", "check", ".")
    assert done.returncode == 0, f"ruff check . failed:\n{done.stdout}\n{done.stderr}"


def test_mypy_finds_nothing_in_czb_core():
    done = run_tool("mypy", "czb_core")
    assert done.returncode == 0, f"mypy czb_core failed:\n{done.stdout}\n{done.stderr}"
