"""Upstream's names are gathered in ``oxillama_py.compat``: its index resolves, and mypy sees the aliases."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oxillama_py import EngineConfig, SamplerConfig
from oxillama_py.compat import UPSTREAM
from oxillama_py.slots import default_max_concurrency

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("upstream", sorted(UPSTREAM))
def test_every_indexed_name_resolves(upstream: str) -> None:
    module, _, path = UPSTREAM[upstream].partition(":")
    found: object = importlib.import_module(module)
    for part in path.split("."):
        found = getattr(found, part)
    assert found is not None


@pytest.mark.parametrize("cls", [EngineConfig, SamplerConfig])
def test_spelled_out_constructor_matches_the_fields(cls: type) -> None:
    """The constructors are written by hand (to type upstream's keywords): their defaults are the fields'."""
    parameters = inspect.signature(cls).parameters
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if (cls, field.name) == (EngineConfig, "max_concurrency"):  # None: resolved from n_ctx
            assert parameters[field.name].default is None and default == default_max_concurrency(16384)
            continue
        assert parameters[field.name].default == default, field.name
    aliases = set(parameters) - {field.name for field in dataclasses.fields(cls)}
    assert aliases and all(parameters[name].default is None for name in aliases)
    for alias in aliases:
        assert isinstance(getattr(cls, alias), property), alias


def test_an_alias_and_its_field_disagreeing_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^SamplerConfig\(\) got both repeat_last_n and its alias"):
        SamplerConfig(repeat_last_n=8, repetition_penalty_window=16)
    assert SamplerConfig(temperature=0).with_overrides(top_k=3).repetition_penalty == 1.0


SNIPPET = """
from oxillama_py import EngineConfig, SamplerConfig

config = EngineConfig("m.gguf", context_size=4096, num_threads=2)
size: int = config.context_size
threads: int = config.num_threads
sampler = SamplerConfig(repetition_penalty=1.1, repetition_penalty_window=32)
penalty: float = sampler.repetition_penalty
window: int = sampler.repetition_penalty_window
EngineConfig("m.gguf", context_size="4k")  # BAD-1
SamplerConfig(repetition_penalti=1.1)  # BAD-2
wrong: str = config.context_size  # BAD-3
"""


def test_mypy_sees_the_aliases(tmp_path: Path) -> None:
    source = tmp_path / "snippet.py"
    source.write_text(textwrap.dedent(SNIPPET), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = source.read_text(encoding="utf-8").splitlines()
    bad = {i + 1 for i, line in enumerate(lines) if "# BAD-" in line}
    flagged = {int(out.split(":")[1]) for out in proc.stdout.splitlines() if out.startswith(str(source))}
    assert flagged == bad, proc.stdout + proc.stderr
