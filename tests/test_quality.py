"""Lint, types and docs as tests, so the one test command (``python -m pytest``) covers them.

Each runs its tool in a subprocess from the repository root, with the same
interpreter as the tests, and shows the tool's output when it fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 900


def run_tool(*args: str) -> None:
    command = [sys.executable, "-m", *args]
    proc = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )


def test_ruff_check() -> None:
    run_tool("ruff", "check", ".")


def test_ruff_format() -> None:
    run_tool("ruff", "format", "--check", ".")


def test_mypy_strict() -> None:
    run_tool("mypy", "--strict", "oxillama_py")


def test_sphinx_docs_build_without_warnings(tmp_path: Path) -> None:
    run_tool(
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        str(tmp_path / "doctrees"),
        "docs",
        str(tmp_path / "html"),
    )


def test_readme_and_docs_quote_the_committed_benchmark_results() -> None:
    """The figures in README.md and docs/ are rendered from benchmarks/results/*.json, not typed in."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/figures.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "_TBD_" not in readme
    assert "benchmarks/results/batching.png" in readme
