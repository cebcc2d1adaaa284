"""The main job as a command: ``python -m oxillama_py PROMPT`` and the ``oxillama`` console script.

Each run is a subprocess on the real default model, as the README's first
command runs it: text on stdout, the tqdm bar on stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROMPT = "Once upon a time"
N = 12
TIMEOUT = 240


def run(*args: str, command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(command or [sys.executable, "-m", "oxillama_py"]), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        check=False,
    )


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_generates_greedy_text_with_a_progress_bar(reference, backend: str) -> None:
    proc = run(PROMPT, "--max-tokens", str(N), "--temperature", "0", "--backend", backend)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == reference.complete(PROMPT, N) + "\n"
    assert f"{N}/{N}" in proc.stderr and "tok/s" in proc.stderr  # the bar, finished, on stderr only
    assert "tok/s" not in proc.stdout


def test_the_bar_is_drawn_empty_once_and_shows_the_rate_once() -> None:
    proc = run(PROMPT, "--max-tokens", "8", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    # tqdm redraws with "\r", which text mode reads as a line break.
    lines = [line for line in re.split(r"[\r\n]", proc.stderr) if "/8 [" in line]
    assert len(lines) >= 2 and "| 0/8 [" in lines[0] and "| 8/8 [" in lines[-1], lines
    assert sum("| 0/8 [" in line for line in lines) == 1, lines  # the empty bar, drawn once
    for line in lines[1:]:  # the adapter's "x tok/s" postfix, and not tqdm's rate ("x tok/s" or "x s/tok") too
        assert line.count("tok/s") == 1 and "s/tok" not in line, lines


def test_no_progress_and_seeded_sampling_are_reproducible() -> None:
    args = (PROMPT, "-n", str(N), "--temperature", "0.9", "--seed", "7", "--no-progress")
    first, second = run(*args), run(*args)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout and first.stdout.strip()
    assert "tok/s" not in first.stderr


def test_console_script() -> None:
    script = Path(sys.executable).parent / ("oxillama.exe" if sys.platform == "win32" else "oxillama")
    assert script.exists(), f"console script not installed at {script}"
    proc = run("--help", command=[str(script)])
    assert proc.returncode == 0 and "--backend" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-tokens", "0"), "--max-tokens must be >= 1"),
        (("--model", "/nonexistent/model.gguf"), "/nonexistent/model.gguf"),
        (("--temperature", "-1"), "temperature"),
    ],
)
def test_bad_input_is_a_clear_error_without_output(args: tuple[str, ...], message: str) -> None:
    proc = run(PROMPT, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and message in proc.stderr
    assert proc.stdout == ""
