"""The typed surface: a misspelt option is a type error, not a silent ``**options: Any``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SNIPPET = """
from contextlib import aclosing

from oxillama_py import AsyncEngine, CompletionResult, Engine, SpeculativeEngine


def sync(engine: Engine, speculative: SpeculativeEngine) -> None:
    text: str = engine.generate("Hi", 8, temperature=0, stop=["\\\\n"], seed=1)
    result: CompletionResult = engine.complete("Hi", 8, top_k=4, progress=None)
    texts: list[str] = engine.generate_batch(["a", "b"], 8, progress_throttle_ms=10.0)
    same: str = speculative.generate("Hi", 8, temperature=0)
    engine.generate("Hi", 8, temprature=0)  # BAD-1
    engine.generate("Hi", 8, temperature="hot")  # BAD-2
    speculative.complete("Hi", 8, max_token=3)  # BAD-3
    wrong: int = engine.generate("Hi")  # BAD-4


async def asynchronous(engine: AsyncEngine) -> None:
    text: str = await engine.generate("Hi", 8, top_p=0.9)
    async with aclosing(engine.stream("Hi", 8, temperature=0)) as pieces:
        async for piece in pieces:
            print(piece.upper())
    await engine.complete_batch(["a"], 8, strict_progres=True)  # BAD-5
"""


def test_mypy_rejects_misspelt_and_mistyped_options(tmp_path: Path) -> None:
    source = tmp_path / "snippet.py"
    source.write_text(textwrap.dedent(SNIPPET), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes", str(source)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = source.read_text(encoding="utf-8").splitlines()
    bad = {i + 1: line.split("# ")[-1] for i, line in enumerate(lines) if "# BAD-" in line}
    flagged = set()
    for out in proc.stdout.splitlines():
        if out.startswith(str(source)) and ": error:" in out:
            flagged.add(int(out.split(":")[1]))
    assert flagged == set(bad), f"expected errors on lines {sorted(bad)}:\n{proc.stdout}{proc.stderr}"
    assert "temprature" in proc.stdout and "max_token" in proc.stdout and "strict_progres" in proc.stdout
